//! Why a worker process ended, as one typed cause, and what each cause
//! means for the events the worker held.
//!
//! The distinction that matters most: who ended the worker. When it died on
//! its own (a crash, a handler panic that took the process down, a blocked
//! event loop) one of the events it was running may be the reason, so those
//! events get a strike towards `workers.max_redeliveries`. When the server
//! ended it (a drain deadline, a recycle, a stop, an aborted reload), no
//! event is to blame and none is struck: they are all redelivered to the
//! next worker until one finishes them. These types are serialized in
//! `status`, so they are part of the admin boundary.

pub(crate) use crate::wire::{ExitCause, KillReason};

impl KillReason {
    fn describe(self) -> &'static str {
        match self {
            KillReason::ReloadAborted => "reload aborted",
            KillReason::NotNeeded => "no longer needed",
            KillReason::Superseded => "superseded by a reload",
            KillReason::ServerStopping => "the server is stopping",
        }
    }
}

impl ExitCause {
    /// Whether one of the events the worker was running may have caused the
    /// exit, so the running events get a strike. Kills the server ordered
    /// for its own reasons blame nothing.
    pub fn blames_running_events(self) -> bool {
        matches!(
            self,
            ExitCause::Crashed { .. }
                | ExitCause::HandlerPanic { .. }
                | ExitCause::Unresponsive { .. }
                | ExitCause::ProtocolViolation
        )
    }

    /// Whether the worker failed (as opposed to being ended by the server):
    /// a failure of a serving worker means a restart with back-off, a crash
    /// count, and a point towards an automatic rollback.
    pub fn is_failure(self) -> bool {
        self.blames_running_events() || matches!(self, ExitCause::LostLink | ExitCause::NotReady)
    }

    /// The cause's name, as logs and `status` print it.
    pub fn name(self) -> &'static str {
        match self {
            ExitCause::NotReady => "not_ready",
            ExitCause::Crashed { .. } => "crashed",
            ExitCause::HandlerPanic { .. } => "handler_panic",
            ExitCause::Unresponsive { .. } => "unresponsive",
            ExitCause::ProtocolViolation => "protocol_violation",
            ExitCause::LostLink => "lost_link",
            ExitCause::DrainDeadline => "drain_deadline",
            ExitCause::Recycled => "recycled",
            ExitCause::Stopped => "stopped",
            ExitCause::Killed { .. } => "killed",
        }
    }
}

/// How a worker ended: the cause, and the words that go with it (the exit
/// status, the fault, the worker's last stderr lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) cause: ExitCause,
    pub(crate) detail: String,
}

impl Exit {
    pub(crate) fn new(cause: ExitCause, detail: impl Into<String>) -> Exit {
        Exit { cause, detail: detail.into() }
    }

    pub(crate) fn killed(reason: KillReason) -> Exit {
        Exit::new(ExitCause::Killed { reason }, reason.describe())
    }

    /// One line for logs and status: the cause, then the detail.
    pub(crate) fn describe(&self) -> String {
        let name = self.cause.name().replace('_', " ");
        if self.detail.is_empty() || self.detail == name { name } else { format!("{name}: {}", self.detail) }
    }
}

/// A process that ended on its own, classified by its status and its last
/// stderr lines: a Rust panic that ends the process exits with code 101
/// (unwinding out of `main`) or SIGABRT (`panic = "abort"`, a panic during
/// a panic), and the panic hook has written "panicked at" just before.
pub(crate) fn died(code: Option<i32>, signal: Option<i32>, stderr_tail: &str) -> ExitCause {
    const SIGABRT: i32 = 6;
    const PANIC_EXIT_CODE: i32 = 101;
    let panic_status = code == Some(PANIC_EXIT_CODE) || signal == Some(SIGABRT);
    if panic_status && stderr_tail.contains("panicked at") {
        ExitCause::HandlerPanic { code, signal }
    } else {
        ExitCause::Crashed { code, signal }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_deaths_the_worker_caused_blame_its_events() {
        let blaming = [
            ExitCause::Crashed { code: Some(3), signal: None },
            ExitCause::HandlerPanic { code: None, signal: Some(6) },
            ExitCause::Unresponsive { silent_ms: 900 },
            ExitCause::ProtocolViolation,
        ];
        let innocent = [
            ExitCause::NotReady,
            ExitCause::LostLink,
            ExitCause::DrainDeadline,
            ExitCause::Recycled,
            ExitCause::Stopped,
            ExitCause::Killed { reason: KillReason::ServerStopping },
        ];
        assert!(blaming.iter().all(|c| c.blames_running_events() && c.is_failure()));
        assert!(innocent.iter().all(|c| !c.blames_running_events()));
        assert!(ExitCause::LostLink.is_failure() && !ExitCause::DrainDeadline.is_failure());
    }

    #[test]
    fn a_panic_is_told_from_a_crash_by_status_and_stderr() {
        let tail = "thread 'main' panicked at src/main.rs:3:5: boom";
        assert_eq!(died(None, Some(6), tail), ExitCause::HandlerPanic { code: None, signal: Some(6) });
        assert_eq!(died(Some(101), None, tail), ExitCause::HandlerPanic { code: Some(101), signal: None });
        // A caught panic earlier in the log does not make a SIGKILL a panic.
        assert_eq!(died(None, Some(9), tail), ExitCause::Crashed { code: None, signal: Some(9) });
        assert_eq!(died(None, Some(6), "abort()"), ExitCause::Crashed { code: None, signal: Some(6) });
    }

    #[test]
    fn causes_serialize_with_their_kind() {
        let json = serde_json::to_string(&ExitCause::Killed { reason: KillReason::ReloadAborted }).expect("json");
        assert_eq!(json, r#"{"kind":"killed","reason":"reload_aborted"}"#);
        assert_eq!(Exit::new(ExitCause::Stopped, "").describe(), "stopped");
        assert_eq!(Exit::killed(KillReason::NotNeeded).describe(), "killed: no longer needed");
    }
}
