//! What `hotsock status` and `hotsock clients` report. These types are
//! serialized over the admin socket, so they are part of an IPC boundary:
//! add fields, do not rename them.

use serde::{Deserialize, Serialize};

/// A worker process's lifecycle, as seen by the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Spawned; has not answered Hello with Ready yet. Gets no events.
    Starting,
    /// Said Ready; receives events.
    Ready,
    /// Told to stop; finishes what it has, receives nothing new.
    Draining,
    /// Gone; the slot waits (backing off) for its replacement, holding the
    /// events the dead worker had not acknowledged.
    Exited,
}

/// One worker slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Slot index.
    pub slot: usize,
    /// `event` or `task`.
    pub role: String,
    /// Current lifecycle state.
    pub state: WorkerState,
    /// Process id of the current (or last) worker.
    pub pid: Option<u32>,
    /// Code generation of the current worker.
    pub generation: u64,
    /// Events the current worker holds (sent, not acknowledged).
    pub inflight: usize,
    /// Events of this slot not acknowledged yet, including ones waiting for
    /// a worker or for an older generation to finish a connection's events.
    pub queued: usize,
    /// Workers of older generations still finishing their events.
    pub draining: Vec<DrainingStatus>,
    /// Events routed to this slot since start.
    pub dispatched: u64,
    /// Events acknowledged by this slot's workers since start.
    pub acked: u64,
    /// Events handed again to a replacement after a worker died.
    pub redelivered: u64,
    /// Events dropped after crashing `workers.max_redeliveries` + 1 workers.
    pub dropped: u64,
    /// Workers of this slot that died unexpectedly.
    pub crashes: u64,
    /// Handler panics the workers of this slot caught and reported.
    pub panics: u64,
    /// Workers replaced after `workers.max_requests` events.
    pub recycled: u64,
    /// The slot crashed `crash_loop_count` times within the window and is
    /// restarting at the slowest back-off.
    pub crash_loop: bool,
    /// Resident memory of the worker process, in KiB.
    pub rss_kib: Option<u64>,
    /// Milliseconds since the current worker last answered a heartbeat
    /// (or became ready); none when heartbeats are off for this slot. Near
    /// `workers.unresponsive_ms`, its event loop is blocked.
    #[serde(default)]
    pub heartbeat_age_ms: Option<u64>,
    /// How the last worker of this slot ended, if one did, in words.
    pub last_exit: Option<String>,
    /// The last exits of this slot's workers (draining ones included),
    /// oldest first, at most [`EXITS_KEPT`].
    #[serde(default)]
    pub exits: Vec<ExitRecord>,
}

/// Exits kept per slot for `status`: enough to see a pattern (a crash loop,
/// drains that keep hitting their deadline), small enough to print.
pub const EXITS_KEPT: usize = 5;

/// One worker process that ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Its process id, if it was spawned.
    pub pid: Option<u32>,
    /// Its generation.
    pub generation: u64,
    /// Why it ended.
    pub cause: crate::ExitCause,
    /// The cause in words, with exit status and last stderr lines.
    pub detail: String,
    /// When the server saw it end, ms since the Unix epoch.
    pub at_unix_ms: u64,
}

impl SlotStatus {
    pub(crate) fn new(slot: usize) -> SlotStatus {
        SlotStatus {
            slot,
            role: "event".into(),
            state: WorkerState::Starting,
            pid: None,
            generation: 1,
            inflight: 0,
            queued: 0,
            draining: Vec::new(),
            dispatched: 0,
            acked: 0,
            redelivered: 0,
            dropped: 0,
            crashes: 0,
            panics: 0,
            recycled: 0,
            crash_loop: false,
            rss_kib: None,
            heartbeat_age_ms: None,
            last_exit: None,
            exits: Vec::new(),
        }
    }
}

/// One shared table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableStatus {
    /// Its name.
    pub name: String,
    /// Rows in use.
    pub rows: usize,
    /// Its capacity.
    pub capacity: u32,
}

/// A worker of an older generation that is finishing its events.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainingStatus {
    /// Its process id.
    pub pid: Option<u32>,
    /// Its generation.
    pub generation: u64,
    /// Events it still holds.
    pub inflight: usize,
}

/// One open client connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientStatus {
    /// Connection id.
    pub conn: u64,
    /// Client address.
    pub peer: String,
    /// Request target of the upgrade.
    pub path: String,
    /// Bound uid.
    pub uid: Option<u64>,
    /// Slot its events go to (or went to last).
    pub slot: usize,
    /// Events not acknowledged yet.
    pub inflight: u32,
    /// Accept time, ms since the Unix epoch.
    pub connected_at_unix_ms: u64,
}

/// The whole server, for `hotsock status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Server process id.
    pub pid: u32,
    /// The generation serving (the newest one switched to).
    pub generation: u64,
    /// The generation `hotsock rollback` would switch to.
    pub previous_generation: Option<u64>,
    /// The reload under way, if any.
    pub reloading: Option<String>,
    /// Reload requests waiting for the one under way.
    pub reloads_queued: usize,
    /// How the last reload ended.
    pub last_reload: Option<crate::ReloadOutcome>,
    /// Watching and building, when `[reload.watch]` is on.
    pub watch: Option<crate::WatchStatus>,
    /// Task queue and totals.
    pub tasks: crate::TaskCounters,
    /// The shared tables.
    pub tables: Vec<TableStatus>,
    /// The address clients connect to.
    pub listen: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Connections registered (open or mid-handshake).
    pub connections: usize,
    /// Connections accepted since start.
    pub accepted_total: u64,
    /// Upgrade requests refused (4xx/5xx) since start.
    pub rejected_total: u64,
    /// Whether a graceful stop is under way.
    pub stopping: bool,
    /// One entry per worker slot.
    pub workers: Vec<SlotStatus>,
}

/// Reads a process's resident set size from `/proc`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}
