//! `--pin`: the server under test on one core, the load generator on the
//! other, so CPU per message shows instead of hiding in a machine shared
//! with its own load. The bench pins itself (every thread it starts later
//! inherits that) before it starts anything, and starts each target
//! through `taskset` (util-linux), whose affinity the target's own threads
//! and every worker process it forks inherit: no `pre_exec`, no unsafe.
//! The same holds for the three targets (hotsock and its workers, the
//! ceiling, which is this binary re-executed as its own process, and the
//! Node.js peer), so the comparison is fair. `verify` checks it in /proc
//! before a pinned figure is reported.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

/// The core the server under test (with its workers) runs on.
pub(crate) const SERVER_CORE: &str = "0";
/// The core the load generator runs on.
pub(crate) const LOAD_CORE: &str = "1";

static PINNED: AtomicBool = AtomicBool::new(false);

/// Whether this run pins (set once, at start, by `enable`).
pub(crate) fn pinned() -> bool {
    PINNED.load(Ordering::Relaxed)
}

/// Pins this process to `LOAD_CORE` and makes `command` start targets on
/// `SERVER_CORE`. Must run before any runtime or thread is started.
pub(crate) fn enable() -> Result<()> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cores < 2 {
        bail!("--pin needs 2 cores (one for the server, one for the load generator); this machine has {cores}");
    }
    let status = Command::new("taskset")
        .args(["--all-tasks", "--cpu-list", "--pid", LOAD_CORE])
        .arg(std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (Debian: util-linux) to pin the load generator")?;
    if !status.success() {
        bail!("taskset could not pin the load generator to core {LOAD_CORE}: {status}");
    }
    PINNED.store(true, Ordering::Relaxed);
    Ok(())
}

/// A command that starts `program` on the server core when pinning, as it
/// is otherwise.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    if pinned() {
        let mut command = Command::new("taskset");
        command.args(["--cpu-list", SERVER_CORE]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The cores every thread of `pid` may run on, from /proc.
fn allowed(pid: u32) -> Vec<(u32, String)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|task| {
            let tid = task.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
            Some((tid, line.split_whitespace().nth(1)?.to_owned()))
        })
        .collect()
}

/// When pinning: fails unless every thread of `server_pids` is on the
/// server core only and every thread of this process on the load core only.
pub(crate) fn verify(server_pids: &[u32]) -> Result<()> {
    if !pinned() {
        return Ok(());
    }
    let sides = server_pids.iter().map(|pid| (*pid, SERVER_CORE)).chain([(std::process::id(), LOAD_CORE)]);
    for (pid, core) in sides {
        let threads = allowed(pid);
        if threads.is_empty() {
            bail!("could not read the CPU affinity of process {pid}");
        }
        if let Some((tid, cores)) = threads.iter().find(|(_, cores)| cores != core) {
            bail!(
                "thread {tid} of process {pid} may run on cores {cores}, not only on core {core}: the run is not pinned"
            );
        }
    }
    Ok(())
}
