//! Every type that crosses the admin socket: the requests `hotsock` (and
//! the bench) send, the replies, and everything `status` reports. Being
//! serialized, they are an IPC boundary: add fields with defaults; a change
//! that breaks the shape bumps [`ADMIN_VERSION`], which travels in every
//! reply so an older or newer CLI says so instead of misreading.

use serde::{Deserialize, Serialize};

/// The admin protocol's version. 2: typed worker phases and exit causes,
/// the reply envelope with this field.
pub const ADMIN_VERSION: u32 = 2;

/// A reply on the admin socket: the version, then the response's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminReply {
    /// The server's [`ADMIN_VERSION`].
    pub version: u32,
    /// What it says.
    #[serde(flatten)]
    pub response: AdminResponse,
}

/// Why a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitCause {
    /// It never said Ready: it could not be started, exited or broke the
    /// protocol during start-up, or did not answer within
    /// `reload.ready_timeout_ms`.
    NotReady,
    /// It died on its own: an exit nobody asked for, or a signal the server
    /// did not send.
    Crashed {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// A handler panic ended the process (a `panic = "abort"` build, or a
    /// panic the SDK could not catch); its stderr shows the panic.
    HandlerPanic {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// It answered no heartbeat for `workers.unresponsive_ms`: a handler
    /// blocks its event loop. Killed by the server.
    Unresponsive {
        /// How long it had been silent.
        silent_ms: u64,
    },
    /// It sent bytes that break the worker protocol (a malformed frame, a
    /// second Ready, text that is not UTF-8). Killed by the server.
    ProtocolViolation,
    /// Its socket failed, or it closed the socket and kept running.
    LostLink,
    /// It was still running at its drain deadline; killed by the server.
    DrainDeadline,
    /// It was replaced after `workers.max_requests` events and exited
    /// cleanly.
    Recycled,
    /// It was told to stop (a reload, a rollback, a server stop) and exited
    /// cleanly.
    Stopped,
    /// The server killed it before it finished, by decision of the
    /// supervisor or of an operator.
    Killed {
        /// Which decision.
        reason: KillReason,
    },
}

/// Why the server killed a worker outright (see [`ExitCause::Killed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// The reload it was started for was aborted.
    ReloadAborted,
    /// It became Ready after the job that started it ended.
    NotNeeded,
    /// A reload replaced the restart it was.
    Superseded,
    /// The server is stopping and it was not serving yet.
    ServerStopping,
}

/// What a reload request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadKind {
    /// Event workers to a new generation built from the current executable.
    Workers,
    /// Task workers only (`SIGUSR2`, `--tasks`).
    Tasks,
    /// Back to the generation served before the last switch.
    Rollback,
}

/// The result of a reload, as `hotsock reload --wait` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Whether the switch happened.
    pub ok: bool,
    /// What was asked.
    pub kind: ReloadKind,
    /// The generation serving before.
    pub from_generation: u64,
    /// The generation serving after (equal to `from_generation` on failure).
    pub generation: u64,
    /// From the start of the job until every slot routed to the new
    /// generation (or the failure was final).
    pub duration_ms: u64,
    /// How many requests this outcome answers (coalesced ones included).
    pub requests: usize,
    /// What happened, in words; the reason on failure.
    pub message: String,
}

/// What `status` shows about watching and building.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatchStatus {
    /// `inotify` or `poll`.
    pub backend: String,
    /// Why inotify was not used when `poll` was not asked for.
    pub fallback_reason: Option<String>,
    /// The watched directories.
    pub paths: Vec<String>,
    /// Relevant changes seen (after ignores).
    pub changes: u64,
    /// Builds started.
    pub builds: u64,
    /// Builds that failed.
    pub builds_failed: u64,
    /// Whether a build is running.
    pub building: bool,
    /// How the last build ended.
    pub last_build: Option<BuildOutcome>,
}

/// One build's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildOutcome {
    /// Exit status 0 within the timeout.
    pub ok: bool,
    /// How it ended, in words.
    pub exit: String,
    /// When it ended, ms since the Unix epoch.
    pub finished_at_unix_ms: u64,
    /// How long it ran.
    pub duration_ms: u64,
    /// A changed path that started it.
    pub trigger: String,
    /// The last lines of its output (stdout and stderr).
    pub output_tail: Vec<String>,
}

/// The CPU scheduling policy worker processes start at
/// (`workers.start_idle_ms`, `supervise/spawn.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum WorkerStart {
    /// The idle policy until Ready, for at most `max_ms`.
    Idle {
        /// `workers.start_idle_ms`.
        max_ms: u64,
    },
    /// The normal policy.
    Normal {
        /// Why not the idle one.
        why: String,
    },
}

impl Default for WorkerStart {
    fn default() -> WorkerStart {
        WorkerStart::Normal { why: String::new() }
    }
}

/// Task totals for `status`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TaskCounters {
    /// Tasks dispatched and not yet finished (waiting or running).
    pub queued: usize,
    /// Tasks finished with a result.
    pub completed: u64,
    /// Tasks whose handler failed.
    pub failed: u64,
    /// Dispatches refused (queue full, no task workers).
    pub refused: u64,
}

/// `[cluster]`: this node and its link to Redis, for `status` and
/// `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `cluster.node_id`.
    pub node: String,
    /// This boot's epoch (presence entries carry it).
    pub epoch: u64,
    /// Redis answers; false while the node reconnects.
    pub redis_connected: bool,
    /// Why Redis is unreachable, while it is.
    pub last_error: Option<String>,
    /// Live nodes at the last heartbeat.
    pub nodes: u64,
    /// Messages handed to other nodes (one per node reached).
    pub routed: u64,
    /// Cross-node messages delivered here.
    pub received: u64,
    /// Messages that never reached Redis (queue full or Redis away).
    pub dropped: u64,
    /// Missed Pub/Sub messages read back from a stream.
    pub refetched: u64,
    /// Messages missed and no longer in Redis.
    pub lost: u64,
    /// Times the node lost Redis.
    pub outages: u64,
}

/// Channel totals, for `status` and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCounters {
    /// Channels held now (with members or history).
    #[serde(default)]
    pub channels: usize,
    /// Connection-in-channel memberships now.
    pub memberships: u64,
    /// Bytes held in histories now.
    #[serde(default)]
    pub history_bytes: usize,
    /// Publications since start.
    pub publications: u64,
    /// Publications queued to members since start (one per member).
    pub deliveries: u64,
    /// Subscribes with a position that replayed everything missed.
    pub recovered: u64,
    /// Subscribes with a position whose gap could not be filled.
    pub unrecovered: u64,
    /// Publications replayed by recoveries.
    pub replayed: u64,
    /// Channel requests refused (limits, bad names).
    pub refused: u64,
}

/// A worker process's lifecycle, as the supervisor sees it. `status` shows
/// it under `state` (with its details beside it in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkerPhase {
    /// Spawned; has not answered Hello with Ready yet. Gets no events.
    Starting,
    /// Said Ready; receives events (or stands by for its slot's switch).
    Ready,
    /// Gets no new events while it hands its state to its successor.
    Suspended,
    /// Replaced: finishes what it holds, receives nothing new, and is
    /// killed if still running at its deadline.
    Draining {
        /// Time left to the deadline.
        deadline_in_ms: u64,
    },
    /// Gone; the slot waits (backing off) for its replacement, holding the
    /// events the dead worker had not acknowledged.
    Exited {
        /// Why it ended.
        cause: ExitCause,
    },
}

impl WorkerPhase {
    /// The phase's name, as `status` prints it.
    pub fn name(&self) -> &'static str {
        match self {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Suspended => "suspended",
            WorkerPhase::Draining { .. } => "draining",
            WorkerPhase::Exited { .. } => "exited",
        }
    }
}

/// One worker slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Slot index.
    pub slot: usize,
    /// `event` or `task`.
    pub role: String,
    /// The phase of the slot's current worker (or of the one starting for
    /// it, or how its last one ended).
    #[serde(flatten)]
    pub phase: WorkerPhase,
    /// Process id of the current (or last) worker.
    pub pid: Option<u32>,
    /// Code generation of the current worker.
    pub generation: u64,
    /// Events the current worker holds (sent, not acknowledged).
    pub inflight: usize,
    /// Events of this slot not acknowledged yet, including ones waiting for
    /// a worker or for an older generation to finish a connection's events.
    pub queued: usize,
    /// The slot's other live workers: older generations draining, a new one
    /// starting beside the current one.
    pub others: Vec<WorkerStatus>,
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
    /// Every exit of this slot's workers since start, by cause name.
    #[serde(default)]
    pub exit_counts: std::collections::BTreeMap<String, u64>,
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
    pub cause: ExitCause,
    /// The cause in words, with exit status and last stderr lines.
    pub detail: String,
    /// When the server saw it end, ms since the Unix epoch.
    pub at_unix_ms: u64,
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

/// A live worker of a slot other than its current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its process id (none before it is spawned).
    pub pid: Option<u32>,
    /// Its generation.
    pub generation: u64,
    /// Events it holds (sent, not acknowledged).
    pub inflight: usize,
    /// Where it is in its life.
    #[serde(flatten)]
    pub phase: WorkerPhase,
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
    pub last_reload: Option<ReloadOutcome>,
    /// Watching and building, when `[reload.watch]` is on.
    pub watch: Option<WatchStatus>,
    /// Task queue and totals.
    pub tasks: TaskCounters,
    /// Channel figures.
    #[serde(default)]
    pub channels: ChannelCounters,
    /// `[cluster]`: the node and its Redis (absent on a single server).
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
    /// The shared tables.
    pub tables: Vec<TableStatus>,
    /// The address clients connect to.
    pub listen: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Threads of the server's runtime (`server.threads`, or one per core).
    #[serde(default)]
    pub runtime_threads: usize,
    /// How worker processes start (`workers.start_idle_ms`).
    #[serde(default)]
    pub worker_start: WorkerStart,
    /// Connections registered (open or mid-handshake).
    pub connections: usize,
    /// Connections accepted since start.
    pub accepted_total: u64,
    /// Upgrade requests refused (4xx/5xx) since start.
    pub rejected_total: u64,
    /// WebSocket data messages received from clients since start.
    #[serde(default)]
    pub messages_in_total: u64,
    /// WebSocket data messages sent to clients since start.
    #[serde(default)]
    pub messages_out_total: u64,
    /// Whether a graceful stop is under way.
    pub stopping: bool,
    /// This server's version (`hotsock --version`; not `version`, which
    /// is the admin protocol's in the same reply object).
    #[serde(default)]
    pub server_version: String,
    /// The binary upgrade under way or last done: in the old server the
    /// attempt, in the new one how it took over.
    #[serde(default)]
    pub upgrade: Option<UpgradeStatus>,
    /// One entry per worker slot.
    pub workers: Vec<SlotStatus>,
}

/// Where a binary upgrade stands (`hotsock upgrade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradePhase {
    /// The new binary is starting its workers (its readiness gate).
    Starting,
    /// Connections are stopping between messages, events draining.
    Parking,
    /// The state and sockets are on their way to the new server.
    HandingOver,
    /// The new server holds everything.
    Done,
    /// Given up; the old server serves on (`detail` says why).
    Failed,
}

/// A binary upgrade, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeStatus {
    /// Where it stands.
    pub phase: UpgradePhase,
    /// The version of the server that handed over.
    pub from_version: String,
    /// The new server's version (once it said).
    pub to_version: Option<String>,
    /// The old server's pid.
    pub from_pid: u32,
    /// The new server's pid.
    pub to_pid: Option<u32>,
    /// From the request to the new server holding everything (or failing).
    pub duration_ms: u64,
    /// How long connections were parked (the longest pause).
    pub pause_ms: u64,
    /// Connections moved.
    pub connections: usize,
    /// When it ended (Unix ms; 0 while under way).
    pub at_unix_ms: u64,
    /// Why it failed.
    pub detail: Option<String>,
}

/// A command to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Server and worker state.
    Status,
    /// The open connections.
    Clients,
    /// Stop gracefully.
    Stop,
    /// Reload the event workers (or, with `tasks`, only the task workers).
    Reload {
        /// Task workers only.
        #[serde(default)]
        tasks: bool,
        /// Answer with the outcome instead of at once.
        #[serde(default)]
        wait: bool,
        /// Switch this many slots first and watch them (`reload.canary_ms`).
        #[serde(default)]
        canary: Option<usize>,
    },
    /// Replace the server process itself by a new binary, moving every
    /// connection to it (`hotsock upgrade`).
    Upgrade {
        /// The new executable (default: the path this server was started
        /// from).
        #[serde(default)]
        binary: Option<std::path::PathBuf>,
        /// Answer once it is done (or failed) instead of at once.
        #[serde(default)]
        wait: bool,
    },
    /// Switch back to the generation served before the last switch.
    Rollback {
        /// Answer with the outcome instead of at once.
        #[serde(default)]
        wait: bool,
    },
}

/// The server's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// Answer to `Status`.
    Status(Box<ServerStatus>),
    /// Answer to `Clients`.
    Clients {
        /// One entry per open connection.
        clients: Vec<ClientStatus>,
    },
    /// Answer to `Stop`: the stop has begun.
    Stopping {
        /// The server's pid, to wait for.
        pid: u32,
        /// The longest the stop takes (`Config::stop_budget`), so the
        /// client knows how long to wait without computing it.
        #[serde(default)]
        deadline_ms: u64,
    },
    /// Answer to `Reload`/`Rollback` with `wait`.
    Reload(ReloadOutcome),
    /// Answer to `Reload`/`Rollback` without `wait`: it is queued.
    ReloadQueued,
    /// Answer to `Upgrade` with `wait`: how it ended (`phase` is Done or
    /// Failed).
    Upgrade(UpgradeStatus),
    /// Answer to `Upgrade` without `wait`: it has begun.
    UpgradeStarted,
    /// The request was not understood.
    Error {
        /// Why.
        message: String,
    },
}
