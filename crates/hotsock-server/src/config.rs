//! The TOML configuration: types, defaults, validation.
//!
//! Every key has a default except `workers.command`; unknown keys are errors.
//! Errors name the key and, where it can be found, the line, because the
//! person reading them is editing that file right now.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod cluster;
mod diff;
pub use cluster::ClusterConfig;
pub(crate) use diff::{RestartOnly, diff};

/// Largest message a server can be configured to accept. The worker protocol
/// reserves a little room above it for framing (`PAYLOAD_MAX_BYTES`).
pub const MESSAGE_BYTES_CEILING: usize = 64 << 20;
/// Largest `channels.history_size`: a history is a ring scanned on
/// recovery, and a million publications per channel is a database's job.
pub(crate) const CHANNEL_HISTORY_MAX: usize = 1_000_000;

// The bounds validation enforces. Each error message is built from these.

/// Most event workers (and, separately, task workers): one process per
/// slot; past a few per core they only add context switches, and 256 covers
/// the largest machines this runs on.
pub(crate) const WORKERS_MAX: usize = 256;
/// Most threads per worker runtime: a worker is meant to be one event loop;
/// more threads help only handlers that compute between awaits.
pub(crate) const WORKER_THREADS_MAX: usize = 64;
/// Most threads of the server's own runtime: past one or two per core
/// they only add context switches, and 256 covers the largest machines.
pub(crate) const SERVER_THREADS_MAX: usize = 256;
/// Heartbeats more often than this cost the worker more than they tell.
pub(crate) const HEARTBEAT_MS_MIN: u64 = 10;
/// Heartbeats rarer than this notice a blocked loop too late to matter.
pub(crate) const HEARTBEAT_MS_MAX: u64 = 60_000;
/// Longest a starting worker may run at the idle policy: on a machine
/// whose CPUs stay busy it gets almost no CPU there, so a longer bound
/// would mostly delay a reload, and the spawner thread, idle during the
/// spawn, could hold a lock the runtime shares that long (spawn.rs).
pub(crate) const START_IDLE_MS_MAX: u64 = 1_000;
/// The smallest output buffer: below a few frames, ordinary bursts would
/// close healthy clients as slow readers.
pub(crate) const OUTPUT_BUFFER_BYTES_MIN: usize = 1024;
/// The smallest request head limit: a browser's upgrade request with a few
/// cookies needs a few hundred bytes.
pub(crate) const REQUEST_HEAD_BYTES_MIN: usize = 512;
/// The largest request head limit: nothing legitimate needs more, and every
/// connection mid-handshake may hold this much.
pub(crate) const REQUEST_HEAD_BYTES_MAX: usize = 1 << 20;
/// Most `server.static_files` entries: they are for the odd file that lives
/// outside `static_dir` (a shared client library), not a second tree.
pub(crate) const STATIC_FILES_MAX: usize = 64;
/// The smallest WebSocket read buffer: smaller costs a syscall per frame.
pub(crate) const READ_BUFFER_BYTES_MIN: usize = 1024;
/// The largest WebSocket read buffer: it is paid per idle connection.
pub(crate) const READ_BUFFER_BYTES_MAX: usize = 1 << 20;
/// The shortest watch debounce and poll interval: editors write a save in
/// several steps a few milliseconds apart.
pub(crate) const WATCH_MS_MIN: u64 = 10;

/// A configuration that failed to load, naming the file, key and line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown or has the wrong type.
    /// The message from the parser already names the line and the key.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A key parses but its value is not allowed.
    #[error("{path}{}: `{key}` {problem}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The line of the key, when found.
        line: Option<usize>,
        /// The full key, e.g. `workers.count`.
        key: String,
        /// What is wrong with the value.
        problem: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: where to listen and where to keep runtime files.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[workers]`: the user's code and how events reach it.
    pub workers: WorkersConfig,
    /// `[limits]`: per-connection bounds.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[reload]`: timeouts for starting and stopping workers.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// `[log]`: where the server's log goes and in which form.
    #[serde(default)]
    pub log: LogConfig,
    /// `[metrics]`: the Prometheus and health listener (off without it).
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// `[tables.NAME]`: shared-memory tables every worker maps.
    #[serde(default)]
    pub tables: std::collections::BTreeMap<String, TableConfig>,
    /// `[channels]`: server-side groups with history and recovery.
    #[serde(default)]
    pub channels: ChannelsConfig,
    /// `[cluster]`: nodes sharing one Redis (off without it).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Directory of the config file; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file and its text, so errors found after parsing (a certificate
    /// that does not load, a key a reload cannot change) name the line.
    #[serde(skip)]
    pub(crate) source: Source,
}

/// Where a [`Config`] came from.
#[derive(Debug, Clone, Default)]
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on for WebSocket clients.
    pub listen: SocketAddr,
    /// Directory for the admin socket, pid file and (later) generations;
    /// relative to the config file.
    pub run_dir: PathBuf,
    /// `listen(2)` backlog: connections the kernel queues before accept.
    pub backlog: u32,
    /// Open connections (including ones mid-handshake) before new upgrade
    /// requests get HTTP 503.
    pub max_connections: usize,
    /// Time a client has to send its upgrade request, and a worker has to
    /// decide on it.
    pub handshake_timeout_ms: u64,
    /// Time a client has to answer our close frame before the socket is
    /// dropped.
    pub close_timeout_ms: u64,
    /// Serve plain HTTP GET requests from this directory (relative to the
    /// config file): a page for the service. Without it, plain HTTP gets 426.
    pub static_dir: Option<PathBuf>,
    /// Single files served besides `static_dir` (which they need), each at
    /// the exact URL path given: `{ "/hotsock.js" = "../../clients/js/hotsock.js" }`.
    /// For a file that lives outside the directory (the browser client);
    /// `static_dir` itself never follows a link out of it. Paths are
    /// relative to the config file; at most [`STATIC_FILES_MAX`].
    pub static_files: std::collections::BTreeMap<String, PathBuf>,
    /// A graceful stop waits this long for workers to acknowledge every
    /// event (the clients' Close events included) before they drain.
    pub stop_timeout_ms: u64,
    /// Origins a browser page may open a WebSocket from: exact origins
    /// (`"https://app.example.com"`) or `"*.example.com"` for subdomains.
    /// Other origins get 403 before any worker sees the request (against
    /// cross-site WebSocket hijacking). Absent: any origin (a warning at
    /// start when listening beyond loopback). Requests without an Origin
    /// header (not from a browser) are not affected.
    pub allowed_origins: Option<Vec<String>>,
    /// `[server.tls]`: serve `wss://` (every connection on the listener is
    /// TLS). Absent: plain `ws://`.
    pub tls: Option<TlsConfig>,
    /// Threads of the server process's runtime (connections, the hub, the
    /// worker links); 0: tokio's default, one per core the process may use
    /// (`TOKIO_WORKER_THREADS` overrides that default). One thread
    /// saves the hand-offs between threads when a few busy connections
    /// are all there is (`hotsock-bench echo` at 10 connections); more
    /// spread TLS and many connections over the cores.
    pub threads: usize,
}

/// `[server.tls]`: the certificate and key, PEM files (relative to the
/// config file). Both are read again at every reload, so a renewed
/// certificate takes effect without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9501)),
            run_dir: PathBuf::from("run"),
            backlog: 1024,
            max_connections: 10_000,
            handshake_timeout_ms: 5_000,
            close_timeout_ms: 1_000,
            static_dir: None,
            static_files: std::collections::BTreeMap::new(),
            stop_timeout_ms: 10_000,
            allowed_origins: None,
            tls: None,
            threads: 0,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default, one line an event) or `json` (one object a line,
    /// for log collectors).
    pub format: LogFormat,
    /// Write the log to this file (relative to the config file) instead of
    /// stderr; SIGHUP reopens it, so logrotate can move it away.
    pub file: Option<PathBuf>,
    /// Which events to keep, `RUST_LOG`-style (`info`,
    /// `info,hotsock_server::net=debug`); `HOTSOCK_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, file: None, level: "info".into() }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the listener serving `/metrics` (Prometheus text),
    /// `/healthz` and `/readyz`. Keep it off the public interface: it says
    /// how the service is doing to whoever asks.
    pub listen: SocketAddr,
}

/// How events choose a worker slot (Swoole's `dispatch_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DispatchMode {
    /// Connection id modulo the worker count (the default).
    Fd,
    /// After `bind`, uid modulo the worker count; before it, like `fd`.
    Uid,
    /// The next slot in turn, for each idle connection's next event.
    RoundRobin,
    /// The slot with the fewest unacknowledged events.
    LeastBusy,
}

/// `[tables.NAME]`: a shared table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Exact capacity in rows.
    pub rows: u32,
    /// Column names and types: `i64`, `f64` or `str:N` (N bytes).
    pub columns: std::collections::BTreeMap<String, String>,
    /// `local` (default): shared memory of this server's workers.
    /// `cluster`: in the cluster's Redis, the same rows on every node.
    #[serde(default)]
    pub scope: TableScope,
}

/// Where a table's rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableScope {
    /// A shared-memory segment every worker of this server maps.
    #[default]
    Local,
    /// Redis (`[cluster]`): each operation one atomic step there.
    Cluster,
}

impl TableConfig {
    /// The declaration as Hello carries it.
    pub(crate) fn spec(&self, name: &str) -> hotsock_protocol::TableSpec {
        hotsock_protocol::TableSpec {
            name: name.to_owned(),
            rows: self.rows,
            columns: self.columns.iter().map(|(n, t)| (n.clone(), t.clone())).collect(),
        }
    }

    /// The table crate's schema for this declaration.
    pub fn schema(&self) -> Result<hotsock_table::Schema, String> {
        let columns = self
            .columns
            .iter()
            .map(|(name, ty)| {
                hotsock_table::ColumnType::parse(ty)
                    .map(|ty| hotsock_table::Column { name: name.clone(), ty })
                    .map_err(|e| format!("column {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(hotsock_table::Schema { rows: self.rows, columns })
    }
}

/// `[workers]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// The worker program and its arguments. A relative program path is
    /// resolved against the config file's directory.
    pub command: Vec<String>,
    /// Number of event worker processes.
    #[serde(default = "default_count")]
    pub count: usize,
    /// How events are spread over the workers.
    #[serde(default = "default_dispatch")]
    pub dispatch: DispatchMode,
    /// Handlers one worker runs at once (across connections; one
    /// connection's events always run one at a time).
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Threads of each worker's async runtime. 1 (default): a single event
    /// loop per worker, the cheapest per message; scale with `count`. More
    /// suits handlers that compute for long between awaits.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Interval of heartbeat pings to each worker, answered from its event
    /// loop; 0 turns heartbeats off.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_ms: u64,
    /// A worker that has not answered a heartbeat for this long has its
    /// event loop blocked (a handler that never yields): it is killed and
    /// replaced, and its events are redelivered (poison events end after
    /// `max_redeliveries`). Must exceed `heartbeat_ms`.
    #[serde(default = "default_unresponsive")]
    pub unresponsive_ms: u64,
    /// The same for task workers; 0 (default): never, since task workers
    /// exist to run work that blocks.
    #[serde(default)]
    pub task_unresponsive_ms: u64,
    /// Task worker processes (same binary, `on_task`); 0: none.
    #[serde(default)]
    pub task_count: usize,
    /// Tasks waiting or running before `ctx.task()` is refused.
    #[serde(default = "default_task_queue_max")]
    pub task_queue_max: usize,
    /// Replace a task worker after this many tasks; 0 never does.
    #[serde(default)]
    pub task_max_requests: u64,
    /// Replace a worker (same generation, zero-loss switch) after it handled
    /// this many events; 0 never does. The guard against slow leaks.
    #[serde(default)]
    pub max_requests: u64,
    /// Times an event is redelivered after the worker holding it died; one
    /// more death drops it and closes its connection with 1011.
    #[serde(default = "default_max_redeliveries")]
    pub max_redeliveries: u32,
    /// Longest pause between restarts of a worker that keeps crashing.
    #[serde(default = "default_backoff_max")]
    pub restart_backoff_max_ms: u64,
    /// A starting worker runs at the idle CPU scheduling policy until it is
    /// Ready, or for at most this long from its spawn, so the serving
    /// workers and the server, woken meanwhile, take the CPU from it at
    /// once; 0: workers start at the normal policy. On a machine whose
    /// CPUs are all busy a start waits up to this long for CPU time. Needs the right to give the normal
    /// policy back (root, `CAP_SYS_NICE` or `RLIMIT_NICE`); without it
    /// workers start normally and `status` says why.
    #[serde(default = "default_start_idle")]
    pub start_idle_ms: u64,
    /// Crashes within `crash_loop_window_ms` that mark a slot as crash-looping.
    #[serde(default = "default_crash_loop_count")]
    pub crash_loop_count: u32,
    /// Window for `crash_loop_count`.
    #[serde(default = "default_crash_loop_window")]
    pub crash_loop_window_ms: u64,
}

fn default_count() -> usize {
    2
}
fn default_dispatch() -> DispatchMode {
    DispatchMode::Fd
}
fn default_start_idle() -> u64 {
    20
}
fn default_heartbeat() -> u64 {
    1_000
}
fn default_unresponsive() -> u64 {
    10_000
}
fn default_threads() -> usize {
    1
}
fn default_max_concurrency() -> u32 {
    256
}
fn default_task_queue_max() -> usize {
    1024
}
fn default_max_redeliveries() -> u32 {
    3
}
fn default_backoff_max() -> u64 {
    5_000
}
fn default_crash_loop_count() -> u32 {
    5
}
fn default_crash_loop_window() -> u64 {
    10_000
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message a client may send; larger ones close the connection
    /// with 1009. Swoole's default is 2 MiB; 1 MiB keeps a burst of large
    /// messages from many clients within memory.
    pub max_message_bytes: usize,
    /// Output a slow reader may have queued before it is closed with 1008.
    pub output_buffer_bytes: usize,
    /// Events of one connection that may wait for a worker before the server
    /// stops reading that socket (TCP back-pressure instead of memory).
    pub max_inflight_per_conn: u32,
    /// Largest HTTP upgrade request head; larger gets 431.
    pub max_request_head_bytes: usize,
    /// The read buffer each connection keeps (tungstenite's, for its whole
    /// life). The socket itself is read through a 64 KiB buffer per thread
    /// (`net/readahead.rs`), so this bounds only how much the WebSocket
    /// library takes per step; tungstenite's 128 KiB default cost ~135 KiB
    /// per idle connection, 1 KiB keeps an idle one under 5 KiB.
    pub read_buffer_bytes: usize,
    /// Connections one client address may hold at once (open or
    /// mid-handshake); one more gets 503. 0: no cap (the default, since
    /// clients behind one NAT or proxy share an address).
    pub max_connections_per_ip: u32,
    /// Upgrade requests one client address may make per second (a token
    /// bucket with this burst); more get 429. 0: no limit.
    pub handshakes_per_ip_per_s: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 1 << 20,
            output_buffer_bytes: 1 << 20,
            max_inflight_per_conn: 64,
            max_request_head_bytes: 8 << 10,
            read_buffer_bytes: 1 << 10,
            max_connections_per_ip: 0,
            handshakes_per_ip_per_s: 0,
        }
    }
}

/// How publications reach clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Envelope {
    /// The app's bytes, as published.
    None,
    /// A JSON text message with channel, epoch, offset and data, plus a
    /// `subscribed` message on every subscribe: what a client needs to
    /// recover after reconnecting (`docs/protocol.md`).
    Json,
}

/// `[channels]`: every bound named, with defaults sized for a chat or
/// lobby service on one box.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelsConfig {
    /// Publications kept per channel for recovery (0: no history; a
    /// channel then disappears with its last member).
    pub history_size: usize,
    /// Bytes of publications kept per channel; older ones go first.
    pub history_max_bytes: usize,
    /// How long a publication stays in the history.
    pub history_ttl_ms: u64,
    /// Channels the server holds at once (with members or history).
    pub max_channels: usize,
    /// Connections one channel may have.
    pub max_members: usize,
    /// Channels one connection may be in.
    pub max_channels_per_conn: usize,
    /// Publications one recovery may replay; a longer gap reports
    /// `recovered = false` instead (the app then sends a full state).
    pub max_replay: usize,
    /// `none` (default): publications go out as the app's bytes. `json`:
    /// wrapped with what a client needs to recover.
    pub envelope: Envelope,
}

impl Default for ChannelsConfig {
    fn default() -> Self {
        ChannelsConfig {
            history_size: 100,
            history_max_bytes: 256 << 10,
            history_ttl_ms: 300_000,
            max_channels: 100_000,
            max_members: 100_000,
            max_channels_per_conn: 128,
            max_replay: 1_000,
            envelope: Envelope::None,
        }
    }
}

/// How a reload replaces workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadStrategy {
    /// One slot at a time: start the new worker, wait for Ready, switch,
    /// next slot. One extra process at a time.
    Rolling,
    /// Start every new worker; switch all slots once all are Ready.
    AllAtOnce,
}

/// `[reload]`: starting, switching and stopping workers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// `rolling` (default) or `all-at-once`.
    pub strategy: ReloadStrategy,
    /// Generations kept in `run_dir/generations` (at least 2; the serving
    /// and rollback generations are always kept).
    pub keep_generations: usize,
    /// A starting worker must answer Hello with Ready within this time.
    pub ready_timeout_ms: u64,
    /// With `--canary K`: how long the first K switched slots are watched
    /// before the rest follow. Any crash or handler panic there rolls back.
    pub canary_ms: u64,
    /// How long a suspended worker (`App::HANDOFF`) has to hand over its
    /// state before its successor starts without it.
    pub handoff_timeout_ms: u64,
    /// Largest state a worker may hand to its successor (`App::HANDOFF`);
    /// larger state is dropped with an error and the successor starts
    /// without it.
    pub handoff_max_bytes: usize,
    /// After a reload: how long the new generation is watched.
    pub rollback_window_ms: u64,
    /// Crashes plus handler panics of the new generation within
    /// `rollback_window_ms` that trigger an automatic rollback (0: never).
    pub rollback_failures: u32,
    /// The drain deadline: a replaced worker (reload, rollback, recycle,
    /// stop) gets this long to finish its events before it is killed; its
    /// unfinished events are then redelivered to the next worker, with no
    /// strike, so this bounds how long a reload keeps two processes, not
    /// how long a handler may run.
    pub max_wait_ms: u64,
    /// `hotsock upgrade`: the new binary must be serving-ready (config
    /// valid, a Ready worker in every slot) within this time, or the
    /// upgrade is abandoned and nothing has changed.
    pub upgrade_timeout_ms: u64,
    /// `hotsock upgrade`: from the moment connections start to park until
    /// the new server holds them all. Past it the upgrade is aborted and
    /// the old server serves every connection on. Bounds every
    /// connection's pause.
    pub upgrade_pause_max_ms: u64,
    /// `[reload.watch]`: rebuild and reload when source files change.
    pub watch: Option<WatchConfig>,
}

/// `[reload.watch]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// Watch without `hotsock start --watch`.
    pub enabled: bool,
    /// Directories to watch, recursively, relative to the config file.
    /// Directories, not files, so editors that save by writing a temporary
    /// file and renaming it are seen.
    pub paths: Vec<PathBuf>,
    /// Extra glob patterns of paths to ignore (relative to a watched
    /// directory), on top of the defaults (`target/`, `.git/`, editor swap,
    /// backup and temporary files).
    pub ignore: Vec<String>,
    /// A build starts once no relevant change came for this long: a burst of
    /// saves is one build.
    pub debounce_ms: u64,
    /// The build command (argv, run in the config file's directory). Empty:
    /// a change reloads directly (workers that read code at start).
    pub build: Vec<String>,
    /// A build still running after this is killed and counts as failed.
    pub build_timeout_ms: u64,
    /// Poll for changes instead of inotify (Docker/NFS/WSL-style mounts
    /// where inotify never fires). Polling reads every file under `paths`
    /// each interval: watch source directories, not a whole project.
    pub poll: bool,
    /// How often polling looks.
    pub poll_interval_ms: u64,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: false,
            paths: Vec::new(),
            ignore: Vec::new(),
            debounce_ms: 150,
            build: Vec::new(),
            build_timeout_ms: 300_000,
            poll: false,
            poll_interval_ms: 500,
        }
    }
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            strategy: ReloadStrategy::Rolling,
            keep_generations: 3,
            ready_timeout_ms: 5_000,
            canary_ms: 5_000,
            watch: None,
            handoff_max_bytes: 1 << 20,
            handoff_timeout_ms: 3_000,
            rollback_window_ms: 10_000,
            rollback_failures: 3,
            max_wait_ms: 3_000,
            upgrade_timeout_ms: 30_000,
            upgrade_pause_max_ms: 5_000,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is used for messages and to
    /// resolve relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        config.validate(path, text)?;
        config.source = Source { path: path.to_owned(), text: text.to_owned() };
        Ok(config)
    }

    /// `file:line` of a dotted key (`server.tls.cert`), or just the file
    /// when the key is not in it; for messages.
    pub(crate) fn locate(&self, key: &str) -> String {
        match find_line(&self.source.text, key) {
            Some(line) => format!("{}:{line}", self.source.path.display()),
            None => self.source.path.display().to_string(),
        }
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: find_line(text, key),
            key: key.to_owned(),
            problem,
        };
        let w = &self.workers;
        if w.command.is_empty() || w.command[0].is_empty() {
            return Err(invalid("workers.command", "must name a program, e.g. [\"target/release/echo\"]".into()));
        }
        if !(1..=WORKERS_MAX).contains(&w.count) {
            return Err(invalid("workers.count", format!("is {}; it must be between 1 and {WORKERS_MAX}", w.count)));
        }
        if !(1..=WORKER_THREADS_MAX).contains(&w.threads) {
            let problem = format!("is {}; it must be between 1 and {WORKER_THREADS_MAX}", w.threads);
            return Err(invalid("workers.threads", problem));
        }
        if w.heartbeat_ms != 0 && !(HEARTBEAT_MS_MIN..=HEARTBEAT_MS_MAX).contains(&w.heartbeat_ms) {
            return Err(invalid(
                "workers.heartbeat_ms",
                format!(
                    "is {}; it must be 0 (off) or between {HEARTBEAT_MS_MIN} and {HEARTBEAT_MS_MAX}",
                    w.heartbeat_ms
                ),
            ));
        }
        if w.heartbeat_ms > 0 && w.unresponsive_ms <= w.heartbeat_ms {
            return Err(invalid(
                "workers.unresponsive_ms",
                format!("is {}; it must exceed workers.heartbeat_ms ({})", w.unresponsive_ms, w.heartbeat_ms),
            ));
        }
        if w.task_unresponsive_ms > 0 && (w.heartbeat_ms == 0 || w.task_unresponsive_ms <= w.heartbeat_ms) {
            return Err(invalid(
                "workers.task_unresponsive_ms",
                format!(
                    "is {}; it needs heartbeats (workers.heartbeat_ms > 0) and must exceed workers.heartbeat_ms ({})",
                    w.task_unresponsive_ms, w.heartbeat_ms
                ),
            ));
        }
        if w.task_count > WORKERS_MAX {
            return Err(invalid(
                "workers.task_count",
                format!("is {}; it must be at most {WORKERS_MAX}", w.task_count),
            ));
        }
        if w.task_queue_max == 0 {
            return Err(invalid("workers.task_queue_max", "must be at least 1".into()));
        }
        if w.max_concurrency == 0 {
            return Err(invalid("workers.max_concurrency", "must be at least 1".into()));
        }
        if w.start_idle_ms > START_IDLE_MS_MAX {
            return Err(invalid(
                "workers.start_idle_ms",
                format!("is {}; it must be at most {START_IDLE_MS_MAX}", w.start_idle_ms),
            ));
        }
        if w.crash_loop_count == 0 {
            return Err(invalid("workers.crash_loop_count", "must be at least 1".into()));
        }
        let s = &self.server;
        if s.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1".into()));
        }
        if let Some(dir) = &s.static_dir
            && !self.base_dir.join(dir).is_dir()
        {
            let problem = format!("names {}, which is not a directory", self.base_dir.join(dir).display());
            return Err(invalid("server.static_dir", problem));
        }
        if !s.static_files.is_empty() && s.static_dir.is_none() {
            return Err(invalid("server.static_files", "needs server.static_dir".into()));
        }
        if s.static_files.len() > STATIC_FILES_MAX {
            let problem = format!("has {} entries, at most {STATIC_FILES_MAX}", s.static_files.len());
            return Err(invalid("server.static_files", problem));
        }
        for (path, file) in &s.static_files {
            let plain = path.starts_with('/')
                && !path.contains(['?', '#', '%', '\\'])
                && !path.split('/').any(|part| part == ".." || part == ".");
            if !plain {
                let problem =
                    format!("has the URL path {path:?}: it must start with / and have no ?, #, %, \\, . or ..");
                return Err(invalid("server.static_files", problem));
            }
            if !self.base_dir.join(file).is_file() {
                let problem = format!("maps {path} to {}, which is not a file", self.base_dir.join(file).display());
                return Err(invalid("server.static_files", problem));
            }
        }
        if let Some(origins) = &s.allowed_origins {
            for origin in origins {
                if let Err(problem) = crate::net::admit::OriginPattern::parse(origin) {
                    return Err(invalid("server.allowed_origins", format!("has {problem}")));
                }
            }
        }
        if s.handshake_timeout_ms == 0 {
            return Err(invalid("server.handshake_timeout_ms", "must be at least 1".into()));
        }
        if s.threads > SERVER_THREADS_MAX {
            let problem = format!("is {}; it must be between 0 (one per core) and {SERVER_THREADS_MAX}", s.threads);
            return Err(invalid("server.threads", problem));
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_message_bytes > MESSAGE_BYTES_CEILING {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("is {}; it must be between 1 and {MESSAGE_BYTES_CEILING}", l.max_message_bytes),
            ));
        }
        if l.output_buffer_bytes < OUTPUT_BUFFER_BYTES_MIN {
            // How it relates to max_message_bytes: it bounds what waits behind
            // a client that does not read, not one message, so it may be
            // smaller than max_message_bytes.
            let problem = format!(
                "is {}; it must be at least {OUTPUT_BUFFER_BYTES_MIN} (it bounds output waiting behind a client that does not read; one message larger than it is still sent when nothing waits ahead of it)",
                l.output_buffer_bytes
            );
            return Err(invalid("limits.output_buffer_bytes", problem));
        }
        if l.max_inflight_per_conn == 0 {
            return Err(invalid("limits.max_inflight_per_conn", "must be at least 1".into()));
        }
        if !(REQUEST_HEAD_BYTES_MIN..=REQUEST_HEAD_BYTES_MAX).contains(&l.max_request_head_bytes) {
            let problem = format!(
                "is {}; it must be between {REQUEST_HEAD_BYTES_MIN} and {REQUEST_HEAD_BYTES_MAX}",
                l.max_request_head_bytes
            );
            return Err(invalid("limits.max_request_head_bytes", problem));
        }
        if !(READ_BUFFER_BYTES_MIN..=READ_BUFFER_BYTES_MAX).contains(&l.read_buffer_bytes) {
            let problem = format!(
                "is {}; it must be between {READ_BUFFER_BYTES_MIN} and {READ_BUFFER_BYTES_MAX}",
                l.read_buffer_bytes
            );
            return Err(invalid("limits.read_buffer_bytes", problem));
        }
        if self.reload.upgrade_timeout_ms == 0 {
            return Err(invalid("reload.upgrade_timeout_ms", "must be at least 1".into()));
        }
        if self.reload.upgrade_pause_max_ms == 0 {
            return Err(invalid("reload.upgrade_pause_max_ms", "must be at least 1".into()));
        }
        if self.reload.ready_timeout_ms == 0 {
            return Err(invalid("reload.ready_timeout_ms", "must be at least 1".into()));
        }
        if self.reload.handoff_timeout_ms == 0 {
            return Err(invalid("reload.handoff_timeout_ms", "must be at least 1".into()));
        }
        if self.tables.len() > hotsock_table::FILES_MAX {
            let problem =
                format!("declares {} tables; at most {} are allowed", self.tables.len(), hotsock_table::FILES_MAX);
            return Err(invalid("tables", problem));
        }
        for (name, table) in &self.tables {
            if !(1..=hotsock_table::ROWS_MAX).contains(&table.rows) {
                let problem = format!("is {}; it must be between 1 and {}", table.rows, hotsock_table::ROWS_MAX);
                return Err(invalid(&format!("tables.{name}.rows"), problem));
            }
            if table.columns.is_empty() {
                return Err(invalid(&format!("tables.{name}.columns"), "must declare at least one column".into()));
            }
            if let Err(problem) = table.schema() {
                return Err(invalid(&format!("tables.{name}.columns"), problem));
            }
            if table.scope == TableScope::Cluster && self.cluster.is_none() {
                return Err(invalid(
                    &format!("tables.{name}.scope"),
                    "is \"cluster\", which needs a [cluster] section".into(),
                ));
            }
        }
        let c = &self.channels;
        for (key, value) in [
            ("channels.max_channels", c.max_channels),
            ("channels.max_members", c.max_members),
            ("channels.max_channels_per_conn", c.max_channels_per_conn),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if c.history_size > CHANNEL_HISTORY_MAX {
            let problem = format!("is {}; it must be at most {CHANNEL_HISTORY_MAX}", c.history_size);
            return Err(invalid("channels.history_size", problem));
        }
        if c.history_size > 0 && c.history_ttl_ms == 0 {
            return Err(invalid("channels.history_ttl_ms", "must be at least 1 when channels.history_size > 0".into()));
        }
        if let Some(cluster) = &self.cluster
            && let Err((key, problem)) = cluster.validate()
        {
            return Err(invalid(key, problem));
        }
        if let Some(watch) = &self.reload.watch {
            if watch.paths.is_empty() {
                return Err(invalid("reload.watch.paths", "must name at least one directory to watch".into()));
            }
            for path in &watch.paths {
                let full = self.base_dir.join(path);
                if !full.is_dir() {
                    let problem = format!("names {}, which is not a directory", full.display());
                    return Err(invalid("reload.watch.paths", problem));
                }
            }
            for pattern in &watch.ignore {
                if let Err(error) = globset::Glob::new(pattern) {
                    return Err(invalid("reload.watch.ignore", format!("has a bad glob {pattern:?}: {error}")));
                }
            }
            if watch.debounce_ms < WATCH_MS_MIN {
                return Err(invalid("reload.watch.debounce_ms", format!("must be at least {WATCH_MS_MIN}")));
            }
            if watch.poll_interval_ms < WATCH_MS_MIN {
                return Err(invalid("reload.watch.poll_interval_ms", format!("must be at least {WATCH_MS_MIN}")));
            }
            if watch.build_timeout_ms == 0 {
                return Err(invalid("reload.watch.build_timeout_ms", "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// How long a graceful stop may take, phase by phase; the server waits
    /// this long and tells `hotsock stop` the total, so nobody computes it
    /// twice.
    pub fn stop_budget(&self) -> StopBudget {
        StopBudget::of(self)
    }

    /// `server.allowed_origins`, parsed (validation checked each).
    pub(crate) fn origin_patterns(&self) -> Option<Vec<crate::net::admit::OriginPattern>> {
        let origins = self.server.allowed_origins.as_ref()?;
        Some(origins.iter().filter_map(|o| crate::net::admit::OriginPattern::parse(o).ok()).collect())
    }

    /// `log.file`, resolved against the config file's directory.
    pub fn log_file(&self) -> Option<PathBuf> {
        self.log.file.as_ref().map(|file| self.base_dir.join(file))
    }

    /// The run directory, resolved against the config file's directory.
    pub fn run_dir(&self) -> PathBuf {
        self.base_dir.join(&self.server.run_dir)
    }

    /// The worker program, resolved: a path with a `/` is relative to the
    /// config file's directory; a bare name is looked up in `PATH`.
    pub fn worker_program(&self) -> PathBuf {
        let program = Path::new(&self.workers.command[0]);
        if program.is_absolute() || !self.workers.command[0].contains('/') {
            program.to_owned()
        } else {
            self.base_dir.join(program)
        }
    }
}

/// The phases of a graceful stop and how long each may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopBudget {
    /// Clients answer the 1001 close: `server.close_timeout_ms` plus the
    /// margin of one close round.
    pub close: Duration,
    /// Workers acknowledge every event: `server.stop_timeout_ms`.
    pub acks: Duration,
    /// Workers drain: `reload.max_wait_ms`, then SIGKILL.
    pub drain: Duration,
    /// Killed workers are reaped.
    pub reap: Duration,
}

/// Time beyond the drain deadline for killed workers to be reaped.
const STOP_REAP: Duration = Duration::from_secs(3);
/// Time beyond `server.close_timeout_ms` for the last close round.
const STOP_CLOSE_MARGIN: Duration = Duration::from_secs(1);

impl StopBudget {
    /// The budget `config` sets.
    pub fn of(config: &Config) -> StopBudget {
        StopBudget {
            close: Duration::from_millis(config.server.close_timeout_ms) + STOP_CLOSE_MARGIN,
            acks: Duration::from_millis(config.server.stop_timeout_ms),
            drain: Duration::from_millis(config.reload.max_wait_ms),
            reap: STOP_REAP,
        }
    }

    /// The longest a stop takes from request to exit.
    pub fn total(&self) -> Duration {
        self.close + self.acks + self.drain + self.reap
    }
}

/// Finds the line (1-based) of `section.key = ...` in the raw text, so a
/// validation error can point at it. Good enough for the flat files hotsock
/// uses; `None` when the key is absent (its default was rejected).
fn find_line(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.')?;
    let mut in_section = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_section = trimmed.trim_matches(|c| c == '[' || c == ']').trim() == section;
        } else if in_section {
            let name = trimmed.split('=').next().unwrap_or("").trim();
            if name == key {
                return Some(index + 1);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("dir/hotsock.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse("[workers]\ncommand = [\"w\"]\n").expect("valid");
        assert_eq!(config.workers.count, 2);
        assert_eq!(config.workers.dispatch, DispatchMode::Fd);
        assert_eq!(config.run_dir(), PathBuf::from("dir/run"));
        assert_eq!(config.worker_program(), PathBuf::from("w"));
    }

    #[test]
    fn typo_names_the_key_and_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n[workers]\ncommand = [\"w\"]\n")
            .expect_err("typo")
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn static_files_need_a_plain_path_an_existing_file_and_static_dir() {
        let dir = std::env::temp_dir().join(format!("hotsock-static-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("www")).expect("mkdir");
        std::fs::write(dir.join("client.js"), "").expect("write");
        let config = |server: &str| {
            Config::parse(&dir.join("hotsock.toml"), &format!("[server]\n{server}\n[workers]\ncommand = [\"w\"]\n"))
        };
        let ok = config("static_dir = \"www\"\nstatic_files = { \"/client.js\" = \"client.js\" }").expect("valid");
        assert_eq!(ok.server.static_files.get("/client.js"), Some(&PathBuf::from("client.js")));
        for (server, problem) in [
            ("static_files = { \"/client.js\" = \"client.js\" }", "needs server.static_dir"),
            ("static_dir = \"www\"\nstatic_files = { \"client.js\" = \"client.js\" }", "must start with /"),
            ("static_dir = \"www\"\nstatic_files = { \"/a/../b.js\" = \"client.js\" }", "must start with /"),
            ("static_dir = \"www\"\nstatic_files = { \"/x.js?v\" = \"client.js\" }", "must start with /"),
            ("static_dir = \"www\"\nstatic_files = { \"/x.js\" = \"missing.js\" }", "which is not a file"),
            ("static_dir = \"www\"\nstatic_files = { \"/x.js\" = \"www\" }", "which is not a file"),
        ] {
            let err = config(server).expect_err(server).to_string();
            let line = 2 + server.matches('\n').count();
            assert!(
                err.contains(&format!(":{line}: `server.static_files`")) && err.contains(problem),
                "{server}: {err}"
            );
        }
        let many: Vec<String> = (0..=STATIC_FILES_MAX).map(|n| format!("\"/{n}.js\" = \"client.js\"")).collect();
        let err =
            config(&format!("static_dir = \"www\"\nstatic_files = {{ {} }}", many.join(", "))).expect_err("too many");
        assert!(err.to_string().contains(&format!("at most {STATIC_FILES_MAX}")), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn bad_value_names_the_key_and_line() {
        let err = parse("[workers]\ncommand = [\"./w\"]\ncount = 0\n").expect_err("zero").to_string();
        assert!(err.contains("dir/hotsock.toml:3: `workers.count` is 0"), "{err}");
    }

    #[test]
    fn unresponsive_ms_must_exceed_heartbeat_ms() {
        let config = parse("[workers]\ncommand = [\"w\"]\n").expect("valid");
        assert_eq!((config.workers.heartbeat_ms, config.workers.unresponsive_ms), (1000, 10_000));
        let err = parse("[workers]\ncommand = [\"w\"]\nheartbeat_ms = 500\nunresponsive_ms = 500\n")
            .expect_err("not above")
            .to_string();
        assert!(err.contains("dir/hotsock.toml:4: `workers.unresponsive_ms` is 500"), "{err}");
        // Heartbeats off: unresponsive_ms is not checked.
        parse("[workers]\ncommand = [\"w\"]\nheartbeat_ms = 0\nunresponsive_ms = 0\n").expect("off");
        let err = parse("[workers]\ncommand = [\"w\"]\nheartbeat_ms = 5\n").expect_err("too often").to_string();
        assert!(err.contains(":3: `workers.heartbeat_ms` is 5; it must be 0 (off) or between 10 and 60000"), "{err}");
        // Task workers: off by default; when asked for, heartbeats must run.
        assert_eq!(config.workers.task_unresponsive_ms, 0);
        let err = parse("[workers]\ncommand = [\"w\"]\nheartbeat_ms = 0\ntask_unresponsive_ms = 5000\n")
            .expect_err("no heartbeats")
            .to_string();
        assert!(err.contains(":4: `workers.task_unresponsive_ms` is 5000; it needs heartbeats"), "{err}");
    }

    /// Parses `config(value)` for each `(value, accepted)` case: an
    /// accepted value reads back through `read`, a refused one is an
    /// error naming `key` on `line`.
    fn check_bounds(
        key: &str,
        line: usize,
        config: impl Fn(usize) -> String,
        read: impl Fn(&Config) -> usize,
        cases: &[(usize, bool)],
    ) {
        for &(value, accepted) in cases {
            match parse(&config(value)) {
                Ok(parsed) => assert!(accepted && read(&parsed) == value, "{key} = {value} was accepted"),
                Err(err) => {
                    let err = err.to_string();
                    let named = format!("dir/hotsock.toml:{line}: `{key}` is {value}");
                    assert!(!accepted && err.contains(&named), "{key} = {value}: {err}");
                }
            }
        }
    }

    /// docs/operations.md's table of bounds, read row by row: every key
    /// whose bound is a plain range ("A to B", "at least N", "at most N")
    /// is parsed at and past each end, so the table cannot drift from the
    /// checks. Rows with conditions ("more than `heartbeat_ms`") are read by
    /// people only.
    #[test]
    fn the_bounds_table_in_operations_md_is_what_the_check_enforces() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md"))
            .expect("docs/operations.md");
        let section = doc.split("### Bounds the config check enforces").nth(1).expect("the bounds section");
        let rows = section.lines().skip_while(|l| !l.starts_with("| key")).skip(2).take_while(|l| l.starts_with('|'));
        let mut checked = Vec::new();
        for row in rows {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").map(str::trim).collect();
            let [keys, accepted] = cells[..] else { panic!("a row of two cells: {row}") };
            let Some((low, high)) = documented_bounds(accepted) else { continue };
            for key in documented_keys(keys) {
                let Some(config) = config_setting(&key) else { continue };
                let mut cases = vec![(low, true)];
                if low > 0 {
                    cases.push((low - 1, false));
                }
                if let Some(high) = high {
                    cases.extend([(high, true), (high + 1, false)]);
                }
                for (value, accepted) in cases {
                    match parse(&config(value)) {
                        Ok(_) => assert!(accepted, "{key} = {value} was accepted; the table says {row}"),
                        Err(err) => {
                            let err = err.to_string();
                            assert!(!accepted, "{key} = {value} was refused ({err}); the table says {row}");
                            assert!(err.contains(&format!("`{key}`")), "{key} = {value}: the refusal names it: {err}");
                        }
                    }
                }
                checked.push(key);
            }
        }
        assert!(checked.len() >= 23, "most rows are plain ranges; checked only {checked:?}");
    }

    /// "A to B", "at least N" or "at most N" (parentheses and code spans
    /// dropped; sizes in KiB or MiB), as (low, high); else None.
    fn documented_bounds(cell: &str) -> Option<(u64, Option<u64>)> {
        let mut plain = String::new();
        let mut depth = 0;
        for c in cell.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        if plain.contains('`') {
            return None;
        }
        let plain = plain.split_whitespace().collect::<Vec<_>>().join(" ");
        let number = |text: &str| -> Option<u64> {
            let (digits, unit) = match text.split_once(' ') {
                Some((digits, "KiB")) => (digits, 1 << 10),
                Some((digits, "MiB")) => (digits, 1 << 20),
                Some(_) => return None,
                None => (text, 1),
            };
            digits.replace(',', "").parse::<u64>().ok().map(|n| n * unit)
        };
        if let Some(n) = plain.strip_prefix("at least ") {
            return Some((number(n)?, None));
        }
        if let Some(n) = plain.strip_prefix("at most ") {
            return Some((0, Some(number(n)?)));
        }
        let (low, high) = plain.split_once(" to ")?;
        Some((number(low)?, Some(number(high)?)))
    }

    /// "`workers.a`, `b`, `server.c`" as workers.a, workers.b, server.c.
    fn documented_keys(cell: &str) -> Vec<String> {
        let mut section = String::new();
        let mut keys = Vec::new();
        for key in cell.split(", ").map(|k| k.trim_matches('`')) {
            match key.rsplit_once('.') {
                Some((prefix, _)) => {
                    section = prefix.to_owned();
                    keys.push(key.to_owned());
                }
                None => keys.push(format!("{section}.{key}")),
            }
        }
        keys
    }

    /// A minimal config setting `key` to a value; None where one key alone
    /// does not make a config (a table's NAME, a watched directory).
    fn config_setting(key: &str) -> Option<impl Fn(u64) -> String + use<>> {
        let (section, name) = key.rsplit_once('.')?;
        let extra = match section {
            "workers" => None,
            "server" | "limits" | "channels" | "reload" => Some(""),
            "cluster" => Some("redis = \"redis://127.0.0.1:6379/0\"\n"),
            _ => return None,
        };
        let (section, name) = (section.to_owned(), name.to_owned());
        Some(move |value: u64| match extra {
            None => format!("[workers]\ncommand = [\"w\"]\n{name} = {value}\n"),
            Some(extra) => format!("[workers]\ncommand = [\"w\"]\n[{section}]\n{extra}{name} = {value}\n"),
        })
    }

    #[test]
    fn server_threads_default_to_tokios_and_are_bounded() {
        let config = parse("[workers]\ncommand = [\"w\"]\n").expect("valid");
        assert_eq!(config.server.threads, 0);
        check_bounds(
            "server.threads",
            2,
            |value| format!("[server]\nthreads = {value}\n[workers]\ncommand = [\"w\"]\n"),
            |config| config.server.threads,
            &[(0, true), (1, true), (256, true), (257, false)],
        );
    }

    #[test]
    fn worker_threads_default_to_one_and_are_bounded() {
        let config = parse("[workers]\ncommand = [\"w\"]\n").expect("valid");
        assert_eq!(config.workers.threads, 1);
        check_bounds(
            "workers.threads",
            3,
            |value| format!("[workers]\ncommand = [\"w\"]\nthreads = {value}\n"),
            |config| config.workers.threads,
            &[(1, true), (64, true), (0, false), (65, false)],
        );
    }

    #[test]
    fn unknown_dispatch_mode_is_named() {
        let err = parse("[workers]\ncommand = [\"w\"]\ndispatch = \"random\"\n").expect_err("bad").to_string();
        assert!(err.contains("random") && err.contains("line 3"), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::parse;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text gets a config or an error, never a panic.
            #[test]
            fn any_text_gets_an_answer(text in "(\\PC|\n|\\[|\\]|=|\"){0,200}") {
                let _ = parse(&text);
            }

            /// A misspelt key anywhere in a valid file is named, with the
            /// line it is on.
            #[test]
            fn an_unknown_key_is_named_with_its_line(
                section in 0usize..3,
                key in "[a-z]{3,10}_x",
                blank_lines in 0usize..4,
            ) {
                let sections = [
                    "[server]\nlisten = \"127.0.0.1:1\"\n",
                    "[workers]\ncommand = [\"w\"]\ncount = 1\n",
                    "[limits]\nmax_message_bytes = 1024\n",
                ];
                let mut text = String::new();
                let mut line = 0;
                for (index, body) in sections.iter().enumerate() {
                    text.push_str(&"\n".repeat(blank_lines));
                    text.push_str(body);
                    if index == section {
                        line = text.lines().count() + 1;
                        text.push_str(&format!("{key} = 1\n"));
                    }
                }
                let err = parse(&text).expect_err("unknown key").to_string();
                prop_assert!(err.contains(&key), "{}", err);
                let at_line = format!("line {line}");
                let colon_line = format!(":{line}:");
                prop_assert!(err.contains(&at_line) || err.contains(&colon_line), "{} (expected line {})", err, line);
            }
        }
    }
}
