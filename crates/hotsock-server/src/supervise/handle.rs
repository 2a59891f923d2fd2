//! How the rest of the server talks to the supervisor: one channel, so every
//! decision is made in one place, in order.

use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::supervise::core::CoreConfig;
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

/// The supervisor's part of a re-read config: its decision settings and
/// the generation store's source and size.
#[derive(Debug)]
pub(crate) struct Reconfigure {
    pub(crate) core: CoreConfig,
    /// `workers.command[0]`, resolved: what the next generation copies.
    pub(crate) program: PathBuf,
    pub(crate) keep_generations: usize,
}

#[derive(Debug)]
pub(crate) enum Msg {
    Worker(WorkerEvent),
    Reload(ReloadRequest),
    Reconfigure(Reconfigure),
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

    /// New settings from a re-read config; sent before the reload request
    /// it goes with, so that reload's decisions already use them.
    pub(crate) fn reconfigure(&self, reconfigure: Reconfigure) {
        let _ = self.tx.send(Msg::Reconfigure(reconfigure));
    }

    /// Graceful stop: drain every worker and restart none.
    pub(crate) fn retire(&self) {
        let _ = self.tx.send(Msg::Retire);
    }
}
