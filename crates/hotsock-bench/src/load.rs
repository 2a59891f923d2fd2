//! The load generator: ping-pong connections with latency histograms, and
//! idle connections for memory. Loopback only, bounded in time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::procfs;

/// Warm-up before measuring, so connection setup and lazy allocation are
/// not counted.
const WARMUP: Duration = Duration::from_secs(1);
/// Connections opened at once while setting up.
const CONNECT_BATCH: usize = 100;
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Settling time before reading memory after opening idle connections.
const SETTLE: Duration = Duration::from_millis(500);

pub(crate) struct Params {
    pub(crate) connections: usize,
    pub(crate) seconds: u64,
    pub(crate) size: usize,
}

pub(crate) struct Throughput {
    pub(crate) msgs_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// CPU used by the server processes, in cores (1.0 = one core busy).
    pub(crate) server_cores: f64,
    /// CPU used by this load generator, in cores.
    pub(crate) client_cores: f64,
}

pub(crate) struct Memory {
    pub(crate) connections: usize,
    pub(crate) kib_per_conn: f64,
}

pub(crate) fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("server on port {port} did not start listening within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_many(port: u16, count: usize) -> Result<Vec<Client>> {
    let url = format!("ws://127.0.0.1:{port}/bench");
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = CONNECT_BATCH.min(count - clients.len());
        let connects = (0..batch).map(|_| tokio_tungstenite::connect_async(url.clone()));
        for result in futures_util::future::join_all(connects).await {
            clients.push(result.context("connect")?.0);
        }
    }
    Ok(clients)
}

pub(crate) async fn ping_pong(port: u16, params: &Params, server_pids: &[u32]) -> Result<Throughput> {
    let clients = connect_many(port, params.connections).await?;
    let payload = "x".repeat(params.size);
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs(params.seconds);
    let mut tasks = Vec::new();
    for mut client in clients {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).context("histogram")?;
            let mut count = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                client.send(Message::text(payload.clone())).await?;
                loop {
                    match client.next().await {
                        Some(Ok(Message::Text(_))) => break,
                        Some(Ok(_)) => {}
                        _ => bail!("connection ended during the benchmark"),
                    }
                }
                if sent >= measure_from {
                    histogram.record(sent.elapsed().as_micros() as u64)?;
                    count += 1;
                }
            }
            let _ = client.close(None).await;
            Ok::<_, anyhow::Error>((count, histogram))
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let (server_cpu0, client_cpu0) = (procfs::cpu_seconds(server_pids), procfs::cpu_seconds(&[std::process::id()]));
    tokio::time::sleep_until(end.into()).await;
    let (server_cpu1, client_cpu1) = (procfs::cpu_seconds(server_pids), procfs::cpu_seconds(&[std::process::id()]));
    let mut total = Histogram::<u64>::new(3)?;
    let mut count = 0;
    for task in tasks {
        let (n, histogram) = task.await??;
        count += n;
        total.add(histogram)?;
    }
    let seconds = params.seconds as f64;
    Ok(Throughput {
        msgs_per_s: count as f64 / seconds,
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        server_cores: (server_cpu1 - server_cpu0) / seconds,
        client_cores: (client_cpu1 - client_cpu0) / seconds,
    })
}

/// Each connection keeps `depth` messages in flight (a reply frees a slot
/// for the next message) for `seconds`; returns messages per second. Shows
/// what batching does: many frames per write and per read.
pub(crate) async fn pipelined(port: u16, connections: usize, depth: usize, seconds: u64) -> Result<f64> {
    let clients = connect_many(port, connections).await?;
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in clients {
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            for _ in 0..depth {
                sink.feed(Message::text("x".repeat(64))).await?;
            }
            sink.flush().await?;
            let mut count = 0u64;
            while let Some(message) = stream.next().await {
                if !matches!(message?, Message::Text(_)) {
                    continue;
                }
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= start {
                    count += 1;
                }
                sink.send(Message::text("x".repeat(64))).await?;
            }
            Ok::<_, anyhow::Error>(count)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / seconds as f64)
}

pub(crate) async fn idle_memory(port: u16, count: usize, server_pids: &[u32]) -> Result<Memory> {
    tokio::time::sleep(SETTLE).await;
    let before = procfs::rss_kib(server_pids);
    let clients = connect_many(port, count).await?;
    tokio::time::sleep(SETTLE).await;
    let after = procfs::rss_kib(server_pids);
    drop(clients);
    Ok(Memory { connections: count, kib_per_conn: after.saturating_sub(before) as f64 / count as f64 })
}
