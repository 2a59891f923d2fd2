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

mod admin;
mod config;
mod conn;
mod exit;
mod generations;
mod http;
mod hub;
mod server;
mod slot;
mod spawn;
mod status;
mod supervisor;
mod watch;
mod worker;

pub use admin::{ADMIN_SOCKET, AdminError, AdminRequest, AdminResponse, PID_FILE, request as admin_request};
pub use config::{
    Config, ConfigError, DispatchMode, LimitsConfig, MESSAGE_BYTES_CEILING, ReloadConfig, ReloadStrategy, ServerConfig,
    TableConfig, WatchConfig, WorkersConfig,
};
pub use exit::{ExitCause, KillReason};
pub use hub::TaskCounters;
pub use server::{Server, ServerError};
pub use status::{
    ClientStatus, DrainingStatus, EXITS_KEPT, ExitRecord, ServerStatus, SlotStatus, TableStatus, WorkerState,
};
pub use supervisor::{ReloadKind, ReloadOutcome};
pub use watch::{BuildOutcome, WatchStatus};
