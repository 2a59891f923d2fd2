//! `upgrade`: `hotsock upgrade` as a measurement (issue 18). One hotsock
//! (release build, one echo worker) holds N idle connections and A active
//! ones, each active one sending a numbered message every `interval_ms`
//! and checking the echoes; meanwhile the server process is replaced K
//! times, alternating between the built binary and a copy stamped as
//! another build. Reports what the contract forbids (lost, duplicated,
//! reordered, closed: all must be 0), each upgrade's total time (as the
//! server measured it and as wall clock around `hotsock upgrade --wait`),
//! the pause the server measured, and the pause the active clients saw:
//! the longest gap between two replies across the upgrade, against the
//! longest gap in a window of the same length with no upgrade, from the
//! same clients in the same run. Loopback only; every phase is bounded.
//!
//! After the first upgrade the process this bench started is gone: the
//! server to stop is the one named in `run/hotsock.pid` (`Running` does).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hotsock_server::{AdminRequest, AdminResponse, PID_FILE, ServerStatus, UpgradePhase, UpgradeStatus, admin_request};
use tokio_tungstenite::tungstenite::Message;

use crate::{Target, chart, report, sibling, spawn_hotsock};

mod gaps;

use gaps::Window;

pub(crate) struct Params {
    pub(crate) idle: usize,
    pub(crate) active: usize,
    pub(crate) upgrades: usize,
    pub(crate) interval_ms: u64,
}

/// Connections opened at once (as in `idle`).
const CONNECT_BATCH: usize = 200;
/// Quiet time before and after each upgrade and each baseline window, so
/// the old process's exit and the CLI's start stay out of the other kind
/// of window.
const SETTLE: Duration = Duration::from_secs(1);
/// Idle connections asked for one echo after the last upgrade.
const IDLE_SAMPLE: usize = 200;
/// Longest wait for any one reply: past it the connection counts as closed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest an upgrade may take before the bench gives up on it (the aim is
/// 1 s; this only keeps a hung server from hanging the bench).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the whole load may run, whatever happens to the loop below.
const RUN_MAX: Duration = Duration::from_secs(600);
/// Open files this process needs beyond its connections (runtime, pipes,
/// the admin socket).
const FILES_MARGIN: usize = 200;
/// The aims of issue 18.
const AIM_TOTAL_MS: u64 = 1000;
const AIM_PAUSE_MS: f64 = 50.0;
/// The build tag of the second "build" (`hotsock_testkit::stamped_hotsock`
/// does the same for the tests).
const TAG: &str = "b";

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The server under test, whichever process it is now: stopped on drop
/// through `hotsock stop`, or killed by the pid in its pid file.
struct Running {
    target: Target,
    config: PathBuf,
    /// The `hotsock` CLI, for `stop` and `upgrade`.
    hotsock: PathBuf,
}

impl Running {
    fn run_dir(&self) -> Result<PathBuf> {
        Ok(self.config.parent().context("config dir")?.join("run"))
    }

    fn pid(&self) -> Option<u32> {
        let run_dir = self.run_dir().ok()?;
        std::fs::read_to_string(run_dir.join(PID_FILE)).ok()?.trim().parse().ok()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let stopped = Command::new(&self.hotsock)
            .args(["stop", "-c"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && let Some(pid) = self.pid() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// The new server's `status.upgrade`, or why `hotsock upgrade` failed
/// (the old server serving on).
type Outcome = std::result::Result<UpgradeStatus, String>;

/// One upgrade as measured.
struct Upgrade {
    /// The new server's `status.upgrade`.
    status: Outcome,
    /// What `hotsock upgrade --wait` printed: total and pause in ms, as
    /// the old server saw them when it let go.
    cli: (Option<u64>, Option<u64>),
    /// Around the `hotsock upgrade --wait` process.
    wall_ms: f64,
    window: Window,
    /// A quiet window of the same length, after it.
    baseline: Window,
}

/// What one active connection saw.
#[derive(Default)]
struct Seen {
    sent: u64,
    answered: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    closed: u64,
    /// When each reply arrived.
    arrivals: Vec<Instant>,
}

/// A copy of `binary` reporting version `X+tag` (see `BUILD_TAG` in
/// hotsock-server): a second build to upgrade to.
fn stamped(binary: &Path, dir: &Path, tag: &str) -> Result<PathBuf> {
    const MARKER: &[u8] = b"hotsock-build-tag:";
    const ROOM: usize = 30;
    if tag.is_empty() || tag.len() >= ROOM {
        bail!("a build tag of 1 to {} bytes", ROOM - 1);
    }
    let mut bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let at: Vec<usize> = bytes
        .windows(MARKER.len() + ROOM)
        .enumerate()
        .filter(|(_, w)| w.starts_with(MARKER) && w[MARKER.len()..].iter().all(|&b| b == 0))
        .map(|(i, _)| i)
        .collect();
    let [at] = at[..] else { bail!("{}: expected exactly one build-tag marker", binary.display()) };
    bytes[at + MARKER.len()..at + MARKER.len() + tag.len()].copy_from_slice(tag.as_bytes());
    let path = dir.join(format!("hotsock-{tag}"));
    std::fs::write(&path, bytes)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// This process's limit of open files (`ulimit -n`), from /proc.
fn files_max() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    line.and_then(|l| l.split_whitespace().nth(3)?.parse().ok()).unwrap_or(1024)
}

fn start(params: &Params, dir: &Path) -> Result<Running> {
    let config = format!(
        "max_connections = {}\n[workers]\ncommand = [\"{}\"]\ncount = 1\n",
        params.idle + params.active + FILES_MARGIN,
        sibling("echo")?.display()
    );
    // The servers log warnings only, unless HOTSOCK_LOG says otherwise
    // (`HOTSOCK_LOG=info` shows each upgrade's steps from both servers).
    let log = std::env::var_os("HOTSOCK_LOG").unwrap_or_else(|| "warn".into());
    let target =
        spawn_hotsock("hotsock (server + 1 echo worker)", dir.to_path_buf(), &config, &[("HOTSOCK_LOG", &log)])?;
    Ok(Running { target, config: dir.join("hotsock.toml"), hotsock: sibling("hotsock")? })
}

async fn status(running: &Running) -> Result<ServerStatus> {
    match admin_request(&running.run_dir()?, &AdminRequest::Status).await? {
        AdminResponse::Status(status) => Ok(*status),
        other => bail!("unexpected reply to status: {other:?}"),
    }
}

/// One active connection: a numbered message every `interval` until
/// `stop`, then `end`; every reply's arrival time and what was wrong.
async fn active(port: u16, c: usize, interval: Duration, stop: Arc<AtomicBool>) -> Result<Seen> {
    let client = crate::load::connect(&format!("ws://127.0.0.1:{port}/active")).await?;
    let (mut sink, mut stream) = client.split();
    let deadline = Instant::now() + RUN_MAX;
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            tick.tick().await;
            if sink.send(Message::text(format!("{c}:{n}"))).await.is_err() {
                return (sink, n, true);
            }
            n += 1;
        }
        let closed = sink.send(Message::text(format!("{c}:end"))).await.is_err();
        (sink, n, closed)
    });
    let mut seen = Seen::default();
    let mut numbers = HashSet::new();
    let mut next = 0u64;
    loop {
        let Ok(Some(message)) = tokio::time::timeout(REPLY_TIMEOUT, stream.next()).await else {
            seen.closed += 1;
            break;
        };
        let Ok(message) = message else {
            seen.closed += 1;
            break;
        };
        let Message::Text(text) = message else { continue };
        let at = Instant::now();
        // The echo example answers `v1:<message>`.
        let n = text.split(':').nth(2).unwrap_or("");
        if n == "end" {
            break;
        }
        let Ok(n) = n.parse::<u64>() else { continue };
        seen.answered += 1;
        seen.arrivals.push(at);
        if !numbers.insert(n) {
            seen.duplicated += 1;
            continue;
        }
        if n != next {
            seen.reordered += 1;
        }
        next = n + 1;
    }
    let (_sink, sent, closed) = sender.await?;
    seen.sent = sent;
    seen.lost = sent.saturating_sub(numbers.len() as u64);
    seen.closed += u64::from(closed);
    Ok(seen)
}

/// Runs `hotsock upgrade --wait --binary BINARY` and returns how the new
/// server says it went, with the wall-clock window around the CLI.
async fn upgrade_once(running: &Running, binary: &Path) -> Result<(Outcome, Window, String)> {
    let old_pid = running.pid().context("no pid file before the upgrade")?;
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&running.hotsock);
    command.args(["upgrade", "--wait", "--binary"]).arg(binary).arg("-c").arg(&running.config);
    command.kill_on_drop(true);
    let output = tokio::time::timeout(UPGRADE_TIMEOUT, command.output())
        .await
        .with_context(|| format!("hotsock upgrade did not answer within {UPGRADE_TIMEOUT:?}"))??;
    let window = Window { from: started, to: Instant::now() };
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        // The contract: the old server serves on. Said so by its status.
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let still = status(running).await?;
        if still.pid != old_pid {
            bail!("`hotsock upgrade` failed ({stderr}) yet pid {} answers instead of {old_pid}", still.pid);
        }
        return Ok((Err(stderr), window, said));
    }
    // Until the old process exits, the admin socket may still reach it; the
    // new one answers once it is gone, and the pid file names it.
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    let new = loop {
        let old_gone = !Path::new(&format!("/proc/{old_pid}")).exists() || zombie(old_pid);
        if old_gone
            && let Ok(now) = status(running).await
            && now.pid != old_pid
            && running.pid() == Some(now.pid)
        {
            break now;
        }
        if Instant::now() > deadline {
            bail!(
                "{UPGRADE_TIMEOUT:?} after `{said}`: old pid {old_pid} gone {old_gone}, pid file names {:?}",
                running.pid()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let upgrade = new.upgrade.context("the new server's status has no upgrade")?;
    if upgrade.phase != UpgradePhase::Done || upgrade.to_pid != Some(new.pid) {
        bail!("after `{said}` the new server (pid {}) reports {upgrade:?}", new.pid);
    }
    Ok((Ok(upgrade), window, said))
}

/// The number before ` ms` that follows `label` in the CLI's line
/// (`ok: A (pid 1) -> B (pid 2) in 54 ms: 80 connections moved, paused 15 ms`).
fn ms_after(line: &str, label: &str) -> Option<u64> {
    let (_, rest) = line.split_once(label)?;
    rest.split_once(" ms")?.0.parse().ok()
}

/// Whether `pid` has exited but is not reaped yet (the first server is
/// this bench's child, reaped only when `Target` drops).
fn zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z")
}

/// One message on each of `IDLE_SAMPLE` idle connections spread over all of
/// them; returns (asked, answered).
async fn ask_idle(clients: &mut [Client]) -> (usize, usize) {
    let step = (clients.len() / IDLE_SAMPLE).max(1);
    let mut asked = 0;
    let mut answered = 0;
    for (i, client) in clients.iter_mut().enumerate().step_by(step).take(IDLE_SAMPLE) {
        asked += 1;
        let expected = format!("v1:idle-{i}");
        if client.send(Message::text(format!("idle-{i}"))).await.is_err() {
            continue;
        }
        let reply = tokio::time::timeout(REPLY_TIMEOUT, client.next()).await;
        if matches!(reply, Ok(Some(Ok(Message::Text(text)))) if text.as_str() == expected) {
            answered += 1;
        }
    }
    (asked, answered)
}

pub(crate) fn run(params: &Params, out: &Path) -> Result<()> {
    let needed = params.idle + params.active + FILES_MARGIN;
    if files_max() < needed {
        bail!("{needed} open files needed, `ulimit -n` allows {}; raise it or pass a smaller --idle", files_max());
    }
    let dir = std::env::temp_dir().join(format!("hotsock-bench-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let builds = [stamped(&sibling("hotsock")?, &dir, TAG)?, sibling("hotsock")?];
    let running = start(params, &dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let port = running.target.port;
    let result = runtime.block_on(async {
        eprintln!("== upgrade: opening {} idle connections", params.idle);
        let mut idle = crate::load::connect_many(port, "/idle", params.idle, CONNECT_BATCH).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(params.interval_ms);
        let tasks: Vec<_> = (0..params.active).map(|c| tokio::spawn(active(port, c, interval, stop.clone()))).collect();
        let first = status(&running).await?;
        let version = first.server_version.clone();
        tokio::time::sleep(SETTLE).await;
        let mut upgrades = Vec::new();
        for k in 0..params.upgrades {
            let (status, window, said) = match upgrade_once(&running, &builds[k % 2]).await {
                Ok(done) => done,
                Err(error) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(error.context(format!("upgrade {}", k + 1)));
                }
            };
            match &status {
                Ok(_) => eprintln!("   upgrade {}: {said} (wall {:?})", k + 1, window.length()),
                Err(why) => eprintln!("   upgrade {}: FAILED (wall {:?}): {why}", k + 1, window.length()),
            }
            tokio::time::sleep(SETTLE).await;
            let from = Instant::now();
            let baseline = Window { from, to: from + (window.to - window.from) };
            tokio::time::sleep_until(baseline.to.into()).await;
            tokio::time::sleep(SETTLE).await;
            let wall_ms = (window.to - window.from).as_secs_f64() * 1000.0;
            let cli = (ms_after(&said, " in "), ms_after(&said, "paused "));
            upgrades.push(Upgrade { status, cli, wall_ms, window, baseline });
        }
        stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await??);
        }
        let idle_check = ask_idle(&mut idle).await;
        let connections = status(&running).await?.connections;
        drop(idle);
        Ok::<_, anyhow::Error>((version, upgrades, seen, idle_check, connections))
    });
    let (version, upgrades, seen, idle_check, connections) = result?;
    drop(running);
    let summary = Summary::new(params, upgrades, &seen, idle_check, connections);
    let text = summary.markdown(params, &version);
    chart::json("upgrade", &summary.json());
    report::write_section(out, "upgrade", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    let c = &summary.counts;
    if c.lost + c.duplicated + c.reordered + c.closed > 0 || summary.idle_answered < summary.idle_asked {
        bail!("the upgrade contract was broken (see the counters above)");
    }
    let failed = summary.rows.iter().filter(|(u, _, _)| u.status.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} upgrades failed (see above)", summary.rows.len());
    }
    Ok(())
}

/// Reply gaps minus the send interval, in ms, one per active connection.
struct Pauses {
    max: f64,
    p99: f64,
    /// The largest gap itself, interval included.
    gap_max: f64,
}

impl Pauses {
    fn over(seen: &[Seen], window: Window, interval_ms: f64) -> Pauses {
        let gaps: Vec<f64> = seen
            .iter()
            .filter_map(|s| gaps::largest(&s.arrivals, window))
            .map(|gap| gap.as_secs_f64() * 1000.0)
            .collect();
        let excess: Vec<f64> = gaps.iter().map(|gap| (gap - interval_ms).max(0.0)).collect();
        Pauses {
            max: gaps::quantile(&excess, 1.0),
            p99: gaps::quantile(&excess, 0.99),
            gap_max: gaps::quantile(&gaps, 1.0),
        }
    }
}

/// Everything the report says.
struct Summary {
    counts: Seen,
    rows: Vec<(Upgrade, Pauses, Pauses)>,
    idle_asked: usize,
    idle_answered: usize,
    /// Connections the last server holds at the end.
    connections: usize,
}

impl Summary {
    fn new(
        params: &Params,
        upgrades: Vec<Upgrade>,
        seen: &[Seen],
        (idle_asked, idle_answered): (usize, usize),
        connections: usize,
    ) -> Summary {
        let interval_ms = params.interval_ms as f64;
        let mut counts = Seen::default();
        for s in seen {
            counts.sent += s.sent;
            counts.answered += s.answered;
            counts.lost += s.lost;
            counts.duplicated += s.duplicated;
            counts.reordered += s.reordered;
            counts.closed += s.closed;
        }
        let rows = upgrades
            .into_iter()
            .map(|u| {
                let across = Pauses::over(seen, u.window, interval_ms);
                let quiet = Pauses::over(seen, u.baseline, interval_ms);
                (u, across, quiet)
            })
            .collect();
        Summary { counts, rows, idle_asked, idle_answered, connections }
    }

    /// The worst of the upgrades that succeeded.
    fn worst(&self, pick: impl Fn(&UpgradeStatus, &Upgrade, &Pauses, &Pauses) -> f64) -> f64 {
        let done = self.rows.iter().filter_map(|(u, a, q)| Some((u.status.as_ref().ok()?, u, a, q)));
        done.map(|(s, u, a, q)| pick(s, u, a, q)).fold(0.0, f64::max)
    }

    fn json(&self) -> serde_json::Value {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|(u, across, quiet)| {
                let (status, failed) = match &u.status {
                    Ok(status) => (Some(status), None),
                    Err(why) => (None, Some(why)),
                };
                serde_json::json!({
                    "status": status, "failed": failed, "wall_ms": u.wall_ms,
                    "cli_duration_ms": u.cli.0, "cli_pause_ms": u.cli.1,
                    "client_pause_max_ms": across.max, "client_pause_p99_ms": across.p99,
                    "quiet_pause_max_ms": quiet.max, "quiet_pause_p99_ms": quiet.p99,
                    "window_ms": u.window.length().as_secs_f64() * 1000.0,
                })
            })
            .collect();
        let c = &self.counts;
        serde_json::json!({
            "sent": c.sent, "answered": c.answered, "lost": c.lost, "duplicated": c.duplicated,
            "reordered": c.reordered, "closed": c.closed, "idle_asked": self.idle_asked,
            "idle_answered": self.idle_answered, "connections_at_end": self.connections, "upgrades": rows,
        })
    }

    fn markdown(&self, params: &Params, version: &str) -> String {
        let c = &self.counts;
        let mut text = format!(
            "## upgrade: {idle} idle + {active} active connections (1 message / {iv} ms), {k} binary upgrades\n\n\
             - Machine: {machine}\n- Date: {date}\n- Command: `target/release/hotsock-bench upgrade --idle {idle} \
             --active {active} --upgrades {k} --interval-ms {iv}` (release build of hotsock and examples/echo, 1 echo \
             worker; the upgrades alternate between {version}+{TAG}, a copy of the binary stamped as another build, \
             and {version}; open files allowed per process: {files})\n\n\
             | sent | answered | lost | duplicated | reordered | closed connections | idle connections answering \
             after the last upgrade | connections the server holds at the end |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n\
             | {sent} | {answered} | {lost} | {dup} | {reord} | {closed} | {ans}/{asked} | {held} |\n\n\
             | upgrade | connections moved | total: CLI / `status.upgrade.duration_ms` / wall clock \
             | pause: CLI / `status.upgrade.pause_ms` | active clients' pause across it: max / p99 \
             | quiet window of the same length: max / p99 |\n|---|---:|---:|---:|---:|---:|\n",
            idle = params.idle,
            active = params.active,
            iv = params.interval_ms,
            k = params.upgrades,
            machine = report::machine(),
            date = report::today(),
            sent = c.sent,
            answered = c.answered,
            lost = c.lost,
            dup = c.duplicated,
            reord = c.reordered,
            closed = c.closed,
            ans = self.idle_answered,
            asked = self.idle_asked,
            held = self.connections,
            files = files_max(),
        );
        let mut failures = String::new();
        for (k, (u, across, quiet)) in self.rows.iter().enumerate() {
            let s = match &u.status {
                Ok(s) => s,
                Err(why) => {
                    text.push_str(&format!(
                        "| {}: **failed** | 0 | failed after {:.0} ms wall clock | - | {:.1} / {:.1} ms | {:.1} / {:.1} ms |\n",
                        k + 1,
                        u.wall_ms,
                        across.max,
                        across.p99,
                        quiet.max,
                        quiet.p99,
                    ));
                    failures.push_str(&format!("- Upgrade {} failed: `{why}`\n", k + 1));
                    continue;
                }
            };
            text.push_str(&format!(
                "| {}: {} → {} | {} | {} / {} / {:.0} ms | {} / {} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms |\n",
                k + 1,
                s.from_version,
                s.to_version.as_deref().unwrap_or("?"),
                s.connections,
                shown(u.cli.0),
                s.duration_ms,
                u.wall_ms,
                shown(u.cli.1),
                s.pause_ms,
                across.max,
                across.p99,
                quiet.max,
                quiet.p99,
            ));
        }
        if !failures.is_empty() {
            text.push('\n');
            text.push_str(&failures);
        }
        let pause = self.worst(|_, _, across, _| across.max);
        let quiet_gap = self.worst(|_, _, _, quiet| quiet.gap_max);
        let gap = self.worst(|_, _, across, _| across.gap_max);
        let total = self.worst(|s, u, _, _| s.duration_ms.max(u.cli.0.unwrap_or(0)) as f64);
        let wall = self.worst(|_, u, _, _| u.wall_ms);
        let done = self.rows.iter().filter(|(u, _, _)| u.status.is_ok()).count();
        text.push_str(&format!(
            "\nThe CLI prints the old server's figures when it lets go (total: from the request; pause: from \
             parking the busy connections to letting go: connections idle for a second park and move ahead \
             while the busy ones serve on); `status.upgrade` holds the new server's (total: from its own start; \
             pause: from the old server's parking of the busy connections until it serves them). \
             An active client's pause is, per connection, the longest gap between two consecutive replies that \
             overlaps the window (wall clock around `hotsock upgrade --wait`, or a quiet window of the same length \
             {settle} s after it), minus the {iv} ms send interval; max and p99 are over the {active} active \
             connections.\n\n",
            settle = SETTLE.as_secs(),
            iv = params.interval_ms,
            active = params.active,
        ));
        if done == 0 {
            text.push_str(&format!(
                "**No upgrade succeeded** (aims: at most {AIM_TOTAL_MS} ms for 10,000 connections, at most \
                 {AIM_PAUSE_MS:.0} ms pause for an active connection).\n\n"
            ));
            return text;
        }
        text.push_str(&format!(
            "Over the {done} of {k} upgrades that succeeded: \
             **Longest pause an active connection saw: {pause:.1} ms** (aim: at most {AIM_PAUSE_MS:.0} ms). \
             **Largest reply gap across an upgrade / in a quiet window: {ratio:.2}** ({gap:.1} ms against \
             {quiet_gap:.1} ms, the {iv} ms interval included). **Longest upgrade: {total:.0} ms as the servers \
             measured it, {wall:.0} ms wall clock** (aim: at most {AIM_TOTAL_MS} ms for 10,000 connections).\n\n",
            k = self.rows.len(),
            iv = params.interval_ms,
            ratio = gap / quiet_gap.max(f64::MIN_POSITIVE),
        ));
        text
    }
}

/// A figure the CLI may not have printed.
fn shown(ms: Option<u64>) -> String {
    ms.map_or_else(|| "?".to_owned(), |ms| ms.to_string())
}
