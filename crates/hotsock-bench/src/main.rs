//! `hotsock-bench`: load scenarios against the real `hotsock` binary, each
//! measured side by side with a baseline in the same invocation, because the
//! machines are shared and noisy: only ratios mean something.
//!
//! `echo`: N connections ping-pong fixed-size text messages for a fixed
//! time, through hotsock (server + echo worker processes) and through an
//! in-process echo server built on the same WebSocket library and settings
//! with no worker hop (the ceiling of hotsock's design). Then both hold idle
//! connections to measure server memory per connection. Writes
//! `BENCHMARKS.md`. All traffic is to 127.0.0.1; every phase is bounded in
//! time and stops by itself.

mod baseline;
mod chart;
mod cluster;
mod echo;
mod edit;
mod fanout;
mod floor;
mod idle;
mod load;
mod matchmaker;
mod matchmaker_pool;
mod pin;
mod procfs;
mod reload;
mod report;
mod table;
mod tasks;
mod upgrade;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hotsock-bench", about = "Benchmarks for hotsock, each against a baseline in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Ping-pong through hotsock, the in-process ceiling and the Node.js ws
    /// peer, at several connection counts.
    Echo {
        /// Concurrent connections (comma-separated; one run per count).
        #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1000])]
        connections: Vec<usize>,
        /// Seconds of measured load per run (after a 0.5 s warm-up).
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Rounds in which the targets take turns; figures are the median.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Each server (with its workers) on core 0, this load generator on
        /// core 1 (`pin.rs`); written to its own section.
        #[arg(long)]
        pin: bool,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Reload soak: numbered messages while the server reloads; counts
    /// lost/duplicated/reordered/dropped, reload duration, p99 inside vs
    /// outside reload windows.
    Reload {
        /// Concurrent connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Event worker processes.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Reloads during the run.
        #[arg(long, default_value_t = 10)]
        reloads: usize,
        /// Milliseconds between two messages of one connection.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Length of the run in seconds.
        #[arg(long, default_value_t = 12)]
        seconds: u64,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Binary upgrade under load: idle and active connections while the
    /// server process is replaced; upgrade time, the pause the server
    /// measured and the one active clients saw, against a quiet window.
    Upgrade {
        /// Idle connections held through the upgrades.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Connections sending a numbered message every `interval-ms`.
        #[arg(long, default_value_t = 100)]
        active: usize,
        /// Upgrades, alternating between the binary and a stamped copy.
        #[arg(long, default_value_t = 3)]
        upgrades: usize,
        /// Milliseconds between two messages of one active connection.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Edit-to-live latency of the watch-and-build loop: detection, build,
    /// switch.
    Edit {
        /// Edits to measure.
        #[arg(long, default_value_t = 5)]
        edits: usize,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Shared-table operations per second from 1 and 4 processes, against a
    /// Mutex<HashMap> in one process.
    Table {
        /// Operations per process and per kind.
        #[arg(long, default_value_t = 2_000_000)]
        ops: usize,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// One publisher fanning out to channel members: hotsock channels vs the
    /// Node.js ws broadcast loop vs Socket.IO rooms, same rate, same run.
    Fanout {
        /// Layouts `CHANNELSxMEMBERS@PUBS_PER_S`, comma-separated.
        #[arg(long, value_delimiter = ',', default_values_t = ["1x10000@4".to_owned(), "100x100@400".to_owned()])]
        layouts: Vec<String>,
        /// Seconds of publishing per target and layout.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Publication size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Cluster mode: `send_to_uid` round trips and channel fan-out across
    /// 2 nodes on a redis-server of its own vs one node without
    /// `[cluster]`, memory per connection and Redis commands per operation.
    Cluster {
        /// Pairs of connections ping-ponging through `send_to_uid`
        /// (comma-separated; one set of cases per count, at most 50000).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 10])]
        pairs: Vec<usize>,
        /// Members of the fan-out channel (split evenly over the 2 nodes).
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Publications per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds per case and round.
        #[arg(long, default_value_t = 1)]
        seconds: u64,
        /// Rounds in which the cases take turns.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Padding bytes in each message.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Idle uid-bound connections for the memory figure.
        #[arg(long, default_value_t = 2000)]
        idle: usize,
        /// Microseconds added to every round trip between a node and Redis
        /// (a relay in front of it: a Redis on another host); at most
        /// 100000, 0 for none.
        #[arg(long, default_value_t = 0)]
        redis_rtt_us: u64,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Task round-trip latency through the tasks example, next to a plain
    /// request in the same run.
    Tasks {
        /// Concurrent connections.
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// Seconds per kind of request and round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Rounds in which the two kinds take turns.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Many messages in flight per connection (batched writes at work),
    /// against the ceiling and the Node.js ws peer.
    Pipelined {
        /// Concurrent connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 32)]
        depth: usize,
        /// Seconds measured per target.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Each server (with its workers) on core 0, this load generator on
        /// core 1 (`pin.rs`); written to its own section.
        #[arg(long)]
        pin: bool,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Every scenario but `cluster` and the `--pin` runs, one after the
    /// other, into one report.
    All {
        /// Shorter runs (about 2.5 minutes) for local checks.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Server memory per idle connection at several counts, hotsock and the
    /// Node.js ws peer.
    Idle {
        /// Connection counts (comma-separated, ascending, at most 19000).
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000, 15000])]
        counts: Vec<usize>,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// The matchmaker under simulated players, without and with reloads.
    Matchmaker {
        /// Players per run.
        #[arg(long, default_value_t = 2000)]
        players: usize,
        /// Arrivals per second.
        #[arg(long, default_value_t = 400)]
        rate: u64,
        /// Seconds between reloads in the second run.
        #[arg(long, default_value_t = 1)]
        reload_every: u64,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// Pairing as the pool grows: N players of one gender waiting, then N
    /// of the other arriving, for each N.
    MatchmakerPool {
        /// Waiting players per run (comma-separated); each needs an open
        /// connection, so at most `ulimit -n` minus a few hundred.
        #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 18000])]
        waiting: Vec<usize>,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
    },
    /// (internal) One process of the 4-process table runs.
    TableChild {
        /// get, set or incr.
        op: String,
        /// How many.
        ops: usize,
    },
    /// (internal) Run the baseline echo server on 127.0.0.1:PORT.
    BaselineServer {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
    },
    /// (internal) Run the fan-out floor (one thread, one write per member)
    /// on 127.0.0.1:PORT.
    FloorServer {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
    },
}

fn main() -> Result<()> {
    let command = Cli::parse().command;
    // Before any runtime or thread starts, so that all of them inherit it.
    if matches!(command, Scenario::Echo { pin: true, .. } | Scenario::Pipelined { pin: true, .. }) {
        pin::enable()?;
    }
    match command {
        Scenario::BaselineServer { port } => baseline::serve(port),
        Scenario::FloorServer { port } => floor::serve(port),
        Scenario::Edit { edits, out } => edit::run(edits, &out),
        Scenario::Table { ops, out } => table::run(ops, &out),
        Scenario::Idle { counts, out } => idle::run(&counts, &out),
        Scenario::All { quick, out } => all(quick, &out),
        Scenario::Pipelined { connections, depth, seconds, pin: _, out } => {
            echo::pipelined(connections, depth, seconds, &out)
        }
        Scenario::Matchmaker { players, rate, reload_every, out } => {
            matchmaker::run(&matchmaker::Params { players, rate, reload_every_s: reload_every }, &out)
        }
        Scenario::MatchmakerPool { waiting, out } => matchmaker_pool::run(&matchmaker_pool::Params { waiting }, &out),
        Scenario::Tasks { connections, seconds, rounds, out } => tasks::run(connections, seconds, rounds, &out),
        Scenario::Fanout { layouts, seconds, size, out } => {
            let layouts = layouts.iter().map(|l| parse_layout(l)).collect::<Result<Vec<_>>>()?;
            fanout::run(&fanout::Params { layouts, seconds, size }, &out)
        }
        Scenario::Cluster { pairs, members, rate, seconds, rounds, size, idle, redis_rtt_us, out } => {
            if redis_rtt_us > cluster::RTT_MAX_US {
                anyhow::bail!("--redis-rtt-us is {redis_rtt_us}; it must be at most {}", cluster::RTT_MAX_US);
            }
            let params =
                cluster::Params { pairs, members, rate, seconds, rounds: rounds.max(1), size, idle, redis_rtt_us };
            cluster::run(&params, &out)
        }
        Scenario::TableChild { op, ops } => table::child(&op, ops),
        Scenario::Reload { connections, workers, reloads, interval_ms, seconds, out } => {
            reload::run(&reload::Params { connections, workers, reloads, interval_ms, seconds }, &out)
        }
        Scenario::Upgrade { idle, active, upgrades, interval_ms, out } => {
            upgrade::run(&upgrade::Params { idle, active, upgrades, interval_ms: interval_ms.max(1) }, &out)
        }
        Scenario::Echo { connections, seconds, size, rounds, pin: _, out } => {
            echo::run(&echo::Params { connections, seconds, size, rounds: rounds.max(1) }, &out)
        }
    }
}

/// Runs every scenario; `quick` shortens each so the whole stays under two
/// minutes (the full run takes a few minutes on 2 cores).
fn all(quick: bool, out: &std::path::Path) -> Result<()> {
    let started = std::time::Instant::now();
    let scale = |full: u64, short: u64| if quick { short } else { full };
    echo::run(&echo::Params { connections: vec![10, 100, 1000], seconds: scale(3, 1), size: 64, rounds: 3 }, out)?;
    echo::pipelined(50, 32, scale(5, 2), out)?;
    let counts: Vec<usize> = if quick { vec![1000, 5000] } else { vec![1000, 5000, 15000] };
    idle::run(&counts, out)?;
    let reloads = reload::Params {
        connections: 50,
        workers: 4,
        reloads: scale(10, 4) as usize,
        interval_ms: 10,
        seconds: scale(12, 6),
    };
    reload::run(&reloads, out)?;
    let upgrades = upgrade::Params {
        idle: scale(10_000, 2000) as usize,
        active: 100,
        upgrades: scale(3, 2) as usize,
        interval_ms: 10,
    };
    upgrade::run(&upgrades, out)?;
    tasks::run(20, scale(3, 1), scale(3, 2) as usize, out)?;
    let layouts = if quick { ["1x2000@4", "20x50@100"] } else { ["1x10000@4", "100x100@400"] };
    let layouts = layouts.iter().map(|l| parse_layout(l)).collect::<Result<Vec<_>>>()?;
    fanout::run(&fanout::Params { layouts, seconds: scale(8, 2), size: 64 }, out)?;
    table::run(scale(2_000_000, 300_000) as usize, out)?;
    matchmaker::run(&matchmaker::Params { players: scale(2000, 600) as usize, rate: 400, reload_every_s: 1 }, out)?;
    let waiting = if quick { vec![1000, 5000] } else { vec![1000, 10_000, 18_000] };
    matchmaker_pool::run(&matchmaker_pool::Params { waiting }, out)?;
    edit::run(scale(5, 2) as usize, out)?;
    eprintln!("== all scenarios done in {:?}", started.elapsed());
    Ok(())
}

/// A server process under test, killed on drop.
struct Target {
    name: &'static str,
    /// A short name for chart legends.
    label: &'static str,
    child: Child,
    port: u16,
    /// Extra processes whose CPU and memory count as the server's (workers).
    _dir: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self._dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Target {
    /// The server pid plus its workers' pids.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(procfs::children(self.child.id()));
        pids
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join(name);
    if !path.exists() {
        bail!("{} not found; build it: cargo build --release -p hotsock -p echo", path.display());
    }
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes `config` (with `listen` on a free port put first) into `dir` and
/// starts `hotsock start` on it, with `env` added; returns once it listens.
pub(crate) fn spawn_hotsock(
    name: &'static str,
    dir: PathBuf,
    config: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Target> {
    let port = free_port()?;
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("hotsock.toml");
    std::fs::write(&path, format!("[server]\nlisten = \"127.0.0.1:{port}\"\n{config}"))?;
    let mut command = pin::command(sibling("hotsock")?);
    command.args(["start", "-c"]).arg(&path).env("HOTSOCK_LOG", "warn").stdout(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let target = Target { name, label: "hotsock", child: command.spawn()?, port, _dir: Some(dir) };
    load::wait_listening(port)?;
    Ok(target)
}

/// Echo worker processes in the echo, pipelined and idle scenarios. One:
/// on a 2-core machine shared with the load generator, a second worker
/// process only adds context switches (measured 5-15% lower throughput),
/// and the peer is one process too.
const ECHO_WORKERS: usize = 1;

pub(crate) fn start_hotsock() -> Result<Target> {
    let dir = std::env::temp_dir().join(format!("hotsock-bench-{}", std::process::id()));
    let config = format!(
        "max_connections = 20000\n[workers]\ncommand = [\"{}\"]\ncount = {ECHO_WORKERS}\n",
        sibling("echo")?.display()
    );
    spawn_hotsock("hotsock (server + 1 echo worker)", dir, &config, &[])
}

/// The same echo behaviour from a PHP worker (examples/echo-php on
/// sdk/php), one worker process like the Rust target.
pub(crate) fn start_hotsock_php() -> Result<Target> {
    let dir = std::env::temp_dir().join(format!("hotsock-bench-php-{}", std::process::id()));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/echo-php/worker.php");
    let script = script.canonicalize().with_context(|| format!("{} (the PHP echo worker)", script.display()))?;
    if Command::new("php").arg("--version").stdout(Stdio::null()).status().map(|s| !s.success()).unwrap_or(true) {
        bail!("php is not installed: apt-get install php8.2-cli (bash .ci/run does)");
    }
    let config = format!(
        "max_connections = 20000\n[workers]\ncommand = [\"php\", \"{}\"]\ncount = {ECHO_WORKERS}\n",
        script.display()
    );
    let mut target = spawn_hotsock("hotsock (server + 1 PHP echo worker)", dir, &config, &[])?;
    target.label = "hotsock PHP";
    Ok(target)
}

pub(crate) fn start_baseline() -> Result<Target> {
    start_own_server("baseline-server", "in-process echo (same library, no workers)", "ceiling")
}

/// Runs this executable's internal server `subcommand` on a free port.
pub(crate) fn start_own_server(subcommand: &str, name: &'static str, label: &'static str) -> Result<Target> {
    let port = free_port()?;
    let child = pin::command(std::env::current_exe()?)
        .args([subcommand, "--port", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()?;
    let target = Target { name, label, child, port, _dir: None };
    load::wait_listening(port)?;
    Ok(target)
}

/// `CHANNELSxMEMBERS@RATE`, e.g. `1x10000@10`.
fn parse_layout(text: &str) -> Result<fanout::Layout> {
    let parse = || {
        let (shape, rate) = text.split_once('@')?;
        let (channels, members) = shape.split_once('x')?;
        Some(fanout::Layout {
            channels: channels.parse().ok().filter(|n| *n > 0)?,
            members_per_channel: members.parse().ok().filter(|n| *n > 0)?,
            rate: rate.parse().ok().filter(|n| *n > 0)?,
        })
    };
    parse().with_context(|| format!("layout {text:?}: expected CHANNELSxMEMBERS@PUBS_PER_S, e.g. 1x10000@10"))
}

/// tests/node: the Node.js peers and their `node_modules`.
pub(crate) fn node_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// The peer: Node.js `ws` (tests/node/echo_server.js), installed with
/// `npm ci` if needed.
pub(crate) fn start_node_peer() -> Result<Target> {
    start_node_script("echo_server.js", "Node.js ws (peer)", "Node.js ws")
}

/// Starts `node tests/node/SCRIPT PORT`, after `npm ci` if `ws` is missing.
pub(crate) fn start_node_script(script: &str, name: &'static str, label: &'static str) -> Result<Target> {
    let node_dir = node_dir();
    if !node_dir.join("node_modules/ws").exists() {
        eprintln!("== installing the Node ws peer (npm ci in tests/node)");
        let status = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&node_dir).status()?;
        if !status.success() {
            bail!("npm ci in {} failed", node_dir.display());
        }
    }
    let port = free_port()?;
    let child = pin::command("node")
        .arg(node_dir.join(script))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("starting node (is Node.js installed?)")?;
    let target = Target { name, label, child, port, _dir: None };
    load::wait_listening(port)?;
    Ok(target)
}
