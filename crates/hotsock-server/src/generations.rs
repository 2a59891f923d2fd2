//! The generation store: each generation's worker executable, copied into
//! `<run_dir>/generations/<n>/` before it is ever started. A build that is
//! still being written can never be executed, and the previous generation is
//! always there to roll back to, whatever happens to the build output.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
    /// number. A bare program name (found in `PATH`) is not copied: there is
    /// no file of ours to freeze, so every generation runs it as named.
    pub(crate) fn create(&mut self) -> io::Result<u64> {
        let generation = self.latest + 1;
        if self.copies() {
            let dir = self.dir.join(generation.to_string());
            std::fs::create_dir_all(&dir)?;
            let target = dir.join(&self.file_name);
            std::fs::copy(&self.source, &target).map_err(|e| {
                io::Error::new(e.kind(), format!("copying {} into the generation store: {e}", self.source.display()))
            })?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
        self.latest = generation;
        Ok(generation)
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
