//! `idle`: memory per idle connection. Each target holds 1,000, 5,000 and
//! 15,000 open, silent WebSocket connections (this machine's hard limit is
//! 20,000 open files per process, so the client stays under it); the report
//! gives server RSS at each count and the slope (KiB per added connection)
//! from a least-squares fit, for hotsock (server + workers) and the Node.js
//! ws peer, measured in the same run.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::chart::{self, Axes, Series};
use crate::procfs::{CpuMeter, CpuUse};
use crate::{Target, procfs, report, start_hotsock, start_node_peer};

/// Connections opened at once.
const CONNECT_BATCH: usize = 200;
/// Settling time before reading memory.
const SETTLE: Duration = Duration::from_millis(800);

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Curve {
    name: &'static str,
    /// (connections, server RSS KiB)
    points: Vec<(usize, u64)>,
    /// CPU while the connections were opened and held.
    cpu: CpuUse,
}

impl Curve {
    /// Least-squares slope of RSS against connections, in KiB per connection.
    fn slope(&self) -> f64 {
        let n = self.points.len() as f64;
        let (sx, sy) = self.points.iter().fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + *x as f64, sy + *y as f64));
        let (mx, my) = (sx / n, sy / n);
        let (num, den) = self.points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
            let dx = *x as f64 - mx;
            (num + dx * (*y as f64 - my), den + dx * dx)
        });
        if den == 0.0 { 0.0 } else { num / den }
    }
}

async fn open(port: u16, clients: &mut Vec<Client>, target_count: usize) -> Result<()> {
    let url = format!("ws://127.0.0.1:{port}/idle");
    while clients.len() < target_count {
        let batch = CONNECT_BATCH.min(target_count - clients.len());
        let connects = (0..batch).map(|_| crate::load::connect(&url));
        for result in futures_util::future::join_all(connects).await {
            clients.push(result?);
        }
    }
    Ok(())
}

fn measure(target: &Target, counts: &[usize]) -> Result<Curve> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pids = target.pids();
    let mut points = Vec::new();
    let cpu = runtime.block_on(async {
        tokio::time::sleep(SETTLE).await;
        points.push((0, procfs::rss_kib(&pids)));
        let meter = CpuMeter::start(target.child.id());
        let mut clients = Vec::new();
        for &count in counts {
            open(target.port, &mut clients, count).await?;
            tokio::time::sleep(SETTLE).await;
            let rss = procfs::rss_kib(&pids);
            eprintln!("   {}: {count} idle connections, server RSS {rss} KiB", target.name);
            points.push((count, rss));
        }
        let cpu = meter.stop();
        drop(clients);
        Ok::<_, anyhow::Error>(cpu)
    })?;
    Ok(Curve { name: target.name, points, cpu })
}

pub(crate) fn run(counts: &[usize], out: &Path) -> Result<()> {
    let mut curves = Vec::new();
    for start in [start_hotsock as fn() -> Result<Target>, start_node_peer] {
        let target = start()?;
        curves.push(measure(&target, counts)?);
        drop(target);
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut text = format!(
        "## idle: server memory per idle connection\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench idle --counts {}` (hotsock: server + 1 echo worker; peer: Node.js ws; RSS from /proc)\n\n\
         | target |",
        report::machine(),
        report::today(),
        counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
    );
    for count in counts {
        text.push_str(&format!(" RSS at {count} (KiB/conn) |"));
    }
    text.push_str(" slope KiB/conn |\n|---|");
    text.push_str(&"---:|".repeat(counts.len() + 1));
    text.push('\n');
    for curve in &curves {
        let base = curve.points.first().map_or(0, |p| p.1);
        text.push_str(&format!("| {} |", curve.name));
        for (count, rss) in curve.points.iter().skip(1) {
            text.push_str(&format!(" {rss} KiB ({:.1}) |", rss.saturating_sub(base) as f64 / *count as f64));
        }
        text.push_str(&format!(" **{:.1}** |\n", curve.slope()));
    }
    let series: Vec<Series> = curves
        .iter()
        .map(|c| Series {
            name: c.name.into(),
            points: c.points.iter().map(|(n, rss)| (*n as f64, *rss as f64 / 1024.0)).collect(),
        })
        .collect();
    let title = "Server RSS vs idle connections";
    text.push('\n');
    text.push_str(&chart::save(
        out,
        "idle-rss",
        title,
        &chart::lines(&Axes::new(title, "idle connections", "RSS (MiB)"), &series),
    ));
    chart::json(
        "idle",
        &serde_json::json!(
            curves
                .iter()
                .map(|c| serde_json::json!({"target": c.name, "points": c.points, "slope_kib_per_conn": c.slope()}))
                .collect::<Vec<_>>()
        ),
    );
    if let [hotsock, peer] = &curves[..] {
        text.push_str(&format!(
            "\n**hotsock slope / Node.js ws slope: {:.2}** (target for hotsock: at most 16 KiB per idle connection; \
             {} connections held).\n\n",
            hotsock.slope() / peer.slope().max(0.001),
            counts.last().copied().unwrap_or(0)
        ));
    }
    for curve in &curves {
        text.push_str(&curve.cpu.markdown(&format!("opening and holding the connections, {}", curve.name)));
    }
    text.push('\n');
    report::write_section(out, "idle", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}
