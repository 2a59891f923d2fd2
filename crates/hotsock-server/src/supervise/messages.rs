//! What the supervisor and a worker task tell each other.

use tokio::time::Instant;

use crate::route::slot::WorkerId;
use crate::supervise::exit::Exit;
use crate::wire::KillReason;

/// What the supervisor can tell a running worker task.
#[derive(Debug)]
pub(crate) enum Control {
    /// It no longer receives events; kill it if still running at `deadline`.
    Drain {
        deadline: Instant,
        /// What a clean exit after this drain is called.
        retire: Retire,
    },
    /// Kill it now.
    Kill(KillReason),
}

/// Why a worker is drained, which names its clean exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retire {
    /// A reload, rollback or stop replaces it: `ExitCause::Stopped`.
    Replaced,
    /// `workers.max_requests` replaces it: `ExitCause::Recycled`.
    Recycled,
}

/// What a worker task reports to the supervisor.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    /// Its process was spawned.
    Spawned { worker: WorkerId, pid: Option<u32> },
    /// It answered Hello with Ready.
    Ready { worker: WorkerId, pid: Option<u32>, handoff: bool },
    /// The suspended current worker of `slot` handed over its state.
    HandedOff { slot: usize },
    /// It handled `workers.max_requests` events: replace it.
    Recycle { worker: WorkerId },
    /// Handlers panicked (caught by the SDK; the worker lives on).
    Panicked { worker: WorkerId, count: u32 },
    /// Its process is gone and its events are back in the slot.
    Gone { worker: WorkerId, pid: Option<u32>, exit: Exit, was_ready: bool, at_unix_ms: u64 },
}
