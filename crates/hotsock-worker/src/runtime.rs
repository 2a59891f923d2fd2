//! The worker's event loop: Hello/Ready, then read frames, run handlers
//! (serially per connection, concurrently across connections), acknowledge,
//! and write everything back in batches.
//!
//! It must never run two events of one connection at once, and must
//! acknowledge an event only after its handler returned (or panicked).

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use hotsock_protocol::{
    Decoder, ENV_SERVER_PID, ENV_WORKER_FD, ENV_WORKER_THREADS, Hello, PROTOCOL_VERSION, Ready, ToServer, ToWorker,
    capabilities,
};
use hotsock_table::link::{ReadHalf, WriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::app::{Close, Decision, Finish, Handshake, Join, Leave, Message, Open, Task};
use crate::cluster_table::ClusterTable;
use crate::ctx::{Ctx, Out};
use crate::table::Table;
use crate::{App, Error};

/// Bytes encoded into one write to the server.
const WRITE_BATCH_BYTES: usize = 256 << 10;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// Spare room below which the read buffer grows by `READ_CHUNK_BYTES`
/// before the next read. Decoded frames keep slices of the buffer, so
/// growing it means a fresh allocation; growing before every read (the
/// spare is never a whole chunk once anything was read) cost a 64 KiB
/// malloc and free per batch, and freeing a chunk that size makes glibc
/// consolidate its free lists (`perf`: malloc_consolidate ~3% of an echo
/// worker). One chunk now serves reads until less than this is left.
const READ_SPARE_MIN_BYTES: usize = 16 << 10;
/// How long the runtime waits for stray tasks when the worker exits.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// Runs `app` as a hotsock worker until the server stops it or goes away.
/// Call it from `main`; it builds its own tokio runtime.
pub fn run<A: App>(app: A) -> Result<(), Error> {
    if std::env::var_os(ENV_WORKER_FD).is_none() {
        return Err(Error::NotUnderHotsock);
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    watch_parent()?;
    // The server hands us our socket as standard input. Take a copy, then
    // point fd 0 at /dev/null so user code that reads stdin cannot steal
    // protocol bytes.
    let socket = std::io::stdin().as_fd().try_clone_to_owned()?;
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    let socket = StdUnixStream::from(socket);
    // First byte: the shared tables' segments (SCM_RIGHTS), read while the
    // socket still blocks and before any plain read could discard them.
    let files = hotsock_table::receive_files(&socket)?;
    socket.set_nonblocking(true)?;
    let runtime = match worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        threads => tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?,
    };
    let result = runtime.block_on(serve(Arc::new(app), socket, files));
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// `workers.threads`, as the server passes it (1 when absent or unreadable:
/// one event loop).
fn worker_threads() -> usize {
    std::env::var(ENV_WORKER_THREADS).ok().and_then(|n| n.parse::<usize>().ok()).filter(|n| *n >= 1).unwrap_or(1)
}

/// Asks the kernel to kill us when the server dies, then checks the server
/// did not die before we asked (the parent would then be someone else).
fn watch_parent() -> Result<(), Error> {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let expected = std::env::var(ENV_SERVER_PID).ok().and_then(|pid| pid.parse::<i32>().ok());
    match expected {
        Some(pid) if nix::unistd::getppid().as_raw() != pid => Err(Error::Disconnected),
        _ => Ok(()),
    }
}

async fn serve<A: App>(app: Arc<A>, socket: StdUnixStream, files: Vec<std::fs::File>) -> Result<(), Error> {
    let (mut rd, mut wr) = hotsock_table::link::split(socket)?;
    let decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let hello = read_hello(&mut rd, &mut buf, &decoder).await?;
    if hello.protocol_version != PROTOCOL_VERSION {
        // Answer anyway so the server can name the mismatch instead of
        // timing out.
        let _ = write_ready(&mut wr, 0).await;
        return Err(Error::VersionMismatch { server: hello.protocol_version, sdk: PROTOCOL_VERSION });
    }
    set_process_name(&hello);
    let tables = open_tables(&hello, files)?;
    let (out, outbox) = mpsc::unbounded_channel();
    let (unclaimed, mut unclaimed_rx) = mpsc::unbounded_channel::<Finish>();
    let node = hello.cluster.as_ref().map(|cluster| cluster.node.clone());
    let ctx = Ctx::new(out.clone(), hello.slot, hello.generation, hello.role, tables, unclaimed, node);
    {
        // Results of dropped task handles go to on_finish.
        let (app, ctx) = (app.clone(), ctx.clone());
        tokio::spawn(async move {
            while let Some(finish) = unclaimed_rx.recv().await {
                let task = finish.task;
                if let Err(panic) = AssertUnwindSafe(app.on_finish(&ctx, finish)).catch_unwind().await {
                    tracing::error!(task, "on_finish panicked: {}", panic_message(&*panic));
                }
                ctx.finished_one();
            }
        });
    }
    // Ready means "this code started": on_worker_start runs first, and a
    // panic in it keeps the worker from ever taking traffic.
    if let Err(panic) = AssertUnwindSafe(app.on_worker_start(&ctx, hello.handoff.clone())).catch_unwind().await {
        tracing::error!("on_worker_start panicked: {}", panic_message(&*panic));
        std::process::exit(1);
    }
    let mut caps = if A::HANDLES_HANDSHAKE { capabilities::HANDSHAKE } else { 0 };
    if A::HANDOFF {
        caps |= capabilities::HANDOFF;
    }
    if A::CHANNEL_EVENTS {
        caps |= capabilities::CHANNEL_EVENTS;
    }
    write_ready(&mut wr, caps).await?;
    let writer = tokio::spawn(write_loop(wr, outbox));
    let runner = Arc::new(Runner {
        app: app.clone(),
        ctx: ctx.clone(),
        lanes: Mutex::new(HashMap::default()),
        permits: Semaphore::new(hello.max_concurrency.max(1) as usize),
        active: AtomicUsize::new(0),
        stopped: std::sync::atomic::AtomicBool::new(false),
        inline: worker_threads() == 1,
    });
    // Stop and Snapshot wait for running handlers in their own task, so
    // this loop keeps reading (handlers may be awaiting query replies).
    let (stopped_tx, mut stopped) = mpsc::channel::<()>(1);
    loop {
        while let Some(frame) = decoder.decode(&mut buf)? {
            match ToWorker::from_frame(frame)? {
                ToWorker::Reply { id, not_found, body } => ctx.resolve(id, not_found, body),
                ToWorker::Snapshot => {
                    let runner = runner.clone();
                    tokio::spawn(async move {
                        runner.wait_idle().await;
                        let state = runner.stop_once(true).await;
                        runner.ctx.send_handoff(state);
                    });
                }
                ToWorker::Stop => {
                    let (runner, out, stopped_tx) = (runner.clone(), out.clone(), stopped_tx.clone());
                    tokio::spawn(async move {
                        runner.wait_idle().await;
                        runner.stop_once(false).await;
                        let (done, flushed) = oneshot::channel();
                        let _ = out.send(Out::Flush(done));
                        let _ = flushed.await;
                        let _ = stopped_tx.send(()).await;
                    });
                }
                ToWorker::Finish { task, orphaned, failed, payload } => {
                    if let Some(finish) = ctx.deliver(Finish { task, orphaned, failed, payload }) {
                        ctx.unclaimed(finish);
                    }
                }
                // Answered here, in the loop handlers share: a handler that
                // blocks the loop stops the answers, which is the point.
                ToWorker::Ping { seq } => {
                    let _ = out.send(Out::Frame(ToServer::Pong { seq }));
                }
                ToWorker::Hello(_) => return Err(Error::NoHello("a second Hello".into())),
                event => runner.submit(event),
            }
        }
        if buf.capacity() - buf.len() < READ_SPARE_MIN_BYTES {
            buf.reserve(READ_CHUNK_BYTES);
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                if read? == 0 {
                    // The server is gone; nothing we compute can reach anyone.
                    ctx.fail_all();
                    return Ok(());
                }
            }
            _ = stopped.recv() => {
                writer.abort();
                return Ok(());
            }
        }
    }
}

/// Maps the tables Hello declares, from the segments received before it,
/// and opens the cluster-wide ones (they connect to Redis on first use).
fn open_tables(hello: &Hello, files: Vec<std::fs::File>) -> Result<Vec<Table>, Error> {
    if files.len() != hello.tables.len() {
        return Err(Error::Tables(format!("{} segments for {} declared tables", files.len(), hello.tables.len())));
    }
    let owner = hotsock_table::Owner {
        pid: std::process::id(),
        slot: u16::try_from(hello.slot).unwrap_or(u16::MAX - 1),
        generation: hello.generation as u16,
    };
    let mut tables: Vec<Table> = hello
        .tables
        .iter()
        .zip(files)
        .map(|(spec, file)| {
            let columns = spec
                .columns
                .iter()
                .map(|(name, ty)| {
                    hotsock_table::ColumnType::parse(ty)
                        .map(|ty| hotsock_table::Column { name: name.clone(), ty })
                        .map_err(|e| Error::Tables(format!("table {}: {e}", spec.name)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let schema = hotsock_table::Schema { rows: spec.rows, columns };
            hotsock_table::Table::open(&spec.name, file, &schema, owner)
                .map(Table::shared)
                .map_err(|e| Error::Tables(format!("table {}: {e}", spec.name)))
        })
        .collect::<Result<_, _>>()?;
    if let Some(cluster) = &hello.cluster {
        for spec in &cluster.tables {
            let table = ClusterTable::new(&cluster.redis, &cluster.prefix, spec).map_err(Error::Tables)?;
            tables.push(Table::cluster(table));
        }
    }
    Ok(tables)
}

async fn read_hello(rd: &mut ReadHalf, buf: &mut BytesMut, decoder: &Decoder) -> Result<Hello, Error> {
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return match ToWorker::from_frame(frame)? {
                ToWorker::Hello(hello) => Ok(hello),
                other => Err(Error::NoHello(format!("{other:?}"))),
            };
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(Error::Disconnected);
        }
    }
}

async fn write_ready(wr: &mut WriteHalf, capabilities: u32) -> Result<(), Error> {
    let mut buf = BytesMut::new();
    ToServer::Ready(Ready { protocol_version: PROTOCOL_VERSION, capabilities }).encode(&mut buf);
    wr.write_all(&buf).await?;
    Ok(())
}

/// Shows role, slot and generation in `ps -o comm` / `top` (15 bytes max);
/// the server already put them in `argv[0]` for `ps -f`.
fn set_process_name(hello: &Hello) {
    let name = format!("hs-{}-{}-g{}", hello.role.name(), hello.slot, hello.generation);
    let name: String = name.chars().take(15).collect();
    if let Ok(name) = CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Runs events: one lane (a queue and at most one running task) per
/// connection, and a semaphore over all lanes.
struct Runner<A> {
    app: Arc<A>,
    ctx: Ctx,
    /// Connections with an event running; the queue holds the ones after it.
    /// Keyed by the server's connection ids (counters), so hashed with
    /// foldhash: SipHash showed in every event's cost.
    lanes: Mutex<HashMap<u64, VecDeque<ToWorker>, foldhash::fast::RandomState>>,
    permits: Semaphore,
    /// Events received and not yet acknowledged.
    active: AtomicUsize,
    /// `on_worker_stop` ran (for a Snapshot) and no event came since: Stop
    /// does not run it again. An event (the worker was resumed) clears it.
    stopped: std::sync::atomic::AtomicBool,
    /// Handlers get their first poll in the read loop (see `submit`). Only
    /// on the one-thread runtime: with `workers.threads` > 1 that would
    /// run every handler on the read loop's thread instead of spreading
    /// them over the runtime's threads.
    inline: bool,
}

impl<A: App> Runner<A> {
    fn submit(self: &Arc<Self>, event: ToWorker) {
        let Some((conn, _)) = event.event() else { return };
        self.stopped.store(false, Ordering::Release);
        self.active.fetch_add(1, Ordering::AcqRel);
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = lanes.get_mut(&conn) {
            queue.push_back(event);
            return;
        }
        if !self.inline || redelivered(&event) {
            lanes.insert(conn, VecDeque::new());
            drop(lanes);
            let runner = self.clone();
            tokio::spawn(async move { runner.run_lane(conn, event).await });
            return;
        }
        drop(lanes);
        // The lane is free: run the handler here, in the read loop. Most
        // handlers (an echo, a push, a table operation in shared memory)
        // finish at their first poll, and then the event costs no task,
        // no lane entry and no scheduling (`perf`: spawning and the lane
        // map were 12% of an echo worker). One that waits (a query, a
        // task, a timer) goes on in a task of its own, which the lane's
        // later events queue behind as usual. The first poll ran with a
        // no-op waker; the task's own first poll registers its waker,
        // and every future re-checks its state when polled. Redelivered
        // events never run here (above): they keep the lane's yield
        // before whatever follows them.
        let runner = self.clone();
        let mut running = Box::pin(async move { runner.handle(event).await });
        if (&mut running).now_or_never().is_some() {
            self.one_done();
            return;
        }
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).insert(conn, VecDeque::new());
        let runner = self.clone();
        tokio::spawn(async move {
            running.await;
            runner.rest_of_lane(conn, false).await;
        });
    }

    async fn run_lane(self: Arc<Self>, conn: u64, first: ToWorker) {
        let was_redelivered = redelivered(&first);
        self.handle(first).await;
        self.rest_of_lane(conn, was_redelivered).await;
    }

    /// After one event of `conn`'s lane was handled: the lane's queued
    /// events, in order, then the lane is freed.
    async fn rest_of_lane(&self, conn: u64, mut was_redelivered: bool) {
        loop {
            self.one_done();
            let next = {
                let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
                let next = lanes.get_mut(&conn).and_then(VecDeque::pop_front);
                if next.is_none() {
                    lanes.remove(&conn);
                }
                next
            };
            let Some(next) = next else { return };
            // After a crash, let the writer put this event's ack on the
            // socket before the lane's next event starts: the server blames
            // the first unacknowledged event of a lane for a crash, so if
            // the next one takes the process down, this one must already
            // count as done. (The ack woke the writer; a yield lets it run
            // first.) Redelivered events are where crashes repeat; for the
            // rest the acks keep batching, and a finished event struck once
            // by a first crash is never dropped for it (the server runs an
            // event's last chance alone).
            if was_redelivered || redelivered(&next) {
                tokio::task::yield_now().await;
            }
            was_redelivered = redelivered(&next);
            self.handle(next).await;
        }
    }

    /// An event was handled (and acknowledged): the last one wakes
    /// whoever waits for the worker to be idle.
    fn one_done(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ctx.idle().notify_waiters();
        }
    }

    async fn handle(&self, event: ToWorker) {
        let Some((conn, id)) = event.event() else { return };
        // The semaphore is never closed, so acquire cannot fail.
        let _permit = self.permits.acquire().await;
        let (app, ctx) = (&*self.app, &self.ctx);
        let is_handshake = matches!(event, ToWorker::Handshake { .. });
        let is_task = matches!(event, ToWorker::Task { .. });
        let call = async move {
            match event {
                ToWorker::Handshake { conn, redelivered, request, .. } => {
                    let decision = app.on_handshake(ctx, Handshake { conn, redelivered, request }).await;
                    ctx.reply_handshake(conn, decision.0);
                }
                ToWorker::Open { conn, redelivered, .. } => app.on_open(ctx, Open { conn, redelivered }).await,
                ToWorker::Message { conn, redelivered, binary, data, .. } => {
                    app.on_message(ctx, Message { conn, redelivered, binary, data }).await
                }
                ToWorker::Close { conn, redelivered, code, reason, .. } => {
                    app.on_close(ctx, Close { conn, redelivered, code, reason }).await
                }
                ToWorker::Task { task, redelivered, payload, .. } => {
                    let result = app.on_task(ctx, Task { id: task, redelivered, payload }).await;
                    ctx.task_done(task, false, result);
                }
                ToWorker::Join { conn, redelivered, channel, .. } => {
                    app.on_join(ctx, Join { conn, redelivered, channel }).await
                }
                ToWorker::Leave { conn, redelivered, channel, .. } => {
                    app.on_leave(ctx, Leave { conn, redelivered, channel }).await
                }
                _ => {}
            }
        };
        if let Err(panic) = AssertUnwindSafe(call).catch_unwind().await {
            let message = panic_message(&*panic);
            tracing::error!(conn, event = id, "handler panicked: {message}");
            ctx.report_panic(conn, id, message.clone());
            if is_handshake {
                ctx.reply_handshake(conn, Decision::reject(500, "handshake handler failed").0);
            }
            if is_task {
                // The dispatcher gets the failure instead of waiting forever.
                ctx.task_done(conn, true, bytes::Bytes::from(message));
            }
        }
        ctx.ack(id);
    }

    /// Runs `on_worker_stop` (for Stop: unless a Snapshot already ran it
    /// and no event came since); returns its state.
    async fn stop_once(&self, snapshot: bool) -> Option<bytes::Bytes> {
        if self.stopped.swap(true, Ordering::AcqRel) && !snapshot {
            return None;
        }
        match AssertUnwindSafe(self.app.on_worker_stop(&self.ctx)).catch_unwind().await {
            Ok(state) => state,
            Err(panic) => {
                tracing::error!("on_worker_stop panicked: {}", panic_message(&*panic));
                None
            }
        }
    }

    /// Waits until no event handler and no `on_finish` is pending.
    async fn wait_idle(&self) {
        loop {
            let idle = self.ctx.idle().notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.active.load(Ordering::Acquire) == 0 && self.ctx.finishing() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Whether an event is a redelivery (an earlier worker died holding it).
fn redelivered(event: &ToWorker) -> bool {
    match event {
        ToWorker::Handshake { redelivered, .. }
        | ToWorker::Open { redelivered, .. }
        | ToWorker::Message { redelivered, .. }
        | ToWorker::Close { redelivered, .. }
        | ToWorker::Task { redelivered, .. }
        | ToWorker::Join { redelivered, .. }
        | ToWorker::Leave { redelivered, .. } => *redelivered,
        _ => false,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Encodes everything queued into one buffer per wake-up; acknowledgements
/// are coalesced into one `Ack` frame at the end of the batch, so an ack is
/// never sent before the pushes its handler made.
async fn write_loop(mut wr: WriteHalf, mut outbox: mpsc::UnboundedReceiver<Out>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut acks = Vec::new();
    while let Some(first) = outbox.recv().await {
        let mut flushed = Vec::new();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Out::Frame(message) => message.encode(&mut buf),
                Out::Ack(id) => acks.push(id),
                Out::Flush(done) => flushed.push(done),
            }
            if buf.len() < WRITE_BATCH_BYTES {
                next = outbox.try_recv().ok();
            }
        }
        if !acks.is_empty() {
            ToServer::Ack(std::mem::take(&mut acks)).encode(&mut buf);
        }
        if let Err(error) = wr.write_all(&buf).await {
            // The server gone is the read loop's to notice; anything else
            // would otherwise end the link without a word.
            if !matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) {
                tracing::error!("cannot write to the server: {error}");
            }
            return;
        }
        buf.clear();
        for done in flushed {
            let _ = done.send(());
        }
    }
}
