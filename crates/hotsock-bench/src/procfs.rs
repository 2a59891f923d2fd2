//! Process facts from /proc: children, CPU time, resident memory, and the
//! CPU meter every load scenario reports (the load generator must not be
//! the bottleneck, so it is measured next to the server).

use std::collections::HashMap;
use std::time::Instant;

/// A thread of the load generator busier than this share of one core is
/// reported as having saturated it.
const SATURATED: f64 = 0.9;

/// Pids whose parent is `pid`.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            stat_fields(&format!("/proc/{candidate}/stat")).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// Fields after the command name in a stat file (field 3 onwards).
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
}

/// Sum of the stat fields at `indexes` (counted as in `stat_fields`).
fn ticks(path: &str, indexes: &[usize]) -> Option<u64> {
    let fields = stat_fields(path)?;
    indexes.iter().map(|i| fields.get(*i)?.parse::<u64>().ok()).sum()
}

/// utime and stime are fields 14 and 15 of stat; cutime and cstime (reaped
/// children) 16 and 17.
const OWN: [usize; 2] = [11, 12];
const OWN_AND_REAPED: [usize; 4] = [11, 12, 13, 14];

/// User + system CPU seconds used by these processes.
pub(crate) fn cpu_seconds(pids: &[u32]) -> f64 {
    let total: u64 = pids.iter().filter_map(|pid| ticks(&format!("/proc/{pid}/stat"), &OWN)).sum();
    total as f64 / ticks_per_second()
}

/// CPU seconds of a server and everything under it: its own time, the time
/// of children it has reaped (workers replaced during a reload), and that of
/// its live children.
fn tree_cpu_seconds(pid: u32) -> f64 {
    let own = ticks(&format!("/proc/{pid}/stat"), &OWN_AND_REAPED).unwrap_or(0);
    let live: u64 = children(pid).iter().filter_map(|c| ticks(&format!("/proc/{c}/stat"), &OWN)).sum();
    (own + live) as f64 / ticks_per_second()
}

/// CPU seconds of each thread of this process.
fn own_threads() -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else { return HashMap::new() };
    let per_second = ticks_per_second();
    entries
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            Some((tid, ticks(&format!("/proc/self/task/{tid}/stat"), &OWN)? as f64 / per_second))
        })
        .collect()
}

/// Resident memory of these processes, in KiB.
pub(crate) fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Measures, over a span, the CPU of a server process tree and of this load
/// generator (whole and per thread).
pub(crate) struct CpuMeter {
    server: u32,
    started: Instant,
    server0: f64,
    client0: f64,
    threads0: HashMap<u32, f64>,
}

/// What a `CpuMeter` saw, in cores (1.0 = one core busy for the span).
#[derive(Clone, Copy, Default, serde::Serialize)]
pub(crate) struct CpuUse {
    pub(crate) server_cores: f64,
    pub(crate) client_cores: f64,
    /// The busiest load-generator thread, in cores.
    pub(crate) client_busiest_thread: f64,
}

impl CpuMeter {
    /// Starts measuring `server` (and its workers) and this process.
    pub(crate) fn start(server: u32) -> Self {
        CpuMeter {
            server,
            started: Instant::now(),
            server0: tree_cpu_seconds(server),
            client0: cpu_seconds(&[std::process::id()]),
            threads0: own_threads(),
        }
    }

    pub(crate) fn stop(&self) -> CpuUse {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let busiest = own_threads()
            .iter()
            .map(|(tid, now)| now - self.threads0.get(tid).copied().unwrap_or(0.0))
            .fold(0.0, f64::max);
        CpuUse {
            server_cores: (tree_cpu_seconds(self.server) - self.server0) / wall,
            client_cores: (cpu_seconds(&[std::process::id()]) - self.client0) / wall,
            client_busiest_thread: busiest / wall,
        }
    }
}

impl CpuUse {
    /// Whether one load-generator thread kept a core (nearly) busy, or the
    /// load generator used (nearly) every core: then the figures may be the
    /// client's limit, not the server's.
    pub(crate) fn client_saturated(&self) -> bool {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        self.client_busiest_thread > SATURATED || self.client_cores > SATURATED * cores
    }

    /// Whether the load generator and the server together kept (nearly)
    /// every core busy: then throughput is bounded by CPU and compares CPU
    /// per message, with the load generator's share taken from every target.
    pub(crate) fn machine_saturated(&self) -> bool {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        self.client_cores + self.server_cores > SATURATED * cores
    }

    /// One markdown line for a report.
    pub(crate) fn markdown(&self, what: &str) -> String {
        let verdict = if self.client_saturated() {
            "**the load generator saturated a core: these figures may be its limit, not the server's**"
        } else {
            "the load generator did not saturate a core"
        };
        format!(
            "- CPU during {what}: server (including any worker processes) {:.2} cores, load generator {:.2} cores (busiest \
             thread {:.0}% of a core); {verdict}.\n",
            self.server_cores,
            self.client_cores,
            self.client_busiest_thread * 100.0,
        )
    }
}
