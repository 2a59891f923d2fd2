//! One worker process, from spawn to exit: the readiness gate (Hello, then
//! Ready within `reload.ready_timeout_ms`), the socket pumps, the drain
//! deadline, and the report of how it ended.
//!
//! The task never decides what the process is for: the supervisor does, and
//! tells it only "drain by this deadline" or "die now". It attaches the
//! worker to its slot once Ready and detaches it (turning what it held into
//! redelivered work) as soon as its socket ends, before reporting `Gone`.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TableScope;
use bytes::BytesMut;
use futures_util::FutureExt;
use hotsock_protocol::{
    ClusterSpec, Decoder, ENV_WORKER_THREADS, Hello, PAYLOAD_MAX_BYTES, PROTOCOL_VERSION, Role, TableSpec, ToServer,
    ToWorker, capabilities,
};
use hotsock_table::Table;
use hotsock_table::link::{ReadHalf, WriteHalf};
use hotsock_table::sched::{self, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use crate::route::slot::{Attached, WorkerId};
use crate::route::tables;
use crate::shared::Shared;
use crate::supervise::exit::{self, Exit};
use crate::supervise::messages::{Control, Retire, WorkerEvent};
use crate::supervise::spawn::{SpawnSpec, StderrTail, forward_stderr};
use crate::wire::{ExitCause, KillReason};

/// Bytes encoded into one write to a worker socket.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// A writer buffer that grew past this (one huge message) is given back.
const WRITE_BUFFER_KEEP_BYTES: usize = 1 << 20;
/// Read buffer growth step for a worker socket.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Spare room below which the read buffer grows by `READ_CHUNK_BYTES`
/// before the next read. Decoded payloads (pushes waiting in outboxes)
/// keep slices of the buffer, so growing it means a fresh allocation:
/// growing before every read cost a 64 KiB malloc and free per batch (the
/// spare is never a whole chunk once anything was read). One chunk now
/// serves reads until less than this is left.
const READ_SPARE_MIN_BYTES: usize = 16 << 10;
/// How long a worker that closed its socket gets to exit before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(2);
/// Lines of a failed worker's stderr put in its report.
const WORKER_TAIL_LINES: usize = 10;
/// How long to wait for the rest of a dead worker's stderr for its report.
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// Why the read loop of a live worker ended, before the exit status is in.
#[derive(Debug)]
enum LoopEnd {
    /// The worker closed its socket (it exited, or is about to).
    Eof,
    /// It broke the protocol.
    Violation(String),
    /// The socket failed.
    Link(String),
    /// The supervisor ordered a kill.
    Kill(KillReason),
    /// No heartbeat answer in time.
    Unresponsive(Duration),
    /// Still running at its drain deadline.
    DrainDeadline,
}

/// Which process to start.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) program: PathBuf,
    pub(crate) worker: WorkerId,
}

/// Starts a worker task; returns the channel to control it.
pub(crate) fn launch(
    shared: Arc<Shared>,
    launch: Launch,
    events: mpsc::UnboundedSender<WorkerEvent>,
) -> mpsc::UnboundedSender<Control> {
    let (control, control_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut task = WorkerTask {
            shared,
            launch,
            control: control_rx,
            retire: None,
            was_ready: false,
            pid: None,
            events: events.clone(),
        };
        let exit = task.run(&events).await;
        let (worker, pid, was_ready) = (task.launch.worker, task.pid, task.was_ready);
        let at_unix_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let _ = events.send(WorkerEvent::Gone { worker, pid, exit, was_ready, at_unix_ms });
    });
    control
}

struct WorkerTask {
    shared: Arc<Shared>,
    launch: Launch,
    control: mpsc::UnboundedReceiver<Control>,
    /// Set once it is told to drain: what its clean exit is called.
    retire: Option<Retire>,
    was_ready: bool,
    /// Its process id, once spawned.
    pid: Option<u32>,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

impl WorkerTask {
    async fn run(&mut self, events: &mpsc::UnboundedSender<WorkerEvent>) -> Exit {
        let shared = self.shared.clone();
        let config = shared.config();
        let Launch { slot, generation, worker, .. } = self.launch;
        let role = if slot < config.workers.count { Role::Event } else { Role::Task };
        // An idle start (spawn.rs) ends at Ready, or at this bound if the
        // start takes longer.
        let idle_until = tokio::time::Instant::now() + Duration::from_millis(config.workers.start_idle_ms);
        let spec = SpawnSpec {
            program: self.launch.program.clone(),
            args: config.workers.command[1..].to_vec(),
            title: format!("hotsock-worker {} slot={slot} gen={generation}", role.name()),
            worker: true,
            cwd: None,
            env: vec![(ENV_WORKER_THREADS, config.workers.threads.to_string())],
            idle_until: (config.workers.start_idle_ms > 0).then_some(idle_until.into_std()),
        };
        // The idle start's bound runs from here: the spawn itself (exec
        // included) runs idle too, and the spawner ends it at the bound.
        let spawned = match shared.spawner.spawn(spec).await {
            Ok(spawned) => spawned,
            Err(error) => return not_ready(format!("cannot start worker: {error}")),
        };
        let mut child = spawned.child;
        let started_idle = spawned.started_idle;
        let pid = child.id();
        self.pid = pid;
        let _ = events.send(WorkerEvent::Spawned { worker, pid });
        let tail = StderrTail::default();
        let stderr_task = spawned.stderr.map(|stderr| {
            let prefix = format!("[slot {slot} gen {generation} pid {}]", pid.unwrap_or(0));
            tokio::spawn(forward_stderr(stderr, prefix, tail.clone()))
        });
        let with_tail = |why: String, stderr_task: Option<tokio::task::JoinHandle<()>>| async {
            if let Some(task) = stderr_task {
                let _ = timeout(STDERR_GRACE, task).await;
            }
            match tail.joined_last(WORKER_TAIL_LINES) {
                empty if empty.is_empty() => why,
                lines => format!("{why}; stderr: {lines}"),
            }
        };
        let Some(socket) = spawned.socket else {
            return kill(child, not_ready("worker spawned without a socket")).await;
        };
        // The table segments go first, as one byte with SCM_RIGHTS (the
        // socket is still blocking here; the byte fits its buffer).
        let files: Vec<&std::fs::File> = shared.tables.iter().map(|(_, table)| table.file()).collect();
        if let Err(error) = hotsock_table::send_files(&socket, &files) {
            return kill(child, not_ready(format!("cannot hand over the tables: {error}"))).await;
        }
        let (mut rd, mut wr) = match hotsock_table::link::split(socket) {
            Ok(halves) => halves,
            Err(error) => return kill(child, not_ready(format!("worker socket: {error}"))).await,
        };
        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            slot: slot as u32,
            generation,
            role,
            max_concurrency: config.workers.max_concurrency,
            handoff: shared.hub.handoff_state(slot),
            tables: shared.tables.iter().map(|(spec, _)| spec.clone()).collect(),
            cluster: config.cluster.as_ref().map(|cluster| ClusterSpec {
                redis: cluster.redis.clone(),
                prefix: cluster.prefix.clone(),
                node: shared.hub.cluster().map(|link| link.node.to_string()).unwrap_or_default(),
                tables: config
                    .tables
                    .iter()
                    .filter(|(_, table)| table.scope == TableScope::Cluster)
                    .map(|(name, table)| table.spec(name))
                    .collect(),
            }),
        };
        let ready_timeout = Duration::from_millis(config.reload.ready_timeout_ms);
        let idle_until = tokio::time::sleep_until(idle_until);
        tokio::pin!(idle_until);
        let mut idle = started_idle;
        let ready = {
            let handshake = timeout(ready_timeout, handshake(&mut rd, &mut wr, &mut buf, hello, &shared.tables));
            tokio::pin!(handshake);
            loop {
                tokio::select! {
                    ready = &mut handshake => break ready,
                    () = &mut idle_until, if idle => {
                        idle = false;
                        if let Err(why) = normal_policy(pid) {
                            // Tried again at Ready.
                            tracing::warn!(slot, pid, "{why}");
                        }
                    }
                    status = child.wait() => {
                        let why = format!("exited before Ready ({})", describe_wait(status));
                        return not_ready(with_tail(why, stderr_task).await);
                    }
                    control = self.control.recv() => {
                        let exit = match control {
                            Some(Control::Kill(reason)) => Exit::killed(reason),
                            _ => Exit::killed(KillReason::ServerStopping),
                        };
                        return kill(child, exit).await;
                    }
                }
            }
        };
        // Always, not only while `idle`: a thread a still-idle thread
        // created after the pass at the bound inherited the idle policy.
        // No worker serves at it.
        if started_idle && let Err(why) = normal_policy(pid) {
            return kill(child, not_ready(why)).await;
        }
        let caps = match ready {
            Ok(Ok(caps)) => caps,
            Ok(Err(why)) => {
                // A worker that dies during start-up closes its socket first;
                // its exit status says more than the EOF does.
                let why = match timeout(EXIT_GRACE, child.wait()).await {
                    Ok(status) => format!("exited before Ready ({})", describe_wait(status)),
                    Err(_) => why,
                };
                return kill(child, not_ready(with_tail(why, stderr_task).await)).await;
            }
            Err(_) => {
                let why = format!("no Ready within reload.ready_timeout_ms = {}", config.reload.ready_timeout_ms);
                return kill(child, not_ready(with_tail(why, stderr_task).await)).await;
            }
        };
        let (link, outbox) = mpsc::unbounded_channel();
        // What the worker task sends by itself, not through the hub: Pings
        // and the replies to table requests.
        let direct = link.clone();
        let handoff = caps & capabilities::HANDOFF != 0;
        shared.hub.attach(slot, Attached::new(worker, link, handoff), caps);
        self.was_ready = true;
        let _ = events.send(WorkerEvent::Ready { worker, pid, handoff });
        tracing::info!(slot, pid, generation, "worker ready");
        let writer = tokio::spawn(write_loop(wr, outbox));
        let end = self.read_loop(rd, buf, direct).await;
        writer.abort();
        // Nothing more can reach it; its events wait in the slot until the
        // exit status says whether they were to blame.
        shared.hub.disconnect(slot, worker);
        let exit = self.finish(child, end, stderr_task, &with_tail).await;
        shared.hub.detach(slot, worker, exit.cause.blames_running_events());
        // Whatever table rows it had locked when it ended are released.
        if let Some(pid) = pid {
            for (spec, table) in &shared.tables {
                let released = table.repair(pid);
                if released > 0 {
                    tracing::warn!(slot, pid, table = %spec.name, released, "released table locks of an ended worker");
                }
            }
        }
        exit
    }

    /// Turns how the read loop ended, and the exit status, into an exit
    /// cause; kills what is still running.
    async fn finish<F, Fut>(
        &mut self,
        mut child: Child,
        end: LoopEnd,
        stderr_task: Option<tokio::task::JoinHandle<()>>,
        with_tail: &F,
    ) -> Exit
    where
        F: Fn(String, Option<tokio::task::JoinHandle<()>>) -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let Launch { slot, generation, .. } = self.launch;
        let pid = child.id();
        // The drain order may still be queued behind the EOF: the slot sends
        // Stop as soon as the worker is idle, and the worker can exit before
        // this task has read the supervisor's Drain.
        while let Ok(control) = self.control.try_recv() {
            if let Control::Drain { retire, .. } = control {
                self.retire = Some(retire);
            }
        }
        // A crash shows as EOF, or as a reset when the worker died with
        // bytes of ours unread: either way its exit status tells more.
        let mut lost = "closed its socket and kept running".to_owned();
        let killed = match end {
            LoopEnd::Eof => None,
            LoopEnd::Link(error) => {
                lost = format!("{error}, and it kept running");
                None
            }
            LoopEnd::Violation(fault) => Some(Exit::new(ExitCause::ProtocolViolation, fault)),
            LoopEnd::Kill(reason) => Some(Exit::killed(reason)),
            LoopEnd::Unresponsive(silent) => {
                let key = if slot < self.shared.config().workers.count {
                    "workers.unresponsive_ms"
                } else {
                    "workers.task_unresponsive_ms"
                };
                let silent_ms = silent.as_millis() as u64;
                let why =
                    format!("no heartbeat answer for {silent_ms} ms ({key}): a handler is blocking its event loop");
                Some(Exit::new(ExitCause::Unresponsive { silent_ms }, why))
            }
            LoopEnd::DrainDeadline => Some(Exit::new(
                ExitCause::DrainDeadline,
                format!(
                    "still running reload.max_wait_ms = {} after it was told to drain",
                    self.shared.config().reload.max_wait_ms
                ),
            )),
        };
        if let Some(exit) = killed {
            tracing::error!(slot, pid, generation, "killing worker: {}", exit.describe());
            return kill(child, exit).await;
        }
        let status = match timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => status,
            Err(_) => return kill(child, Exit::new(ExitCause::LostLink, lost)).await,
        };
        match (status, self.retire) {
            (Ok(status), Some(Retire::Replaced)) if status.success() => Exit::new(ExitCause::Stopped, ""),
            (Ok(status), Some(Retire::Recycled)) if status.success() => Exit::new(ExitCause::Recycled, ""),
            (Ok(status), _) => {
                let detail = with_tail(describe_status(&status), stderr_task).await;
                Exit::new(exit::died(status.code(), status.signal(), &detail), detail)
            }
            (Err(error), _) => Exit::new(ExitCause::LostLink, format!("wait failed: {error}")),
        }
    }

    /// Reads frames until EOF, applying each batch to the hub, or until a
    /// fault, an order or a deadline ends the worker.
    async fn read_loop(
        &mut self,
        mut rd: ReadHalf,
        mut buf: BytesMut,
        direct: mpsc::UnboundedSender<ToWorker>,
    ) -> LoopEnd {
        let decoder = Decoder::new(PAYLOAD_MAX_BYTES);
        let Launch { slot, worker, .. } = self.launch;
        // Far enough away to never fire until a drain sets a real deadline.
        // One timer for the loop's life, moved by a drain: a fresh
        // `sleep_until` per batch registered and removed a timer entry
        // (the time driver's lock, twice) for every read from the worker.
        let drain = tokio::time::sleep_until(Instant::now() + Duration::from_secs(365 * 24 * 3600));
        tokio::pin!(drain);
        let config = self.shared.config();
        let workers = &config.workers;
        let max_requests = if slot < workers.count { workers.max_requests } else { workers.task_max_requests };
        let mut recycle_asked = false;
        // Heartbeats: a Ping every heartbeat_ms; no Pong for unresponsive_ms
        // means the worker's event loop is blocked.
        let unresponsive_ms = if slot < workers.count { workers.unresponsive_ms } else { workers.task_unresponsive_ms };
        let heartbeat = Duration::from_millis(if unresponsive_ms == 0 { 0 } else { workers.heartbeat_ms });
        let unresponsive = Duration::from_millis(unresponsive_ms);
        let mut ticker = tokio::time::interval(if heartbeat.is_zero() { Duration::from_secs(3600) } else { heartbeat });
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = Instant::now();
        let mut seq = 0u64;
        if !heartbeat.is_zero() {
            self.shared.hub.heartbeat(slot);
        }
        loop {
            let mut batch = Vec::new();
            let mut fault = None;
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => match ToServer::from_frame(frame) {
                        Ok(ToServer::Pong { .. }) => {
                            answered = Instant::now();
                            self.shared.hub.heartbeat(slot);
                        }
                        // Run here, not under the hub's lock (route/tables.rs);
                        // its Reply goes straight to this worker's writer.
                        Ok(ToServer::Table { request, table, op }) => {
                            let _ = direct.send(tables::execute(&self.shared.tables, request, table, op));
                        }
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
                let applied = match self.shared.hub.apply(slot, worker, batch) {
                    Ok(applied) => applied,
                    Err(fault) => return LoopEnd::Violation(fault.to_string()),
                };
                if applied.panics > 0 {
                    let _ = self.events.send(WorkerEvent::Panicked { worker, count: applied.panics });
                }
                if applied.handed_off {
                    let _ = self.events.send(WorkerEvent::HandedOff { slot });
                }
                if max_requests > 0 && !recycle_asked && self.shared.hub.acked_by(slot, worker) >= max_requests {
                    recycle_asked = true;
                    let _ = self.events.send(WorkerEvent::Recycle { worker });
                }
            }
            if let Some(fault) = fault {
                return LoopEnd::Violation(fault);
            }
            if buf.capacity() - buf.len() < READ_SPARE_MIN_BYTES {
                buf.reserve(READ_CHUNK_BYTES);
            }
            tokio::select! {
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) => return LoopEnd::Eof,
                    Ok(_) => {}
                    Err(e) => return LoopEnd::Link(format!("socket error: {e}")),
                },
                control = self.control.recv() => match control {
                    Some(Control::Drain { deadline: by, retire }) => {
                        self.retire = Some(retire);
                        if by < drain.deadline() {
                            drain.as_mut().reset(by);
                        }
                    }
                    Some(Control::Kill(reason)) => return LoopEnd::Kill(reason),
                    // The supervisor is gone: the server is exiting.
                    None => return LoopEnd::Kill(KillReason::ServerStopping),
                },
                _ = ticker.tick(), if !heartbeat.is_zero() => {
                    // Stale only if no answer is waiting unread either (this
                    // loop itself may have been slow to read).
                    let pending = matches!(rd.read_buf(&mut buf).now_or_never(), Some(Ok(n)) if n > 0);
                    if answered.elapsed() > unresponsive && !pending {
                        return LoopEnd::Unresponsive(answered.elapsed());
                    }
                    seq += 1;
                    let _ = direct.send(ToWorker::Ping { seq });
                }
                () = &mut drain => return LoopEnd::DrainDeadline,
            }
        }
    }
}

async fn kill(mut child: Child, exit: Exit) -> Exit {
    let _ = child.start_kill();
    let _ = child.wait().await;
    exit
}

fn not_ready(why: impl Into<String>) -> Exit {
    Exit::new(ExitCause::NotReady, why)
}

/// Sends Hello and waits for Ready; returns the worker's capabilities.
async fn handshake(
    rd: &mut ReadHalf,
    wr: &mut WriteHalf,
    buf: &mut BytesMut,
    hello: Hello,
    shared_tables: &[(TableSpec, Table)],
) -> Result<u32, String> {
    let mut out = BytesMut::new();
    ToWorker::Hello(hello).encode(&mut out);
    wr.write_all(&out).await.map_err(|e| format!("cannot send Hello: {e}"))?;
    let decoder = Decoder::new(PAYLOAD_MAX_BYTES);
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(|e| format!("malformed frame before Ready: {e}"))? {
            return match ToServer::from_frame(frame) {
                // Start-up code may use the tables, as a Rust worker's
                // `on_worker_start` does on its own mapping.
                Ok(ToServer::Table { request, table, op }) => {
                    out.clear();
                    tables::execute(shared_tables, request, table, op).encode(&mut out);
                    wr.write_all(&out).await.map_err(|e| format!("cannot answer a table request: {e}"))?;
                    continue;
                }
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

/// Encodes everything queued for the worker into one buffer per wake-up and
/// writes it with one call.
async fn write_loop(mut wr: WriteHalf, mut outbox: mpsc::UnboundedReceiver<ToWorker>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    while let Some(first) = outbox.recv().await {
        // Let the connection tasks that are ready run first: their events
        // then go in this write too, one system call and one wake-up of the
        // worker for all of them instead of one per event.
        tokio::task::yield_now().await;
        first.encode(&mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match outbox.try_recv() {
                Ok(message) => message.encode(&mut buf),
                Err(_) => break,
            }
        }
        if let Err(error) = wr.write_all(&buf).await {
            // A worker that left is the read loop's to report; anything
            // else would otherwise end the link without a word.
            if !matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                tracing::warn!("cannot write to a worker: {error}");
            }
            return;
        }
        buf.clear();
        if buf.capacity() > WRITE_BUFFER_KEEP_BYTES {
            buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        }
    }
}

/// Gives every thread of a worker that started idle (spawn.rs) the normal
/// scheduling policy.
fn normal_policy(pid: Option<u32>) -> Result<(), String> {
    let Some(pid) = pid else { return Ok(()) };
    match sched::set_process_policy(pid, Policy::Normal) {
        Ok(_) => Ok(()),
        // It has exited; its task sees that next.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(format!("cannot give the worker the normal CPU scheduling policy back: {error}")),
    }
}

fn describe_wait(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => describe_status(&status),
        Err(error) => format!("wait failed: {error}"),
    }
}

fn describe_status(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = nix::sys::signal::Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown");
            format!("killed by signal {signal} ({name})")
        }
        _ => "exited".into(),
    }
}
