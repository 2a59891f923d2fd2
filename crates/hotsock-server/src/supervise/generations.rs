//! The generation store: each generation's worker executable, copied into
//! `<run_dir>/generations/<n>/` before it is ever started. A build that is
//! still being written can never be executed, and the previous generation is
//! always there to roll back to, whatever happens to the build output.
//!
//! When the build output has not changed since the last copy (a reload for
//! new data or config, a rollback's successor, a reload storm), the new
//! generation is a hard link to that copy instead: copying a large
//! executable costs milliseconds of a core, right inside the reload window.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What identifies a file's content without reading it: an in-place write
/// changes mtime and ctime, a replacement changes the inode, and ctime
/// cannot be set back by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(path: &Path) -> io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(Fingerprint {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A build output last modified longer ago than this is taken as finished.
/// File times tick in kernel jiffies (a few ms), so a write in the same tick
/// as our look would leave the fingerprint unchanged; a copy of a file
/// modified more recently is therefore never reused for a link.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

/// One generation's executable, to copy.
#[derive(Debug, Clone)]
pub(crate) struct GenerationCopy {
    generation: u64,
    source: PathBuf,
    target: Option<PathBuf>,
    /// The newest stored copy and the source's fingerprint when it was made.
    previous: Option<(PathBuf, Fingerprint)>,
}

/// How a generation's executable got into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// A bare program name found in `PATH`: nothing of ours to freeze.
    NotCopied,
    /// A fresh copy of the build output, with its fingerprint if it can be
    /// trusted for a later link (the output had settled: see `SETTLED`).
    Copied(Option<Fingerprint>),
    /// The build output is unchanged since the previous copy: a hard link.
    Linked(Fingerprint),
}

impl GenerationCopy {
    /// Copies (or links) the executable (blocking).
    pub(crate) fn run(&self) -> io::Result<Stored> {
        let Some(target) = &self.target else { return Ok(Stored::NotCopied) };
        let context = |e: io::Error| {
            io::Error::new(e.kind(), format!("copying {} into the generation store: {e}", self.source.display()))
        };
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Taken before reading: a build finishing during the copy leaves a
        // fingerprint that no longer matches, so the next reload copies.
        let fingerprint = Fingerprint::of(&self.source).map_err(context)?;
        if let Some((previous, seen)) = &self.previous
            && *seen == fingerprint
            && std::fs::hard_link(previous, target).is_ok()
        {
            return Ok(Stored::Linked(fingerprint));
        }
        let settled = std::fs::metadata(&self.source)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > SETTLED);
        std::fs::copy(&self.source, target).map_err(context)?;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o755))?;
        Ok(Stored::Copied(settled.then_some(fingerprint)))
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
    /// The newest generation's executable and its source's fingerprint.
    newest_copy: Option<(PathBuf, Fingerprint)>,
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
        Ok(Generations { dir, source, file_name, latest: 0, keep: keep.max(2), newest_copy: None })
    }

    /// The store a running server left, for the server taking over from
    /// it (`hotsock upgrade`): kept as it is, numbering on after its newest.
    /// `serving`: the newest generation the old server used (a bare program
    /// name leaves no directory to count from).
    pub(crate) fn adopt(run_dir: &Path, source: PathBuf, keep: usize, serving: u64) -> io::Result<Generations> {
        let dir = run_dir.join("generations");
        let latest = std::fs::read_dir(&dir)?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            .max(serving);
        let file_name = source.file_name().map(ToOwned::to_owned).unwrap_or_else(|| "worker".into());
        Ok(Generations { dir, source, file_name, latest, keep: keep.max(2), newest_copy: None })
    }

    /// Copies the current build output into a new generation and returns its
    /// number (blocking: call it off the async threads, see `next_copy`).
    pub(crate) fn create(&mut self) -> io::Result<u64> {
        let copy = self.next_copy();
        let stored = copy.run()?;
        Ok(self.commit(copy, stored))
    }

    /// What creating the next generation takes: a copy that can run on a
    /// blocking thread, then `commit`. A bare program name (found in `PATH`)
    /// is not copied: there is no file of ours to freeze.
    pub(crate) fn next_copy(&self) -> GenerationCopy {
        let generation = self.latest + 1;
        let target = self.copies().then(|| self.dir.join(generation.to_string()).join(&self.file_name));
        GenerationCopy { generation, source: self.source.clone(), target, previous: self.newest_copy.clone() }
    }

    /// Records a copied generation as the newest.
    pub(crate) fn commit(&mut self, copy: GenerationCopy, stored: Stored) -> u64 {
        self.latest = self.latest.max(copy.generation);
        match (copy.target, stored) {
            (Some(target), Stored::Copied(Some(fingerprint)) | Stored::Linked(fingerprint)) => {
                self.newest_copy = Some((target, fingerprint));
            }
            (_, Stored::Copied(None)) => self.newest_copy = None,
            _ => {}
        }
        copy.generation
    }

    fn copies(&self) -> bool {
        self.source.components().count() > 1
    }

    /// A reload re-read the config: later generations copy `source` and
    /// the store keeps `keep`. The file name inside each generation's
    /// directory stays what it was, so older generations are still found;
    /// a switch between a path and a bare name (copied or not) needs a
    /// restart (`config/diff.rs`).
    pub(crate) fn reconfigure(&mut self, source: PathBuf, keep: usize) {
        self.source = source;
        self.keep = keep.max(2);
    }

    /// The executable of a generation.
    pub(crate) fn program(&self, generation: u64) -> PathBuf {
        if self.copies() { self.dir.join(generation.to_string()).join(&self.file_name) } else { self.source.clone() }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(name: &str) -> (PathBuf, PathBuf, Generations) {
        let dir = std::env::temp_dir().join(format!("hotsock-gen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let source = dir.join("worker");
        write_settled(&source, "v1");
        let generations = Generations::new(&dir.join("run"), source.clone(), 3).expect("store");
        (dir, source, generations)
    }

    /// Writes a file and dates it 10 s back, as a build that finished.
    fn write_settled(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write");
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(past)).expect("set mtime");
    }

    fn create(generations: &mut Generations) -> Stored {
        let copy = generations.next_copy();
        let stored = copy.run().expect("copy");
        generations.commit(copy, stored);
        stored
    }

    #[test]
    fn an_unchanged_build_is_linked_and_a_changed_one_copied() {
        let (dir, source, mut generations) = store("link");
        assert!(matches!(create(&mut generations), Stored::Copied(_)));
        assert!(matches!(create(&mut generations), Stored::Linked(_)));
        let ino = |g| std::fs::metadata(generations.program(g)).expect("stored").ino();
        assert_eq!(ino(1), ino(2), "generation 2 is a link to 1");
        // Rewritten in place (same inode, even dated back): ctime moves, so
        // it is copied.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_settled(&source, "v2");
        assert!(matches!(create(&mut generations), Stored::Copied(Some(_))));
        assert_eq!(std::fs::read_to_string(generations.program(3)).expect("g3"), "v2");
        assert_eq!(std::fs::read_to_string(generations.program(1)).expect("g1"), "v1", "old copies never change");
        // Pruning generation 1 leaves the linked generation 2 intact.
        assert!(matches!(create(&mut generations), Stored::Linked(_)));
        generations.prune(&[]);
        assert!(!generations.program(1).exists());
        assert_eq!(std::fs::read_to_string(generations.program(2)).expect("g2"), "v1");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_copy_of_a_fresh_build_is_never_linked_to() {
        let (dir, source, mut generations) = store("fresh");
        std::fs::write(&source, "just built").expect("write");
        assert_eq!(create(&mut generations), Stored::Copied(None));
        assert!(matches!(create(&mut generations), Stored::Copied(_)), "copied again, not linked");
        let _ = std::fs::remove_dir_all(dir);
    }
}
