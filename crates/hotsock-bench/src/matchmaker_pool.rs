//! `matchmaker-pool`: whether pairing slows as the pool grows. As a game
//! backend would try it: one game, N players of one gender enter the pool
//! and wait, then N of the other arrive and are paired. Reported per N:
//! the entering rate, matches per second, and the counters that must be
//! zero (a pair not mutual or against the rule, a player matched twice,
//! one never answered). The figure to read is matches/s at 10,000 waiting
//! against 1,000, measured in the same invocation.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::matchmaker::{SECRET, token};
use crate::procfs::{CpuMeter, CpuUse};
use crate::{report, sibling, spawn_hotsock};

/// Players connecting at once: enough to keep both workers busy, few
/// enough that a handshake's latency is not a queue of thousands.
const IN_FLIGHT: usize = 64;
/// Files a run needs beside its connections (server: listener, workers,
/// tables; this process: runtime, /proc reads).
const SPARE_FILES: usize = 300;
/// A player with no answer after this counts as never answered.
const ANSWER_MAX: Duration = Duration::from_secs(60);
/// Far longer than a run, so nobody times out while others enter.
const MATCH_TIMEOUT_MS: &str = "600000";
/// Women's uids start here (men's at 1).
const WOMEN_BASE: u64 = 10_000_000;

pub(crate) struct Params {
    pub(crate) waiting: Vec<usize>,
}

struct Run {
    waiting: usize,
    enter_per_s: f64,
    matches_per_s: f64,
    matched: usize,
    /// Pairs whose two sides disagree, or that break the rule.
    wrong: usize,
    /// Players named as the peer of more than one player.
    double: usize,
    unanswered: usize,
    cpu: CpuUse,
}

/// Pairs of a warm-up game played before each measured run, so that no
/// run measures the server's and workers' first connections.
const WARM_UP_PAIRS: u64 = 200;

/// One simulated player: `connecting` bounds how many connect at once; the
/// permit is given back, and `entered` told, when it is in the pool (its
/// `waiting`) or has its result, whichever comes first.
struct Arrival {
    port: u16,
    game: &'static str,
    connecting: Arc<Semaphore>,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
}

/// A player's place among those connecting: given back on drop.
struct Entry {
    _permit: tokio::sync::OwnedSemaphorePermit,
    entered: tokio::sync::mpsc::UnboundedSender<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = self.entered.send(());
    }
}

/// Connects player `uid` and reads until its result. Returns the peer's
/// uid and gender.
async fn player(arrival: Arc<Arrival>, uid: u64, gender: &'static str) -> Option<(u64, String)> {
    let (port, game) = (arrival.port, arrival.game);
    let url = format!("ws://127.0.0.1:{port}/match?uid={uid}&gender={gender}&game={game}&token={}", token(uid));
    let permit = arrival.connecting.clone().acquire_owned().await.ok()?;
    // Dropped at the player's first message, or when it gives up.
    let mut entry = Some(Entry { _permit: permit, entered: arrival.entered.clone() });
    let mut client = crate::load::connect(&url).await.ok()?;
    let answer = tokio::time::timeout(ANSWER_MAX, async {
        while let Some(Ok(message)) = client.next().await {
            let Message::Text(text) = message else { continue };
            let message = serde_json::from_str::<serde_json::Value>(&text).ok()?;
            entry.take();
            if message["type"] == "waiting" {
                continue;
            }
            return Some(message);
        }
        None
    });
    let message = answer.await.ok()??;
    (message["type"] == "matched").then(|| {
        (message["peer"]["uid"].as_u64().unwrap_or(0), message["peer"]["gender"].as_str().unwrap_or("").into())
    })
}

/// This process's limit of open files (`ulimit -n`), from /proc.
fn files_max() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits.lines().find(|l| l.starts_with("Max open files"));
    line.and_then(|l| l.split_whitespace().nth(3)?.parse().ok()).unwrap_or(1024)
}

fn run_once(waiting: usize) -> Result<Run> {
    let dir = std::env::temp_dir().join(format!("hotsock-bench-pool-{}-{waiting}", std::process::id()));
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/matchmaker/hotsock.toml"))?;
    let tables = &example[example.find("[tables.players]").context("tables section")?..];
    // The example's pool holds 8,192 players: raise it to the run's.
    let rows = format!("rows = {}", waiting + 4 * IN_FLIGHT + 1024);
    if !tables.contains("rows = 8192") {
        bail!("examples/matchmaker/hotsock.toml no longer says `rows = 8192` for the players table");
    }
    let tables = tables.replacen("rows = 8192", &rows, 1);
    let config = format!(
        "max_connections = {}\n[workers]\ncommand = [\"{}\"]\ncount = 2\n{tables}",
        waiting + 4 * IN_FLIGHT,
        sibling("matchmaker")?.display()
    );
    let env = [("MATCH_SECRET", SECRET.as_ref()), ("MATCH_TIMEOUT_MS", MATCH_TIMEOUT_MS.as_ref())];
    let target = spawn_hotsock("hotsock", dir, &config, &env)?;
    let port = target.port;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run = runtime.block_on(async {
        let connecting = Arc::new(Semaphore::new(IN_FLIGHT));
        let (entered, mut entries) = tokio::sync::mpsc::unbounded_channel();
        let warm_up =
            Arc::new(Arrival { port, game: "warm-up", connecting: connecting.clone(), entered: entered.clone() });
        let pairs: Vec<_> = (1..=WARM_UP_PAIRS)
            .flat_map(|n| [(n, "m"), (WOMEN_BASE + n, "f")])
            .map(|(uid, gender)| tokio::spawn(player(warm_up.clone(), uid + 5 * WOMEN_BASE, gender)))
            .collect();
        for pair in pairs {
            let _ = pair.await;
        }
        while entries.try_recv().is_ok() {}
        let arrival = Arc::new(Arrival { port, game: "chess", connecting, entered });
        let started = Instant::now();
        let men: Vec<_> =
            (1..=waiting as u64).map(|uid| (uid, tokio::spawn(player(arrival.clone(), uid, "m")))).collect();
        // Everyone is in the pool once each has said so (or failed).
        for _ in 0..waiting {
            entries.recv().await.context("entry channel")?;
        }
        let enter_s = started.elapsed().as_secs_f64();
        let meter = CpuMeter::start(target.child.id());
        let started = Instant::now();
        let women: Vec<_> = (1..=waiting as u64)
            .map(|n| (WOMEN_BASE + n, tokio::spawn(player(arrival.clone(), WOMEN_BASE + n, "f"))))
            .collect();
        let mut seen: HashMap<u64, Option<(u64, String)>> = HashMap::new();
        for (uid, task) in women.into_iter().chain(men) {
            seen.insert(uid, task.await.ok().flatten());
        }
        let match_s = started.elapsed().as_secs_f64();
        let cpu = meter.stop();
        let mut run = Run {
            waiting,
            enter_per_s: waiting as f64 / enter_s,
            matches_per_s: waiting as f64 / match_s,
            matched: 0,
            wrong: 0,
            double: 0,
            unanswered: 0,
            cpu,
        };
        let mut named = HashSet::new();
        for (uid, result) in &seen {
            let Some((peer, gender)) = result else {
                run.unanswered += 1;
                continue;
            };
            run.matched += 1;
            let mine = if *uid > WOMEN_BASE { "f" } else { "m" };
            let mutual = matches!(seen.get(peer), Some(Some((back, _))) if back == uid);
            run.wrong += usize::from(!mutual || gender == mine);
            run.double += usize::from(!named.insert(*peer));
        }
        anyhow::Ok(run)
    })?;
    drop(target);
    Ok(run)
}

pub(crate) fn run(params: &Params, out: &Path) -> Result<()> {
    let files = files_max();
    for &waiting in &params.waiting {
        if waiting + IN_FLIGHT + SPARE_FILES > files {
            bail!(
                "{waiting} waiting players need {waiting} open connections in the server and in this process, but a \
                 process may open {files} files here (ulimit -n; the hard limit is the ceiling)"
            );
        }
    }
    let mut runs = Vec::new();
    for &waiting in &params.waiting {
        eprintln!("== matchmaker-pool: {waiting} men waiting, then {waiting} women arriving");
        let run = run_once(waiting)?;
        eprintln!(
            "   entering {:.0}/s, {:.0} matches/s, {} matched, {} wrong, {} double, {} unanswered",
            run.enter_per_s, run.matches_per_s, run.matched, run.wrong, run.double, run.unanswered
        );
        runs.push(run);
    }
    let rate_at = |n: usize| runs.iter().find(|r| r.waiting == n).map(|r| r.matches_per_s);
    let list = params.waiting.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut text = format!(
        "## matchmaker-pool: pairing with {list} players waiting (one game)\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench matchmaker-pool --waiting {list}` (release builds of hotsock and examples/matchmaker, 2 workers, rule opposite-gender; the players table raised to hold the run)\n\
         - Per run: N men enter the pool ({IN_FLIGHT} connecting at a time, each until its `waiting`), then N women arrive the same way and each is paired; matches/s counts from the first woman's connect until every player of both sides has its result.\n\n\
         | waiting | entering the pool /s | matches/s | matched players | wrong | double | never answered | server CPU (cores) while pairing | server CPU µs per match |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        report::machine(),
        report::today(),
    );
    for run in &runs {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.2} | {:.0} |\n",
            run.waiting,
            run.enter_per_s,
            run.matches_per_s,
            run.matched,
            run.wrong,
            run.double,
            run.unanswered,
            run.cpu.server_cores,
            run.cpu.server_cores * 1e6 / run.matches_per_s.max(1e-9),
        ));
    }
    text.push_str("\nWrong, double and never-answered must be 0.");
    if let (Some(small), Some(large)) = (rate_at(1000), rate_at(10_000)) {
        text.push_str(&format!(
            " **matches/s with 10,000 waiting / with 1,000: {:.2}** (aim: at least 0.8).",
            large / small.max(1e-9)
        ));
    }
    text.push_str(
        " Server CPU per match (the server and both workers, for a woman's handshake, token check, pairing, two \
         results and two closes) shows the pairing's cost apart from how busy the load generator kept the machine.",
    );
    text.push_str(&format!(
        " The largest pool measured is what this machine's limit of {files} open files per process allows (every waiting \
         player is an open connection in the server and in the load generator; 50,000 would need a higher `ulimit -n`). \
         Since 2026-12-04 the load generator's clients take turns on {} loopback source addresses (`load::connect`): \
         from one, each `connect(2)` searched longer for a free local port the more connections were open \
         (`__inet_check_established` and `__inet_hash_connect`, 48% of the generator's CPU with 18,000 waiting), \
         so the generator, not the pairing, slowed with the pool: the run before the change measured 9,737, 7,562 and \
         3,994 matches/s at 1,000, 10,000 and 18,000 waiting (0.78), the generator's CPU rising from 0.48 to 1.24 \
         cores while the server's fell from 1.16 to 0.69.\n\n",
        crate::load::SOURCE_ADDRESSES
    ));
    for run in &runs {
        text.push_str(&run.cpu.markdown(&format!("the pairing with {} waiting", run.waiting)));
    }
    text.push('\n');
    let json: Vec<_> = runs
        .iter()
        .map(|r| {
            serde_json::json!({"waiting": r.waiting, "enter_per_s": r.enter_per_s, "matches_per_s": r.matches_per_s,
                "matched": r.matched, "wrong": r.wrong, "double": r.double, "never_answered": r.unanswered, "cpu": r.cpu})
        })
        .collect();
    crate::chart::json("matchmaker-pool", &serde_json::json!(json));
    report::write_section(out, "matchmaker-pool", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}
