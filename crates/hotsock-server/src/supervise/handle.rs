//! How the rest of the server talks to the supervisor: one channel, so every
//! decision is made in one place, in order.

use tokio::sync::{mpsc, oneshot};

use crate::supervise::messages::WorkerEvent;
use crate::wire::{ReloadKind, ReloadOutcome};

/// A request to the supervisor.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub(crate) kind: ReloadKind,
    /// Switch this many slots first and watch them for `canary_ms`.
    pub(crate) canary: Option<usize>,
    pub(crate) reply: Option<oneshot::Sender<ReloadOutcome>>,
    /// Why the supervisor asked for it itself (automatic rollback).
    pub(crate) reason: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Msg {
    Worker(WorkerEvent),
    Reload(ReloadRequest),
    Retire,
}

/// How the rest of the server talks to the supervisor.
#[derive(Debug, Clone)]
pub(crate) struct SupervisorHandle {
    pub(crate) tx: mpsc::UnboundedSender<Msg>,
}

impl SupervisorHandle {
    pub(crate) fn reload(&self, request: ReloadRequest) {
        let _ = self.tx.send(Msg::Reload(request));
    }

    /// Graceful stop: drain every worker and restart none.
    pub(crate) fn retire(&self) {
        let _ = self.tx.send(Msg::Retire);
    }
}
