//! The hotsock server: it owns every client connection and forwards whole
//! WebSocket messages to worker processes running the user's code, which it
//! starts, supervises and restarts without ever closing a connection.
//!
//! Map (see `docs/ARCHITECTURE.md` for the invariants):
//! - `config`: the TOML file, validated.
//! - `server`: bind, start workers, accept, graceful stop.
//! - `conn` and `http`: one client connection, from HTTP upgrade to close.
//! - `hub`: routing, the sticky rule, unacknowledged events, outboxes.
//! - `slot`: per-slot event lanes: who holds what, when an event may go.
//! - `supervisor`: restarts and reloads (one decision loop).
//! - `worker`, `spawn`, `generations`: one worker process; forking;
//!   the per-generation executable store.
//! - `watch`: file watching, debounced single-flight builds, reload on success.
//! - `admin` and `status`: the admin socket and what it reports.
#![deny(missing_docs)]

mod close;
mod cluster;
mod config;
mod control;
mod error;
mod metrics;
mod net;
mod options;
mod route;
mod server;
mod shared;
mod supervise;
mod wait;
mod wire;

pub use config::{
    ClusterConfig, Config, ConfigError, DispatchMode, LimitsConfig, LogConfig, LogFormat, MESSAGE_BYTES_CEILING,
    MetricsConfig, ReloadConfig, ReloadStrategy, ServerConfig, StopBudget, TableConfig, TableScope, TlsConfig,
    WatchConfig, WorkersConfig,
};
pub use control::admin::{ADMIN_SOCKET, AdminError, PID_FILE, request as admin_request};
pub use error::ServerError;
pub use net::tls::TlsError;
pub use options::{LogControl, Options};
pub use server::Server;
pub use wire::{
    ADMIN_VERSION, AdminReply, AdminRequest, AdminResponse, BuildOutcome, ClientStatus, EXITS_KEPT, ExitCause,
    ExitRecord, KillReason, ReloadKind, ReloadOutcome, ServerStatus, SlotStatus, TableStatus, TaskCounters,
    WatchStatus, WorkerPhase, WorkerStatus,
};
