//! CPU scheduling policy of threads. The server starts each worker process
//! at the idle policy and gives it the normal one back once it is Ready
//! (`hotsock-server`'s `supervise/spawn.rs` says why). Linux has no safe
//! wrapper for `sched_setscheduler` in nix; the one call here is the
//! crate's fourth `unsafe`.
//!
//! Linux sets a policy per thread, and a new thread or process inherits
//! its creator's. Lowering a thread to the idle policy is always allowed
//! (for one's own threads and those of processes of the same user); giving
//! the normal policy back needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows the thread's nice value, which [`idle_start_available`] checks.

use std::io;

/// The policies the server switches between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER`: the default time sharing.
    Normal,
    /// `SCHED_IDLE`: the smallest share of CPU time (weight 3 against a
    /// normal thread's 1024); a normal thread that wakes up preempts it (on
    /// a kernel without preemption, when it next leaves kernel code).
    Idle,
}

impl Policy {
    fn raw(self) -> nix::libc::c_int {
        match self {
            Policy::Normal => nix::libc::SCHED_OTHER,
            Policy::Idle => nix::libc::SCHED_IDLE,
        }
    }
}

/// Sets the policy of thread `tid` (0: the calling thread), keeping its
/// nice value.
#[allow(unsafe_code)]
pub fn set_thread_policy(tid: i32, policy: Policy) -> io::Result<()> {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid, initialised `sched_param` that lives
    // across the call, and the kernel only reads it.
    let result = unsafe { nix::libc::sched_setscheduler(tid, policy.raw(), &param) };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// The policy of thread `tid` of process `pid`, from `/proc` (`None` for
/// one that is neither of ours, e.g. a real-time policy).
pub fn thread_policy(pid: u32, tid: u32) -> io::Result<Option<Policy>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    // The command name, in parentheses, may hold spaces; the fields after
    // it are numbered from 3 (state), so policy, field 41, is the 39th.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = after_name.split_whitespace().nth(38);
    let raw: nix::libc::c_int = field.and_then(|f| f.parse().ok()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("no policy in /proc/{pid}/task/{tid}/stat"))
    })?;
    Ok([Policy::Normal, Policy::Idle].into_iter().find(|p| p.raw() == raw))
}

/// Most passes [`set_process_policy`] makes over a process's threads.
const PASSES_MAX: usize = 8;

/// Sets the policy of every thread of process `pid`, threads that end
/// meanwhile skipped, and returns how many it changed. A thread that one
/// not yet set creates meanwhile inherits the old policy, so it reads the
/// threads again until a pass finds none left to change (at most
/// `PASSES_MAX` passes). The first error other than a thread having ended
/// is returned.
pub fn set_process_policy(pid: u32, policy: Policy) -> io::Result<usize> {
    let mut changed = 0;
    for _ in 0..PASSES_MAX {
        let mut this_pass = 0;
        for (tid, now) in thread_policies(pid)? {
            if now == Some(policy) {
                continue;
            }
            match set_thread_policy(tid as i32, policy) {
                Ok(()) => this_pass += 1,
                Err(error) if error.raw_os_error() == Some(nix::libc::ESRCH) => {}
                Err(error) => return Err(error),
            }
        }
        if this_pass == 0 {
            return Ok(changed);
        }
        changed += this_pass;
    }
    Ok(changed)
}

/// The policy of every thread of process `pid` (for checks and tests).
pub fn process_policies(pid: u32) -> io::Result<Vec<Option<Policy>>> {
    Ok(thread_policies(pid)?.into_iter().map(|(_, policy)| policy).collect())
}

/// Each thread of process `pid` with its policy; threads that end while
/// they are read are left out.
fn thread_policies(pid: u32) -> io::Result<Vec<(u32, Option<Policy>)>> {
    let mut threads = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Some(tid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        match thread_policy(pid, tid) {
            Ok(policy) => threads.push((tid, policy)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(threads)
}

/// Why threads cannot be started idle and given the normal policy back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdleStartError {
    /// This thread's policy could not be read.
    #[error("cannot read this thread's scheduling policy: {0}")]
    Unreadable(String),
    /// The caller runs another policy (batch, real-time, idle).
    #[error("the server does not run the normal scheduling policy (SCHED_OTHER)")]
    NotNormal,
    /// `/proc/<pid>/task/<tid>/children` is missing (`CONFIG_PROC_CHILDREN`),
    /// so a spawn that outlasts its bound could not be found.
    #[error("this kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)")]
    NoChildrenFile,
    /// Lowering failed (a seccomp filter, say).
    #[error("cannot lower a thread to SCHED_IDLE: {0}")]
    CannotLower(String),
    /// Giving the normal policy back is not permitted.
    #[error(
        "cannot give a thread SCHED_OTHER back ({0}): it needs CAP_SYS_NICE or an RLIMIT_NICE that allows its nice value (systemd: LimitNICE=+0)"
    )]
    CannotRestore(String),
    /// The probe thread could not run.
    #[error("cannot run the probe thread: {0}")]
    Probe(String),
}

/// Whether threads created by the calling thread could be started at the
/// idle policy and given back the normal one: the caller runs the normal
/// policy, the kernel lists a thread's children, and a scratch thread it
/// starts (which inherits its policy and nice value) can go to idle and
/// back.
pub fn idle_start_available() -> Result<(), IdleStartError> {
    let (pid, tid) = (std::process::id(), nix::unistd::gettid().as_raw() as u32);
    let own = thread_policy(pid, tid).map_err(|e| IdleStartError::Unreadable(e.to_string()))?;
    if own != Some(Policy::Normal) {
        return Err(IdleStartError::NotNormal);
    }
    if std::fs::metadata(format!("/proc/{pid}/task/{tid}/children")).is_err() {
        return Err(IdleStartError::NoChildrenFile);
    }
    let probe = std::thread::Builder::new().name("hotsock-probe".into()).spawn(|| {
        set_thread_policy(0, Policy::Idle).map_err(|e| IdleStartError::CannotLower(e.to_string()))?;
        set_thread_policy(0, Policy::Normal).map_err(|e| IdleStartError::CannotRestore(e.to_string()))
    });
    match probe {
        Ok(thread) => thread.join().unwrap_or_else(|_| Err(IdleStartError::Probe("it panicked".into()))),
        Err(e) => Err(IdleStartError::Probe(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_policy() -> Option<Policy> {
        thread_policy(std::process::id(), nix::unistd::gettid().as_raw() as u32).expect("stat")
    }

    #[test]
    fn a_thread_goes_idle_and_back_when_the_probe_says_it_can() {
        let available = idle_start_available();
        std::thread::spawn(move || {
            assert_eq!(own_policy(), Some(Policy::Normal));
            set_thread_policy(0, Policy::Idle).expect("lowering is always allowed");
            assert_eq!(own_policy(), Some(Policy::Idle));
            // The probe's answer is what giving the normal policy back does.
            assert_eq!(set_thread_policy(0, Policy::Normal).is_ok(), available.is_ok(), "{available:?}");
            if available.is_ok() {
                assert_eq!(own_policy(), Some(Policy::Normal));
            }
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn another_process_is_set_thread_by_thread() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        assert_eq!(set_process_policy(pid, Policy::Idle).expect("lowering is always allowed"), 1);
        assert_eq!(thread_policy(pid, pid).expect("stat"), Some(Policy::Idle));
        assert_eq!(set_process_policy(pid, Policy::Idle).expect("again"), 0, "nothing left to change");
        assert_eq!(process_policies(pid).expect("policies"), vec![Some(Policy::Idle)]);
        if idle_start_available().is_ok() {
            set_process_policy(pid, Policy::Normal).expect("restore");
            assert_eq!(thread_policy(pid, pid).expect("stat"), Some(Policy::Normal));
        }
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn a_missing_thread_is_an_error_not_a_policy() {
        assert!(thread_policy(std::process::id(), u32::MAX).is_err());
        assert!(set_process_policy(u32::MAX, Policy::Idle).is_err());
    }
}
