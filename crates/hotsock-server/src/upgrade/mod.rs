//! `hotsock upgrade`: replacing the server process by a new binary with
//! every connection kept. The old server (`give.rs`) starts the new one
//! (`take.rs`) with a Unix socket as its standard input and hands over,
//! in this order: the listening sockets and table segments (so the new
//! server starts the serving generation's workers on the same tables),
//! then, once those workers are Ready, every connection parked at a quiet
//! point (`net/park.rs`) with its uid, channels and queued output, and the
//! channels with their epochs, offsets and histories (`wire.rs`).
//!
//! The guarantee: nothing moves while it is in flight. A connection parks
//! only between two client messages with its output written, and the
//! handover waits until every event is acknowledged, so no event, reply
//! or publication is lost, doubled or reordered. The old server lets go
//! only after the new one says it holds everything (`Commit`); until
//! then any failure (the binary does not start, its config does not load,
//! its workers are not Ready, the pause budget runs out) leaves the old
//! server serving every connection as before.

mod give;
mod take;
pub(crate) mod wire;

pub(crate) use give::{refusal, upgrade};
pub use take::report_failure;
pub(crate) use take::{Taken, Takeover};

pub(crate) fn unix_ms() -> u64 {
    unix_us() / 1000
}

pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Runs an upgrade on its own task (a signal, `hotsock upgrade` without
/// `--wait`); the server stops once the new one holds everything.
pub(crate) fn spawn(shared: std::sync::Arc<crate::shared::Shared>, binary: Option<std::path::PathBuf>) {
    tokio::spawn(async move {
        if upgrade(&shared, binary).await.is_ok() {
            shared.request_stop();
        }
    });
}
