//! The load generator: ping-pong and pipelined connections with latency
//! histograms and CPU use. Loopback only, bounded in time.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::procfs::{CpuMeter, CpuUse};

/// Warm-up before measuring, so connection setup and lazy allocation are
/// not counted.
const WARMUP: Duration = Duration::from_millis(500);
/// Connections opened at once while setting up.
const CONNECT_BATCH: usize = 100;
/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) struct Params {
    pub(crate) connections: usize,
    pub(crate) seconds: u64,
    pub(crate) size: usize,
}

pub(crate) struct Throughput {
    pub(crate) msgs_per_s: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    /// CPU of the server and of this load generator while measuring.
    pub(crate) cpu: CpuUse,
}

impl Throughput {
    /// Server CPU (with its workers) per message answered, in µs: the CPU
    /// was measured over the same span the messages were counted in.
    pub(crate) fn server_cpu_us_per_msg(&self) -> f64 {
        self.cpu.server_cores * 1e6 / self.msgs_per_s.max(1e-9)
    }

    fn new(count: u64, seconds: u64, latency: &Histogram<u64>, cpu: CpuUse) -> Self {
        Throughput {
            msgs_per_s: count as f64 / seconds.max(1) as f64,
            p50_us: latency.value_at_quantile(0.5),
            p99_us: latency.value_at_quantile(0.99),
            cpu,
        }
    }
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

pub(crate) type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket library's read buffer for the bench's own sockets: its
/// clients, the ceiling and the floor. The library reads the socket
/// through it and zero-fills it before every read, so its default, 128 KiB,
/// made 10,000 fan-out members fault in and clear 1.3 GB in the first
/// second and every read of every scenario clear 128 KiB. 4 KiB still
/// takes a pipelined batch (32 messages of 64 B) in one read. (hotsock
/// itself reads sockets through 64 KiB per thread and keeps
/// `limits.read_buffer_bytes`, 1 KiB, per connection.)
pub(crate) const READ_BUFFER_BYTES: usize = 4 << 10;

/// Loopback source addresses the clients take turns on (127.0.0.1 and the
/// next ones). `connect(2)` picks a local port by trying candidates
/// against the connections already open to the same address and port: with
/// 18,000 players waiting on one server, `__inet_check_established` and
/// `__inet_hash_connect` were 48% of the load generator's CPU, and each
/// connect cost more the more were open, so pairing seemed to slow with
/// the pool when it was the generator that did. Each source address has
/// its own ports.
pub(crate) const SOURCE_ADDRESSES: u32 = 64;
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);

/// Opens one load-generator connection (every scenario's clients), from
/// the next loopback source address when it goes to a loopback one.
pub(crate) async fn connect(url: &str) -> Result<Client> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let request = url.into_client_request().with_context(|| format!("connect {url}"))?;
    let uri = request.uri();
    let target = match (uri.scheme_str(), uri.host().and_then(|h| h.parse::<Ipv4Addr>().ok()), uri.port_u16()) {
        (Some("ws"), Some(host), Some(port)) if host.is_loopback() => Some(SocketAddrV4::new(host, port)),
        _ => None,
    };
    let Some(target) = target else {
        let (client, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .with_context(|| format!("connect {url}"))?;
        return Ok(client);
    };
    let turn = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCE_ADDRESSES;
    let source = Ipv4Addr::from(u32::from(Ipv4Addr::LOCALHOST) + turn);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0))).with_context(|| format!("bind {source}"))?;
    let stream =
        socket.connect(SocketAddr::V4(target)).await.with_context(|| format!("connect {url} from {source}"))?;
    let (client, _) = tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config))
        .await
        .with_context(|| format!("connect {url}"))?;
    Ok(client)
}

/// `count` connections to `path`, opened `batch` at a time.
pub(crate) async fn connect_many(port: u16, path: &str, count: usize, batch: usize) -> Result<Vec<Client>> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let mut clients = Vec::with_capacity(count);
    while clients.len() < count {
        let batch = batch.min(count - clients.len());
        let connects = (0..batch).map(|_| connect(&url));
        for result in futures_util::future::join_all(connects).await {
            clients.push(result?);
        }
    }
    Ok(clients)
}

pub(crate) async fn ping_pong(port: u16, params: &Params, server_pid: u32) -> Result<Throughput> {
    let clients = connect_many(port, "/bench", params.connections, CONNECT_BATCH).await?;
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
    let cpu = measure_cpu(server_pid, measure_from, end).await;
    gather(tasks, params.seconds, cpu).await
}

/// CPU use between `from` and `to`.
async fn measure_cpu(server_pid: u32, from: Instant, to: Instant) -> CpuUse {
    tokio::time::sleep_until(from.into()).await;
    let meter = CpuMeter::start(server_pid);
    tokio::time::sleep_until(to.into()).await;
    meter.stop()
}

/// Each connection keeps `depth` messages in flight (a reply frees a slot
/// for the next message) for `seconds`. Shows what batching does: many
/// frames per write and per read. Latency is each message's time from send
/// to its echo (replies come back in order).
pub(crate) async fn pipelined(
    port: u16,
    connections: usize,
    depth: usize,
    seconds: u64,
    server_pid: u32,
) -> Result<Throughput> {
    let clients = connect_many(port, "/bench", connections, CONNECT_BATCH).await?;
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in clients {
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            let mut in_flight = std::collections::VecDeque::with_capacity(depth);
            for _ in 0..depth {
                in_flight.push_back(Instant::now());
                sink.feed(Message::text("x".repeat(64))).await?;
            }
            sink.flush().await?;
            let mut histogram = Histogram::<u64>::new(3).context("histogram")?;
            let mut count = 0u64;
            while let Some(message) = stream.next().await {
                if !matches!(message?, Message::Text(_)) {
                    continue;
                }
                let sent = in_flight.pop_front().context("a reply to a message never sent")?;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= start {
                    count += 1;
                    histogram.record(now.duration_since(sent).as_micros() as u64)?;
                }
                in_flight.push_back(Instant::now());
                sink.send(Message::text("x".repeat(64))).await?;
            }
            Ok::<_, anyhow::Error>((count, histogram))
        }));
    }
    let cpu = measure_cpu(server_pid, start, end).await;
    gather(tasks, seconds, cpu).await
}

/// One connection's measured messages and their latencies.
type ConnTask = tokio::task::JoinHandle<Result<(u64, Histogram<u64>)>>;

/// Adds up the connections' counts and histograms.
async fn gather(tasks: Vec<ConnTask>, seconds: u64, cpu: CpuUse) -> Result<Throughput> {
    let mut total = Histogram::<u64>::new(3)?;
    let mut count = 0;
    for task in tasks {
        let (n, histogram) = task.await??;
        count += n;
        total.add(histogram)?;
    }
    Ok(Throughput::new(count, seconds, &total, cpu))
}
