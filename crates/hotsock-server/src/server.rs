//! The server's top level: binding, starting workers, accepting, and the
//! graceful stop sequence.
//!
//! Stop order matters for zero loss: stop accepting, close every client with
//! 1001 (each connection task reports its Close event), wait until workers
//! have acknowledged every event, then tell workers to stop, and only kill
//! what is still running after `reload.max_wait_ms`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio::time::timeout;

use crate::admin::{self, RunFiles};
use crate::config::Config;
use crate::generations::Generations;
use crate::hub::Hub;
use crate::spawn::Spawner;
use crate::status::{ServerStatus, TableStatus, rss_kib};
use crate::supervisor::{self, ReloadKind, ReloadOutcome, ReloadRequest, SupervisorHandle};
use crate::watch::{WatchCell, WatchStatus};
use hotsock_protocol::TableSpec;
use hotsock_table::Table;

/// Polling step while waiting for workers or connections during start and
/// stop; short enough to be invisible, long enough to cost nothing.
const WAIT_STEP: Duration = Duration::from_millis(10);
/// Time beyond `max_wait_ms` for killed workers to be reaped at stop.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a socket or creating a runtime file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another server is using the same run directory.
    #[error("a hotsock server is already running with this run_dir (admin socket {0} answers); stop it first")]
    AlreadyRunning(PathBuf),
    /// A shared table could not be created.
    #[error("{0}")]
    Table(String),
    /// Workers did not all become ready in time at start.
    #[error("workers did not become ready: {0}")]
    WorkersNotReady(String),
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// State every task of the server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) hub: Hub,
    pub(crate) spawner: Spawner,
    /// The shared tables, created before any worker, living as long as the
    /// server: each worker maps them, reloads and crashes leave them be.
    pub(crate) tables: Vec<(TableSpec, Table)>,
    /// One permit per connection, open or mid-handshake.
    pub(crate) conn_permits: Arc<Semaphore>,
    pub(crate) accepted_total: AtomicU64,
    pub(crate) rejected_total: AtomicU64,
    stopping: watch::Sender<bool>,
    supervisor: OnceLock<SupervisorHandle>,
    generation_info: Mutex<GenerationInfo>,
    watch_status: WatchCell,
    started: Instant,
    listen: SocketAddr,
}

impl Shared {
    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub(crate) fn supervisor(&self) -> Option<&SupervisorHandle> {
        self.supervisor.get()
    }

    pub(crate) fn set_generation_info(
        &self,
        serving: u64,
        previous: Option<u64>,
        reloading: Option<String>,
        queued: usize,
    ) {
        let mut info = self.generation_info.lock().unwrap_or_else(|p| p.into_inner());
        info.serving = serving;
        info.previous = previous;
        info.reloading = reloading;
        info.queued = queued;
    }

    pub(crate) fn set_watch_status(&self, status: WatchStatus) {
        *self.watch_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    pub(crate) fn update_watch_status(&self, update: impl FnOnce(&mut WatchStatus)) {
        if let Some(status) = self.watch_status.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            update(status);
        }
    }

    pub(crate) fn set_last_reload(&self, outcome: ReloadOutcome) {
        self.generation_info.lock().unwrap_or_else(|p| p.into_inner()).last_reload = Some(outcome);
    }

    pub(crate) fn request_stop(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn status(&self) -> ServerStatus {
        let mut workers = self.hub.slot_statuses();
        for worker in &mut workers {
            worker.rss_kib = worker.pid.and_then(rss_kib);
        }
        let info = self.generation_info.lock().unwrap_or_else(|p| p.into_inner()).clone();
        ServerStatus {
            pid: std::process::id(),
            generation: info.serving,
            previous_generation: info.previous,
            reloading: info.reloading,
            reloads_queued: info.queued,
            last_reload: info.last_reload,
            watch: self.watch_status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            tasks: self.hub.task_counters(),
            tables: self
                .tables
                .iter()
                .map(|(spec, table)| TableStatus {
                    name: spec.name.clone(),
                    rows: table.len(),
                    capacity: table.capacity(),
                })
                .collect(),
            listen: self.listen.to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            connections: self.hub.connection_count(),
            accepted_total: self.accepted_total.load(std::sync::atomic::Ordering::Relaxed),
            rejected_total: self.rejected_total.load(std::sync::atomic::Ordering::Relaxed),
            stopping: self.is_stopping(),
            workers,
        }
    }
}

/// What the supervisor publishes about generations, for `status`.
#[derive(Debug, Clone, Default)]
struct GenerationInfo {
    serving: u64,
    previous: Option<u64>,
    reloading: Option<String>,
    queued: usize,
    last_reload: Option<ReloadOutcome>,
}

/// A bound server, not yet running.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: UnixListener,
    run_files: RunFiles,
    generations: Generations,
}

impl Server {
    /// Binds the listener and the admin socket and prepares the run
    /// directory. Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let mut run_files = RunFiles::create(&config.run_dir())?;
        let listener = bind_listener(config.server.listen, config.server.backlog)?;
        let listen = listener.local_addr().map_err(io_error("reading the listen address"))?;
        let admin = run_files.bind_admin()?;
        let mut generations =
            Generations::new(&config.run_dir(), config.worker_program(), config.reload.keep_generations)
                .map_err(io_error("cannot prepare the generation store"))?;
        generations.create().map_err(io_error("cannot store generation 1"))?;
        let spawner = Spawner::start(tokio::runtime::Handle::current()).map_err(io_error("starting the spawner"))?;
        let tables = create_tables(&config)?;
        let hub = Hub::new(&config);
        let shared = Arc::new(Shared {
            conn_permits: Arc::new(Semaphore::new(config.server.max_connections)),
            config,
            hub,
            spawner,
            tables,
            accepted_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            stopping: watch::Sender::new(false),
            supervisor: OnceLock::new(),
            generation_info: Mutex::new(GenerationInfo { serving: 1, ..GenerationInfo::default() }),
            watch_status: Mutex::new(None),
            started: Instant::now(),
            listen,
        });
        Ok(Server { shared, listener, admin, run_files, generations })
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Starts the workers, serves until `shutdown` resolves or a `stop`
    /// arrives on the admin socket, then stops gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { shared, listener, admin, run_files, generations } = self;
        let (supervisor, supervise) = supervisor::start(shared.clone(), generations);
        let _ = shared.supervisor.set(supervisor.clone());
        let mut supervise = tokio::spawn(supervise);
        let admin_task = tokio::spawn(admin::serve(shared.clone(), admin));
        let signal_task = tokio::spawn(reload_signals(supervisor.clone()));
        tokio::pin!(shutdown);
        let started = tokio::select! {
            ready = wait_ready(&shared) => ready,
            () = &mut shutdown => Ok(()),
        };
        if let Err(error) = started {
            shared.request_stop();
            supervisor.retire();
            let _ = (&mut supervise).await;
            admin_task.abort();
            signal_task.abort();
            drop(run_files);
            return Err(error);
        }
        tracing::info!(listen = %shared.listen, workers = shared.config.workers.count, "hotsock is serving");
        let accept_task = tokio::spawn(accept_loop(shared.clone(), listener));
        let watch_task = shared
            .config
            .reload
            .watch
            .clone()
            .filter(|watch| watch.enabled)
            .map(|watch| tokio::spawn(crate::watch::run(shared.clone(), supervisor.clone(), watch)));
        let mut stop = shared.stop_signal();
        tokio::select! {
            () = &mut shutdown => tracing::info!("stop requested by signal"),
            () = raised(&mut stop) => tracing::info!("stop requested over the admin socket"),
        }
        shared.request_stop();
        let _ = accept_task.await;
        if let Some(task) = watch_task {
            task.abort();
        }
        graceful_stop(&shared, &supervisor, &mut supervise).await;
        admin_task.abort();
        signal_task.abort();
        drop(run_files);
        tracing::info!("hotsock stopped");
        Ok(())
    }
}

/// SIGUSR1 reloads the event workers, SIGUSR2 the task workers.
async fn reload_signals(supervisor: SupervisorHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut usr1), Ok(mut usr2)) = (signal(SignalKind::user_defined1()), signal(SignalKind::user_defined2()))
    else {
        tracing::error!("cannot install SIGUSR1/SIGUSR2 handlers; reload with `hotsock reload` instead");
        return;
    };
    loop {
        let kind = tokio::select! {
            _ = usr1.recv() => ReloadKind::Workers,
            _ = usr2.recv() => ReloadKind::Tasks,
        };
        tracing::info!(?kind, "reload requested by signal");
        supervisor.reload(ReloadRequest { kind, canary: None, reply: None, reason: None });
    }
}

/// Creates every `[tables.NAME]` segment.
fn create_tables(config: &Config) -> Result<Vec<(TableSpec, Table)>, ServerError> {
    let mut tables = Vec::new();
    for (name, table) in &config.tables {
        let schema = table.schema().map_err(|e| ServerError::Table(format!("tables.{name}: {e}")))?;
        let created = Table::create(name, &schema).map_err(|e| ServerError::Table(format!("tables.{name}: {e}")))?;
        let spec = TableSpec {
            name: name.clone(),
            rows: table.rows,
            columns: table.columns.iter().map(|(n, t)| (n.clone(), t.clone())).collect(),
        };
        tables.push((spec, created));
    }
    Ok(tables)
}

fn bind_listener(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ServerError> {
    let context = format!("cannot listen on {addr} (server.listen)");
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)
        .map_err(io_error(context.clone()))?;
    socket.set_reuse_address(true).map_err(io_error(context.clone()))?;
    socket.bind(&addr.into()).map_err(io_error(context.clone()))?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX)).map_err(io_error(context.clone()))?;
    socket.set_nonblocking(true).map_err(io_error(context.clone()))?;
    TcpListener::from_std(socket.into()).map_err(io_error(context))
}

/// Waits until every slot has a Ready worker, or fails with the reasons.
async fn wait_ready(shared: &Shared) -> Result<(), ServerError> {
    // A slot gets ready_timeout for its Ready; allow one immediate restart.
    let budget = Duration::from_millis(shared.config.reload.ready_timeout_ms) * 2;
    let deadline = Instant::now() + budget;
    while !shared.hub.all_ready() {
        if Instant::now() >= deadline {
            let reasons: Vec<String> = shared
                .hub
                .slot_statuses()
                .into_iter()
                .filter(|s| s.state != crate::status::WorkerState::Ready)
                .map(|s| format!("slot {}: {}", s.slot, s.last_exit.unwrap_or_else(|| "still starting".into())))
                .collect();
            return Err(ServerError::WorkersNotReady(reasons.join("; ")));
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.stop_signal();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(crate::conn::serve(shared.clone(), stream, peer));
                }
                Err(error) => {
                    // Out of file descriptors and similar: pause instead of
                    // spinning; the backlog keeps the waiting clients.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = crate::server::raised(&mut stop) => return,
        }
    }
}

async fn graceful_stop(shared: &Shared, supervisor: &SupervisorHandle, supervise: &mut JoinHandle<()>) {
    let close_budget = Duration::from_millis(shared.config.server.close_timeout_ms) + Duration::from_secs(1);
    let max_wait = Duration::from_millis(shared.config.reload.max_wait_ms);
    shared.hub.close_all(1001, "server shutting down");
    wait_until(close_budget, || shared.hub.connection_count() == 0).await;
    // Until every event (the Close events included) is acknowledged, a
    // worker that crashes is still replaced, so nothing is lost on the way
    // out either. Then the workers drain, and are killed after max_wait.
    if !wait_until(max_wait, || shared.hub.unacked_total() == 0).await {
        tracing::warn!(unacked = shared.hub.unacked_total(), "stopping with unacknowledged events");
    }
    supervisor.retire();
    if timeout(max_wait + EXIT_MARGIN, supervise).await.is_err() {
        tracing::error!("workers did not exit in time; the server exits anyway (they get the parent-death signal)");
    }
}

/// Resolves once a stop or kill flag is raised. Returns `()` rather than the
/// watch guard so callers' futures stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|raised| *raised).await;
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls `done` until it holds or `budget` passes; returns whether it held.
async fn wait_until(budget: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + budget;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(WAIT_STEP).await;
    }
    true
}
