//! `edit`: the developer loop's latency. A temp copy of the echo example is
//! served with `[reload.watch]` (default debounce); its source is edited E
//! times while a client keeps asking, and each edit's save → first reply
//! from the new code is split into detection (save → build start), build
//! (the cargo build itself) and switch (build end → first new reply).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hotsock_server::{AdminRequest, AdminResponse, admin_request};
use tokio_tungstenite::tungstenite::Message;

use crate::{Target, chart, report, spawn_hotsock};

/// How long one edit may take to go live before the run fails.
const GO_LIVE_MAX: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Sample {
    detection_ms: u64,
    build_ms: u64,
    switch_ms: u64,
}

pub(crate) fn run(edits: usize, out: &Path) -> Result<()> {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("hotsock-bench-edit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("project/src"))?;
    let project = dir.join("project");
    std::fs::copy(root.join("examples/echo/src/main.rs"), project.join("src/main.rs"))?;
    std::fs::copy(root.join("Cargo.lock"), project.join("Cargo.lock"))?;
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"echo-live\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\nhotsock-worker = {{ path = \"{}\" }}\ntokio = {{ version = \"1\", features = [\"time\"] }}\n\n[workspace]\n",
            root.join("crates/hotsock-worker").display()
        ),
    )?;
    let target = root.join("target/live-echo");
    let manifest = project.join("Cargo.toml");
    let build: Vec<String> = ["cargo", "build", "--offline", "--manifest-path"]
        .iter()
        .map(|s| s.to_string())
        .chain([manifest.display().to_string()])
        .collect();
    eprintln!("== building the temp copy once (cargo, debug)");
    let status = Command::new(&build[0]).args(&build[1..]).env("CARGO_TARGET_DIR", &target).status()?;
    if !status.success() {
        bail!("the first build of the temp copy failed");
    }
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\nbuild = {build:?}\n",
        target.join("debug/echo-live").display(),
        project.join("src").display(),
    );
    let target_process = spawn_hotsock("hotsock", dir.clone(), &config, &[("CARGO_TARGET_DIR", target.as_os_str())])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let samples = runtime.block_on(measure(&target_process, &project, &dir.join("run"), edits))?;
    let text = markdown(edits, &samples);
    chart::json(
        "edit",
        &serde_json::json!(
            samples
                .iter()
                .map(|s| serde_json::json!({"detection_ms": s.detection_ms, "build_ms": s.build_ms, "switch_ms": s.switch_ms}))
                .collect::<Vec<_>>()
        ),
    );
    report::write_section(out, "edit", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}

async fn measure(target: &Target, project: &Path, run_dir: &Path, edits: usize) -> Result<Vec<Sample>> {
    let mut client = crate::load::connect(&format!("ws://127.0.0.1:{}/", target.port)).await?;
    // Let the watcher come up before the first edit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let source = project.join("src/main.rs");
    let original = std::fs::read_to_string(&source)?;
    let mut samples = Vec::new();
    for k in 1..=edits {
        let prefix = format!("e{k}:");
        std::fs::write(&source, original.replace("\"v1:\".to_owned()", &format!("\"{prefix}\".to_owned()")))?;
        let saved = unix_ms();
        let deadline = Instant::now() + GO_LIVE_MAX;
        let live = loop {
            client.send(Message::text("x")).await?;
            let reply = loop {
                match client.next().await {
                    Some(Ok(Message::Text(text))) => break text.to_string(),
                    Some(Ok(_)) => {}
                    _ => bail!("the connection ended during an edit"),
                }
            };
            if reply.starts_with(&prefix) {
                break unix_ms();
            }
            if Instant::now() > deadline {
                bail!("edit {k} did not go live within {GO_LIVE_MAX:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let AdminResponse::Status(status) = admin_request(run_dir, &AdminRequest::Status).await? else {
            bail!("unexpected status reply");
        };
        let build = status.watch.and_then(|w| w.last_build).context("no build recorded")?;
        let build_start = build.finished_at_unix_ms.saturating_sub(build.duration_ms);
        samples.push(Sample {
            detection_ms: build_start.saturating_sub(saved),
            build_ms: build.duration_ms,
            switch_ms: live.saturating_sub(build.finished_at_unix_ms),
        });
        eprintln!("   edit {k}: {} ms to live", live - saved);
    }
    std::fs::write(&source, original)?;
    Ok(samples)
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn markdown(edits: usize, samples: &[Sample]) -> String {
    let detection = median(samples.iter().map(|s| s.detection_ms).collect());
    let build = median(samples.iter().map(|s| s.build_ms).collect());
    let switch = median(samples.iter().map(|s| s.switch_ms).collect());
    let total = detection + build + switch;
    let overhead = detection + switch;
    format!(
        "## edit: save → first reply from the new code, {edits} edits (median)\n\n\
         - Machine: {machine}\n- Date: {date}\n- Command: `target/release/hotsock-bench edit --edits {edits}` (a temp copy of examples/echo rebuilt by `cargo build` in debug; default `debounce_ms` = 150; 2 workers)\n\n\
         | detection (save → build start) | build (cargo) | switch (build end → first new reply) | total |\n|---:|---:|---:|---:|\n\
         | {detection} ms | {build} ms | {switch} ms | {total} ms |\n\n\
         **Detection + switch: {overhead} ms** (aim: under 300 ms with the default debounce; the debounce itself is \
         150 ms of it), {share:.0}% of the edit-to-live time; the rest is the compiler.\n\n",
        machine = report::machine(),
        date = report::today(),
        share = overhead as f64 * 100.0 / total.max(1) as f64,
    )
}
