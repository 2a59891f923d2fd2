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
mod upgrade;
mod wait;
mod wire;

pub use upgrade::report_failure as report_upgrade_failure;
pub use upgrade::wire::ENV_UPGRADE_FD;

/// Where a copy of the binary can carry a build tag: the marker, then NUL
/// bytes a tool may overwrite with up to 29 bytes of tag (the tests make
/// a second "build" for `hotsock upgrade` this way). Read through
/// `black_box`, so the compiler cannot fold the NULs in.
static BUILD_TAG: [u8; 48] = *b"hotsock-build-tag:\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// This server's version: the package version, and `+TAG` when the
/// binary carries a build tag.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let marker = std::hint::black_box(&BUILD_TAG);
        let tag = &marker[b"hotsock-build-tag:".len()..];
        let tag = &tag[..tag.iter().position(|&b| b == 0).unwrap_or(tag.len())];
        match std::str::from_utf8(tag) {
            Ok(tag) if !tag.is_empty() => format!("{}+{tag}", env!("CARGO_PKG_VERSION")),
            _ => env!("CARGO_PKG_VERSION").to_owned(),
        }
    })
}

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
    UpgradePhase, UpgradeStatus, WatchStatus, WorkerPhase, WorkerStart, WorkerStatus,
};
