//! The server's top level: binding, starting workers, accepting, and the
//! graceful stop sequence.
//!
//! Stop order matters for zero loss: stop accepting, close every client with
//! 1001 (each connection task reports its Close event), wait until workers
//! have acknowledged every event, then tell workers to stop, and only kill
//! what is still running after `reload.max_wait_ms`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio::time::timeout;

use crate::config::{Config, StopBudget, TableScope};
use crate::control::admin::{self, RunFiles};
use crate::control::notify::{self, Notifier};
use crate::error::{ServerError, io_error};
use crate::metrics::Metrics;
use crate::net::admit::PerIp;
use crate::options::Options;
use crate::route::hub::Hub;
use crate::shared::Shared;
use crate::supervise::driver;
use crate::supervise::generations::Generations;
use crate::supervise::handle::{ReloadRequest, SupervisorHandle};
use crate::supervise::spawn::Spawner;
use crate::supervise::view::SupervisionView;
use crate::wait::{raised, wait_until};
use crate::wire::{ReloadKind, WorkerPhase};
use hotsock_protocol::TableSpec;
use hotsock_table::Table;

/// How long a stopping node waits for its cluster task to unregister.
const CLUSTER_LEAVE_MAX: Duration = Duration::from_secs(2);

/// `listen(2)` backlog of the metrics listener: scrapers are few.
const METRICS_BACKLOG: u32 = 64;

/// A bound server, not yet running.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    /// `[metrics] listen`, when configured.
    metrics_listener: Option<TcpListener>,
    admin: UnixListener,
    run_files: RunFiles,
    generations: Generations,
    /// `[cluster]`: the task talking to Redis (it leaves the cluster when
    /// the stop begins).
    cluster: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds the listener and the admin socket and prepares the run
    /// directory. Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        Server::bind_with(config, Options::default()).await
    }

    /// [`Server::bind`], with what `hotsock start` hands over besides the
    /// config (the log filter's control, `--watch`).
    pub async fn bind_with(config: Config, options: Options) -> Result<Server, ServerError> {
        // First: a certificate that does not load is the operator's to fix
        // before anything is bound or written.
        let tls = load_tls(&config)?.map(ArcSwap::new);
        if let Some(files) = &config.server.tls {
            tracing::info!(cert = %config.base_dir.join(&files.cert).display(), "serving wss:// (TLS)");
        }
        let mut run_files = RunFiles::create(&config.run_dir())?;
        let listener = crate::net::listen::client_listener(config.server.listen, config.server.backlog)?;
        let metrics_listener = match config.metrics.as_ref().map(|m| m.listen) {
            Some(addr) => Some(crate::net::listen::bind(addr, METRICS_BACKLOG, "metrics.listen")?),
            None => None,
        };
        let listen = listener.local_addr().map_err(io_error("reading the listen address"))?;
        let admin = run_files.bind_admin()?;
        let mut generations =
            Generations::new(&config.run_dir(), config.worker_program(), config.reload.keep_generations)
                .map_err(io_error("cannot prepare the generation store"))?;
        generations.create().map_err(io_error("cannot store generation 1"))?;
        let spawner = Spawner::start(tokio::runtime::Handle::current()).map_err(io_error("starting the spawner"))?;
        let tables = create_tables(&config)?;
        let hub = Hub::new(&config);
        if config.server.allowed_origins.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "server.allowed_origins is not set: any web page can open a WebSocket here with its visitors' cookies"
            );
        }
        let origins = ArcSwapOption::new(config.origin_patterns().map(Arc::new));
        let view = SupervisionView::starting(config.workers.count, config.workers.task_count);
        let per_ip = PerIp::new(config.limits.max_connections_per_ip, config.limits.handshakes_per_ip_per_s);
        let shared = Arc::new(Shared {
            conn_permits: Arc::new(Semaphore::new(config.server.max_connections)),
            current: ArcSwap::from_pointee(config),
            reconfigured: watch::Sender::new(0),
            reconfiguring: Mutex::new(()),
            options,
            hub,
            spawner,
            tables,
            accepted_total: AtomicU64::new(0),
            metrics: Metrics::new(),
            origins,
            tls,
            per_ip,
            notifier: Notifier::from_env(),
            stopping: watch::Sender::new(false),
            supervisor: OnceLock::new(),
            supervision: Mutex::new(view),
            watch_status: Mutex::new(None),
            started: Instant::now(),
            listen,
        });
        let cluster = crate::cluster::start(&shared).await?;
        Ok(Server { shared, listener, metrics_listener, admin, run_files, generations, cluster })
    }

    /// What `bind` checks that needs no socket: the `[server.tls]` files
    /// load and belong together (`hotsock check`).
    pub fn check(config: &Config) -> Result<(), ServerError> {
        load_tls(config).map(|_| ())
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Starts the workers, serves until `shutdown` resolves or a `stop`
    /// arrives on the admin socket, then stops gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { shared, listener, metrics_listener, admin, run_files, generations, cluster } = self;
        // Up before the workers, so /readyz can say why they are not ready.
        let metrics_task = metrics_listener.map(|l| tokio::spawn(crate::control::scrape::serve(shared.clone(), l)));
        let (supervisor, supervise) = driver::start(shared.clone(), generations);
        let _ = shared.supervisor.set(supervisor.clone());
        let mut supervise = tokio::spawn(supervise);
        let admin_task = tokio::spawn(admin::serve(shared.clone(), admin));
        let signal_task = tokio::spawn(reload_signals(shared.clone(), supervisor.clone()));
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
            if let Some(task) = &metrics_task {
                task.abort();
            }
            drop(run_files);
            return Err(error);
        }
        tracing::info!(listen = %shared.listen, workers = shared.config().workers.count, "hotsock is serving");
        let watchdog = shared.notifier.clone().and_then(|notifier| {
            notifier.ready(&format!("serving on {}", shared.listen));
            notify::watchdog_interval().map(|every| tokio::spawn(notify::watchdog(notifier, every)))
        });
        let accept_task = tokio::spawn(crate::net::listen::accept_loop(shared.clone(), listener));
        let watch_task = tokio::spawn(crate::control::watch::follow(shared.clone(), supervisor.clone()));
        let mut stop = shared.stop_signal();
        tokio::select! {
            () = &mut shutdown => tracing::info!("stop requested by signal"),
            () = raised(&mut stop) => tracing::info!("stop requested over the admin socket"),
        }
        if let Some(notifier) = &shared.notifier {
            notifier.send("STOPPING=1");
        }
        shared.request_stop();
        let _ = accept_task.await;
        watch_task.abort();
        graceful_stop(&shared, &supervisor, &mut supervise).await;
        admin_task.abort();
        signal_task.abort();
        if let Some(task) = &metrics_task {
            task.abort();
        }
        if let Some(task) = &watchdog {
            task.abort();
        }
        if let Some(task) = cluster
            && timeout(CLUSTER_LEAVE_MAX, task).await.is_err()
        {
            tracing::warn!("cluster: leaving took too long; presence expires with cluster.node_ttl_ms");
        }
        drop(run_files);
        tracing::info!("hotsock stopped");
        Ok(())
    }
}

/// SIGUSR1 reloads the event workers, SIGUSR2 the task workers; like
/// `hotsock reload`, each first re-reads what a reload re-reads, and a
/// failure there is logged and reloads nothing.
async fn reload_signals(shared: Arc<Shared>, supervisor: SupervisorHandle) {
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
        if let Err(error) = crate::control::reconfig::prepare(&shared) {
            tracing::error!("reload refused, nothing changed: {error}");
            continue;
        }
        supervisor.reload(ReloadRequest { kind, canary: None, reply: None, reason: None });
    }
}

/// Loads `[server.tls]`, if set; the error names the config line.
fn load_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ServerError> {
    let Some(files) = &config.server.tls else { return Ok(None) };
    crate::net::tls::load(files, &config.base_dir)
        .map(Some)
        .map_err(|source| ServerError::Tls { at: config.locate(source.config_key()), source })
}

/// Creates every `[tables.NAME]` segment.
fn create_tables(config: &Config) -> Result<Vec<(TableSpec, Table)>, ServerError> {
    let mut tables = Vec::new();
    // Cluster-wide tables live in Redis: the workers reach them themselves.
    for (name, table) in config.tables.iter().filter(|(_, t)| t.scope == TableScope::Local) {
        let schema = table.schema().map_err(|e| ServerError::Table(format!("tables.{name}: {e}")))?;
        let created = Table::create(name, &schema).map_err(|e| ServerError::Table(format!("tables.{name}: {e}")))?;
        tables.push((table.spec(name), created));
    }
    Ok(tables)
}

/// Waits until every slot has a Ready worker, or fails with the reasons.
async fn wait_ready(shared: &Shared) -> Result<(), ServerError> {
    // A slot gets ready_timeout for its Ready; allow one immediate restart.
    let budget = Duration::from_millis(shared.config().reload.ready_timeout_ms) * 2;
    let deadline = Instant::now() + budget;
    while !shared.hub.all_ready() {
        if Instant::now() >= deadline {
            let view = shared.supervision.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let reasons: Vec<String> = view
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.phase != WorkerPhase::Ready)
                .map(|(slot, s)| {
                    let why = s.exits.last().map_or("still starting", |e| e.detail.as_str());
                    format!("slot {slot}: {why}")
                })
                .collect();
            return Err(ServerError::WorkersNotReady(reasons.join("; ")));
        }
        tokio::time::sleep(crate::wait::WAIT_STEP).await;
    }
    Ok(())
}

async fn graceful_stop(shared: &Shared, supervisor: &SupervisorHandle, supervise: &mut JoinHandle<()>) {
    let budget = StopBudget::of(&shared.config());
    let (code, reason) = crate::close::SERVER_STOPPING;
    shared.hub.close_all(code, reason);
    wait_until(budget.close, || shared.hub.connection_count() == 0).await;
    // Until every event (the Close events included) is acknowledged, a
    // worker that crashes is still replaced, so nothing is lost on the way
    // out either. Then the workers drain, and are killed at their deadline.
    if !wait_until(budget.acks, || shared.hub.unacked_total() == 0).await {
        tracing::warn!(
            unacked = shared.hub.unacked_total(),
            "stopping with unacknowledged events after server.stop_timeout_ms"
        );
    }
    supervisor.retire();
    if timeout(budget.drain + budget.reap, supervise).await.is_err() {
        tracing::error!("workers did not exit in time; the server exits anyway (they get the parent-death signal)");
    }
}
