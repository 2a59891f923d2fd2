//! The generation store: each generation's worker executable, copied into
//! `<run_dir>/generations/<n>/` before it is ever started. A build that is
//! still being written can never be executed, and the previous generation is
//! always there to roll back to, whatever happens to the build output.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One generation's executable, to copy.
#[derive(Debug, Clone)]
pub(crate) struct GenerationCopy {
    generation: u64,
    source: PathBuf,
    target: Option<PathBuf>,
}

impl GenerationCopy {
    /// Copies the executable (blocking).
    pub(crate) fn run(&self) -> io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&self.source, target).map_err(|e| {
            io::Error::new(e.kind(), format!("copying {} into the generation store: {e}", self.source.display()))
        })?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Generations {
    dir: PathBuf,
    source: PathBuf,
    file_name: std::ffi::OsString,
    latest: u64,
    keep: usize,
}

impl Generations {
    /// Starts an empty store (a new server life starts at generation 1);
    /// whatever a previous server left there is removed.
    pub(crate) fn new(run_dir: &Path, source: PathBuf, keep: usize) -> io::Result<Generations> {
        let dir = run_dir.join("generations");
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        let file_name = source.file_name().map(ToOwned::to_owned).unwrap_or_else(|| "worker".into());
        Ok(Generations { dir, source, file_name, latest: 0, keep: keep.max(2) })
    }

    /// Copies the current build output into a new generation and returns its
    /// number (blocking: call it off the async threads, see `next_copy`).
    pub(crate) fn create(&mut self) -> io::Result<u64> {
        let copy = self.next_copy();
        copy.run()?;
        Ok(self.commit(copy))
    }

    /// What creating the next generation takes: a copy that can run on a
    /// blocking thread, then `commit`. A bare program name (found in `PATH`)
    /// is not copied: there is no file of ours to freeze.
    pub(crate) fn next_copy(&self) -> GenerationCopy {
        let generation = self.latest + 1;
        let target = self.copies().then(|| self.dir.join(generation.to_string()).join(&self.file_name));
        GenerationCopy { generation, source: self.source.clone(), target }
    }

    /// Records a copied generation as the newest.
    pub(crate) fn commit(&mut self, copy: GenerationCopy) -> u64 {
        self.latest = self.latest.max(copy.generation);
        copy.generation
    }

    fn copies(&self) -> bool {
        self.source.components().count() > 1
    }

    /// The executable of a generation.
    pub(crate) fn program(&self, generation: u64) -> PathBuf {
        if self.copies() { self.dir.join(generation.to_string()).join(&self.file_name) } else { self.source.clone() }
    }

    /// Whether a generation's executable is still in the store.
    pub(crate) fn exists(&self, generation: u64) -> bool {
        generation >= 1 && generation <= self.latest && (!self.copies() || self.program(generation).exists())
    }

    /// Removes generations older than the newest `keep`, except those in
    /// `protect` (the ones serving or draining, and the rollback target), so
    /// a run of failed reloads can never delete the code that is serving.
    pub(crate) fn prune(&self, protect: &[u64]) {
        let Some(oldest_kept) = self.latest.checked_sub(self.keep as u64) else { return };
        for generation in 1..=oldest_kept {
            if !protect.contains(&generation) {
                let _ = std::fs::remove_dir_all(self.dir.join(generation.to_string()));
            }
        }
    }
}
