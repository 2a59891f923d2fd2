//! `tasks`: task round-trip latency through the tasks example (client →
//! event worker → task worker → event worker → client), next to a plain
//! request answered by the event worker (`ping`) in the same run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::chart;
use crate::procfs::{CpuMeter, CpuUse};
use crate::{report, sibling, spawn_hotsock};

/// Round trips of one kind for `seconds` from `conns` connections, each
/// waiting for its reply before the next request.
async fn measure(
    port: u16,
    conns: usize,
    seconds: u64,
    request: &'static str,
    last: &'static str,
    server_pid: u32,
) -> Result<(Histogram<u64>, CpuUse)> {
    let url = format!("ws://127.0.0.1:{port}/bench");
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(tokio_tungstenite::connect_async(url.clone()).await.context("connect")?.0);
    }
    let meter = CpuMeter::start(server_pid);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut client in clients {
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            while Instant::now() < end {
                let sent = Instant::now();
                client.send(Message::text(request)).await?;
                loop {
                    match client.next().await {
                        Some(Ok(Message::Text(text))) if text.contains(last) => break,
                        Some(Ok(Message::Text(text))) if text.contains("\"error\"") => bail!("error reply: {text}"),
                        Some(Ok(_)) => {}
                        _ => bail!("connection ended"),
                    }
                }
                histogram.record(sent.elapsed().as_micros() as u64)?;
            }
            Ok::<_, anyhow::Error>(histogram)
        }));
    }
    let mut total = Histogram::<u64>::new(3)?;
    for task in tasks {
        total.add(task.await??)?;
    }
    Ok((total, meter.stop()))
}

pub(crate) fn run(conns: usize, seconds: u64, out: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hotsock-bench-tasks-{}", std::process::id()));
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\ntask_count = 2\ntask_queue_max = 4096\n",
        sibling("tasks")?.display()
    );
    let target = spawn_hotsock("hotsock (2 event + 2 task workers)", dir, &config, &[])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pid = target.child.id();
    let (ping, ping_cpu) = runtime.block_on(measure(target.port, conns, seconds, r#"{"cmd":"ping"}"#, "pong", pid))?;
    let (report_rt, report_cpu) = runtime.block_on(measure(
        target.port,
        conns,
        seconds,
        r#"{"cmd":"report","args":{"seconds":0,"name":"bench"}}"#,
        "\"done\"",
        pid,
    ))?;
    let mut text = format!(
        "## tasks: round trip through a task worker, {conns} connections, {seconds} s each\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench tasks --connections {conns} --seconds {seconds}` (examples/tasks, 2 event + 2 task workers; a zero-second report)\n\n\
         | request | round trips/s | p50 µs | p99 µs |\n|---|---:|---:|---:|\n\
         | ping (event worker only, baseline) | {:.0} | {} | {} |\n\
         | report (event → task worker → event) | {:.0} | {} | {} |\n\n\
         **Task round trip p50 / ping p50: {:.2}**: besides the plain request's path, a task takes three more \
         round trips between processes (the event worker asks the server for a task id, the server runs the task \
         on a task worker, the result comes back to the event worker), each through the server.\n\n",
        report::machine(),
        report::today(),
        ping.len() as f64 / seconds as f64,
        ping.value_at_quantile(0.5),
        ping.value_at_quantile(0.99),
        report_rt.len() as f64 / seconds as f64,
        report_rt.value_at_quantile(0.5),
        report_rt.value_at_quantile(0.99),
        report_rt.value_at_quantile(0.5) as f64 / ping.value_at_quantile(0.5).max(1) as f64,
    );
    text.push_str(&ping_cpu.markdown("the ping runs"));
    text.push_str(&report_cpu.markdown("the report runs"));
    text.push('\n');
    chart::json(
        "tasks",
        &serde_json::json!({
            "ping": {"p50_us": ping.value_at_quantile(0.5), "p99_us": ping.value_at_quantile(0.99), "cpu": ping_cpu},
            "task": {"p50_us": report_rt.value_at_quantile(0.5), "p99_us": report_rt.value_at_quantile(0.99), "cpu": report_cpu},
        }),
    );
    report::write_section(out, "tasks", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    drop(target);
    Ok(())
}
