//! `matchmaker`: simulated players arrive at a fixed rate with valid tokens;
//! the run reports matches per second, time to match, and the counters that
//! must be zero (wrong matches, double matches, players never answered).
//! The same arrivals run twice in one invocation: without reloads (the
//! baseline) and with a reload every S seconds that also switches the rule.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use hotsock_server::{AdminRequest, AdminResponse, admin_request};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs::{CpuMeter, CpuUse};
use crate::{report, sibling, spawn_hotsock};

pub(crate) const SECRET: &str = "bench-secret";
const GAMES: [&str; 4] = ["chess", "go", "poker", "bridge"];
/// A player with no answer after this counts as never answered.
const ANSWER_MAX: Duration = Duration::from_secs(30);

pub(crate) struct Params {
    pub(crate) players: usize,
    pub(crate) rate: u64,
    pub(crate) reload_every_s: u64,
}

pub(crate) fn token(uid: u64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()) else { return String::new() };
    mac.update(uid.to_string().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Default)]
struct Outcome {
    matched: u64,
    timeouts: u64,
    wrong: u64,
    double: u64,
    unanswered: u64,
    reloads: u64,
    seconds: f64,
    time_to_match: Option<Histogram<u64>>,
    cpu: CpuUse,
}

/// What one simulated player saw.
enum Seen {
    Matched { peer: u64, ok: bool, ms: u64 },
    Timeout,
    Nothing,
}

async fn player(port: u16, uid: u64) -> Seen {
    let gender = if uid.is_multiple_of(2) { "m" } else { "f" };
    let game = GAMES[(uid as usize / 2) % GAMES.len()];
    let url = format!("ws://127.0.0.1:{port}/match?uid={uid}&gender={gender}&game={game}&token={}", token(uid));
    let started = Instant::now();
    let Ok(mut client) = crate::load::connect(&url).await else { return Seen::Nothing };
    let answer = tokio::time::timeout(ANSWER_MAX, async {
        while let Some(Ok(message)) = client.next().await {
            if let Message::Text(text) = message {
                let message = serde_json::from_str::<serde_json::Value>(&text).ok();
                if message.as_ref().is_some_and(|m| m["type"] == "waiting") {
                    continue;
                }
                return message;
            }
        }
        None
    });
    match answer.await {
        Ok(Some(message)) if message["type"] == "matched" => {
            let peer = &message["peer"];
            let rule_ok = message["rules"] != "opposite-gender" || peer["gender"] != gender;
            Seen::Matched {
                peer: peer["uid"].as_u64().unwrap_or(0),
                ok: peer["game"] == game && rule_ok,
                ms: started.elapsed().as_millis() as u64,
            }
        }
        Ok(Some(message)) if message["type"] == "timeout" => Seen::Timeout,
        _ => Seen::Nothing,
    }
}

fn run_once(params: &Params, reload_every_s: u64, uid_base: u64) -> Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("hotsock-bench-mm-{}-{uid_base}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rules = dir.join("rules");
    std::fs::write(&rules, "opposite-gender")?;
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/matchmaker/hotsock.toml"))?;
    let tables = &example[example.find("[tables.players]").context("tables section")?..];
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n{tables}", sibling("matchmaker")?.display());
    let target = spawn_hotsock(
        "hotsock",
        dir.clone(),
        &config,
        &[
            ("MATCH_SECRET", SECRET.as_ref()),
            ("MATCH_TIMEOUT_MS", "10000".as_ref()),
            ("MATCH_RULES_FILE", rules.as_os_str()),
        ],
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let port = target.port;
    let meter = CpuMeter::start(target.child.id());
    let started = Instant::now();
    let (seen, reloads) = runtime.block_on(async {
        let run_dir = dir.join("run");
        let reloads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done = reloads.clone();
        let reloader = tokio::spawn(async move {
            if reload_every_s == 0 {
                return;
            }
            let mut rule = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(reload_every_s)).await;
                rule += 1;
                let next = if rule % 2 == 1 { "rating-window" } else { "opposite-gender" };
                let _ = std::fs::write(&rules, next);
                let request = AdminRequest::Reload { tasks: false, wait: true, canary: None };
                match admin_request(&run_dir, &request).await {
                    Ok(AdminResponse::Reload(outcome)) if outcome.ok => {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("   reload failed: {other:?}");
                        return;
                    }
                }
            }
        });
        let gap = Duration::from_secs_f64(1.0 / params.rate.max(1) as f64);
        let mut players = Vec::new();
        for n in 0..params.players as u64 {
            players.push(tokio::spawn(player(port, uid_base + n + 1)));
            tokio::time::sleep(gap).await;
        }
        let mut seen = HashMap::new();
        for (n, task) in players.into_iter().enumerate() {
            seen.insert(uid_base + n as u64 + 1, task.await.unwrap_or(Seen::Nothing));
        }
        reloader.abort();
        (seen, reloads.load(std::sync::atomic::Ordering::Relaxed))
    });
    let mut outcome =
        Outcome { reloads, seconds: started.elapsed().as_secs_f64(), cpu: meter.stop(), ..Outcome::default() };
    let mut histogram = Histogram::<u64>::new(3)?;
    for (uid, player) in &seen {
        match player {
            Seen::Matched { peer, ok, ms } => {
                outcome.matched += 1;
                outcome.wrong += u64::from(!ok);
                histogram.record(*ms)?;
                let mutual = matches!(seen.get(peer), Some(Seen::Matched { peer: back, .. }) if back == uid);
                outcome.double += u64::from(!mutual);
            }
            Seen::Timeout => outcome.timeouts += 1,
            Seen::Nothing => outcome.unanswered += 1,
        }
    }
    outcome.time_to_match = Some(histogram);
    drop(target);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(outcome)
}

pub(crate) fn run(params: &Params, out: &Path) -> Result<()> {
    eprintln!("== matchmaker: {} players at {}/s, no reloads", params.players, params.rate);
    let base = run_once(params, 0, 0)?;
    eprintln!(
        "== matchmaker: {} players at {}/s, a reload every {} s",
        params.players, params.rate, params.reload_every_s
    );
    let reloading = run_once(params, params.reload_every_s, 10_000_000)?;
    let row = |name: &str, o: &Outcome| {
        let h = o.time_to_match.as_ref();
        format!(
            "| {name} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            o.reloads,
            o.matched as f64 / 2.0 / o.seconds,
            h.map_or(0, |h| h.value_at_quantile(0.5)),
            h.map_or(0, |h| h.value_at_quantile(0.99)),
            o.matched,
            o.timeouts,
            o.wrong,
            o.double,
            o.unanswered
        )
    };
    let p99 = |o: &Outcome| o.time_to_match.as_ref().map_or(0, |h| h.value_at_quantile(0.99)) as f64;
    let json = |o: &Outcome| {
        let h = o.time_to_match.as_ref();
        serde_json::json!({
            "reloads": o.reloads, "seconds": o.seconds, "matched": o.matched, "timeouts": o.timeouts,
            "wrong": o.wrong, "double": o.double, "never_answered": o.unanswered,
            "p50_ms": h.map_or(0, |h| h.value_at_quantile(0.5)), "p99_ms": h.map_or(0, |h| h.value_at_quantile(0.99)),
            "cpu": o.cpu,
        })
    };
    crate::chart::json("matchmaker", &serde_json::json!({"baseline": json(&base), "reloading": json(&reloading)}));
    let mut text = format!(
        "## matchmaker: {} simulated players arriving at {}/s (equal genders, 4 games)\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench matchmaker --players {} --rate {} --reload-every {}` (release builds of hotsock and examples/matchmaker, 2 workers; the rule switches between opposite-gender and rating-window at every reload)\n\n\
         | run | reloads | matches/s | time to match p50 ms | p99 ms | matched players | timeouts | wrong | double | never answered |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n{}{}\n\
         Wrong, double and never-answered must be 0. **p99 time to match with reloads / without: {:.2}**.\n\n",
        params.players,
        params.rate,
        report::machine(),
        report::today(),
        params.players,
        params.rate,
        params.reload_every_s,
        row("no reloads (baseline)", &base),
        row(&format!("reload every {} s", params.reload_every_s), &reloading),
        p99(&reloading) / p99(&base).max(1.0),
    );
    text.push_str(&base.cpu.markdown("the run without reloads"));
    text.push_str(&reloading.cpu.markdown("the run with reloads"));
    text.push('\n');
    report::write_section(out, "matchmaker", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}
