//! Worker processes: spawning them, speaking Hello/Ready, moving frames
//! between their sockets and the hub, and restarting them when they die.
//!
//! Theory of operation. Each slot has one long-running task (`run_slot`)
//! that starts a worker, waits for Ready, attaches it to the hub, pumps its
//! socket until EOF, detaches it, and starts the next one after a back-off.
//! The slot, not the process, owns unacknowledged events (see `hub.rs`), so
//! a crash costs a restart and a redelivery, never an event.
//!
//! Every process is spawned by one dedicated thread (`Spawner`) that lives as
//! long as the server: the parent-death signal a worker sets is tied to the
//! thread that forked it, so that thread must not be a pool thread that
//! exits when idle. The worker's end of its socket becomes its standard
//! input (fd 0), which the worker claims without any `unsafe`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hotsock_protocol::{
    Decoder, ENV_SERVER_PID, ENV_WORKER_FD, Hello, PAYLOAD_MAX_BYTES, PROTOCOL_VERSION, Role, ToServer, ToWorker,
    capabilities,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout};

use crate::server::Shared;
use crate::status::{WorkerState, rss_kib};

/// Bytes encoded into one write to a worker socket.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A writer buffer that grew past this (one huge message) is given back.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;
/// Read buffer growth step for a worker socket.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// How long a worker that closed its socket gets to exit before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Delay before the second restart in a row; doubles up to the maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// `argv[0]`, which `ps` shows: role, slot and generation.
    pub(crate) title: String,
}

type SpawnResult = io::Result<(Child, StdUnixStream)>;

struct SpawnJob {
    spec: SpawnSpec,
    reply: oneshot::Sender<SpawnResult>,
}

/// The one thread that forks (see the module docs).
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: std::sync::mpsc::Sender<SpawnJob>,
}

impl std::fmt::Debug for SpawnJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnJob").field("spec", &self.spec).finish()
    }
}

impl Spawner {
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new().name("hotsock-spawner".into()).spawn(move || {
            // tokio's Child needs the runtime's process driver.
            let _runtime = runtime.enter();
            while let Ok(job) = rx.recv() {
                let _ = job.reply.send(spawn_one(&job.spec));
            }
        })?;
        Ok(Spawner { jobs })
    }

    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> SpawnResult {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(SpawnJob { spec, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn_one(spec: &SpawnSpec) -> SpawnResult {
    let (ours, theirs) = StdUnixStream::pair()?;
    let mut command = tokio::process::Command::new(&spec.program);
    command
        .args(&spec.args)
        .arg0(&spec.title)
        .env(ENV_WORKER_FD, "0")
        .env(ENV_SERVER_PID, std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        // Own process group: a Ctrl-C in the terminal reaches the server,
        // which stops workers gracefully, instead of killing them mid-event.
        .process_group(0)
        .kill_on_drop(true);
    // The Command holds our copy of the worker's end; dropping it after the
    // spawn leaves the worker as its only owner, so its exit means EOF.
    let child = command.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())));
    drop(command);
    Ok((child?, ours))
}

/// How one worker process ended.
#[derive(Debug)]
enum Ended {
    /// Exited cleanly after being told to stop.
    Stopped,
    /// Died or exited on its own.
    Exited(String),
    /// Never became Ready.
    NotReady(String),
}

impl Ended {
    fn describe(&self) -> String {
        match self {
            Ended::Stopped => "stopped".into(),
            Ended::Exited(why) => why.clone(),
            Ended::NotReady(why) => format!("not ready: {why}"),
        }
    }
}

/// Keeps one slot filled with a worker until the server stops.
pub(crate) async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let workers = &shared.config.workers;
    let window = Duration::from_millis(workers.crash_loop_window_ms);
    let backoff_max = Duration::from_millis(workers.restart_backoff_max_ms);
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut consecutive = 0u32;
    loop {
        if shared.is_retiring() {
            return;
        }
        shared.hub.update_status(slot, |s| {
            s.state = WorkerState::Starting;
            s.pid = None;
        });
        let started = Instant::now();
        let ended = run_one(&shared, slot).await;
        let crashed = !matches!(ended, Ended::Stopped);
        shared.hub.update_status(slot, |s| {
            s.state = WorkerState::Exited;
            s.rss_kib = None;
            s.last_exit = Some(ended.describe());
            s.crashes += u64::from(crashed);
        });
        if shared.is_retiring() {
            return;
        }
        tracing::warn!(slot, "worker ended: {}; restarting", ended.describe());
        let now = Instant::now();
        crashes.push_back(now);
        while crashes.front().is_some_and(|t| now.duration_since(*t) > window) {
            crashes.pop_front();
        }
        let looping = crashes.len() >= workers.crash_loop_count as usize;
        consecutive = if now.duration_since(started) > window { 1 } else { consecutive + 1 };
        shared.hub.update_status(slot, |s| s.crash_loop = looping);
        // The first restart is immediate (a single crash should cost as
        // little as possible); repeated ones back off exponentially.
        let delay = if looping {
            tracing::error!(
                slot,
                crashes = crashes.len(),
                "worker is crash-looping; restarting at the slowest back-off"
            );
            backoff_max
        } else if consecutive <= 1 {
            Duration::ZERO
        } else {
            RESTART_BACKOFF_MIN.saturating_mul(1 << (consecutive - 2).min(16)).min(backoff_max)
        };
        let mut retire = shared.retire_signal();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = crate::server::raised(&mut retire) => return,
        }
    }
}

async fn run_one(shared: &Shared, slot: usize) -> Ended {
    let config = &shared.config;
    let generation = 1;
    let spec = SpawnSpec {
        program: config.worker_program(),
        args: config.workers.command[1..].to_vec(),
        title: format!("hotsock-worker {} slot={slot} gen={generation}", Role::Event.name()),
    };
    let (mut child, stream) = match shared.spawner.spawn(spec).await {
        Ok(spawned) => spawned,
        Err(error) => return Ended::NotReady(format!("cannot start worker: {error}")),
    };
    let pid = child.id();
    shared.hub.update_status(slot, |s| {
        s.pid = pid;
        s.generation = generation;
    });
    let stream = match stream.set_nonblocking(true).and_then(|()| UnixStream::from_std(stream)) {
        Ok(stream) => stream,
        Err(error) => return Ended::NotReady(format!("worker socket: {error}")),
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        slot: slot as u32,
        generation,
        role: Role::Event,
        max_concurrency: config.workers.max_concurrency,
    };
    let ready_timeout = Duration::from_millis(config.reload.ready_timeout_ms);
    let ready = tokio::select! {
        ready = timeout(ready_timeout, handshake(&mut rd, &mut wr, &mut buf, hello)) => ready,
        status = child.wait() => {
            return Ended::NotReady(format!("exited before Ready ({})", describe_status(status)));
        }
    };
    let handles_handshakes = match ready {
        Ok(Ok(caps)) => caps & capabilities::HANDSHAKE != 0,
        Ok(Err(why)) => return kill(child, Ended::NotReady(why)).await,
        Err(_) => {
            let why = format!("no Ready within reload.ready_timeout_ms = {}", config.reload.ready_timeout_ms);
            return kill(child, Ended::NotReady(why)).await;
        }
    };
    let (link, outbox) = mpsc::unbounded_channel();
    shared.hub.attach(slot, link, handles_handshakes);
    shared.hub.update_status(slot, |s| {
        s.state = WorkerState::Ready;
        s.rss_kib = pid.and_then(rss_kib);
    });
    tracing::info!(slot, pid, generation, "worker ready");
    let writer = tokio::spawn(write_loop(wr, outbox));
    let read = read_loop(shared, slot, rd, buf).await;
    shared.hub.detach(slot);
    writer.abort();
    match read {
        Err(fault) => {
            tracing::error!(slot, pid, "killing worker: {fault}");
            kill(child, Ended::Exited(format!("killed: {fault}"))).await
        }
        Ok(()) => {
            let status = match timeout(EXIT_GRACE, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            match status {
                Ok(status) if status.success() && shared.is_retiring() => Ended::Stopped,
                status => Ended::Exited(describe_status(status)),
            }
        }
    }
}

async fn kill(mut child: Child, ended: Ended) -> Ended {
    let _ = child.start_kill();
    let _ = child.wait().await;
    ended
}

/// Sends Hello and waits for Ready; returns the worker's capabilities.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    buf: &mut BytesMut,
    hello: Hello,
) -> Result<u32, String> {
    let mut out = BytesMut::new();
    ToWorker::Hello(hello).encode(&mut out);
    wr.write_all(&out).await.map_err(|e| format!("cannot send Hello: {e}"))?;
    let decoder = Decoder::new(PAYLOAD_MAX_BYTES);
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(|e| format!("malformed frame before Ready: {e}"))? {
            return match ToServer::from_frame(frame) {
                Ok(ToServer::Ready(ready)) if ready.protocol_version == PROTOCOL_VERSION => Ok(ready.capabilities),
                Ok(ToServer::Ready(ready)) => Err(format!(
                    "worker speaks protocol version {}, this server speaks {PROTOCOL_VERSION}; rebuild the worker against a matching hotsock-worker",
                    ready.protocol_version
                )),
                Ok(other) => Err(format!("first frame must be Ready, got {other:?}")),
                Err(e) => Err(format!("malformed Ready: {e}")),
            };
        }
        let read = rd.read_buf(buf).await.map_err(|e| format!("socket error before Ready: {e}"))?;
        if read == 0 {
            return Err("closed its socket before Ready".into());
        }
    }
}

/// Reads frames until EOF, applying each batch to the hub. `Err` is a fault
/// that warrants killing the worker.
async fn read_loop(shared: &Shared, slot: usize, mut rd: OwnedReadHalf, mut buf: BytesMut) -> Result<(), String> {
    let decoder = Decoder::new(PAYLOAD_MAX_BYTES);
    let mut kill = shared.kill_signal();
    loop {
        let mut batch = Vec::new();
        let mut fault = None;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => match ToServer::from_frame(frame) {
                    Ok(message) => batch.push(message),
                    Err(e) => {
                        fault = Some(format!("malformed frame: {e}"));
                        break;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    fault = Some(format!("malformed frame: {e}"));
                    break;
                }
            }
        }
        // Apply what was valid before a fault: its acks and pushes are real.
        if !batch.is_empty() {
            shared.hub.apply(slot, batch).map_err(|e| e.0)?;
        }
        if let Some(fault) = fault {
            return Err(fault);
        }
        buf.reserve(READ_CHUNK_BYTES);
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("socket error: {e}")),
            },
            () = crate::server::raised(&mut kill) => return Err("still running after reload.max_wait_ms during stop".into()),
        }
    }
}

/// Encodes everything queued for the worker into one buffer per wake-up and
/// writes it with one call.
async fn write_loop(mut wr: OwnedWriteHalf, mut outbox: mpsc::UnboundedReceiver<ToWorker>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    while let Some(first) = outbox.recv().await {
        first.encode(&mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match outbox.try_recv() {
                Ok(message) => message.encode(&mut buf),
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
    }
}

fn describe_status(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => {
                let name = nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown");
                format!("killed by signal {signal} ({name})")
            }
            _ => "exited".into(),
        },
        Err(error) => format!("wait failed: {error}"),
    }
}
