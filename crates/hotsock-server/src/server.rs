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
use crate::net::park::Parking;
use crate::options::Options;
use crate::route::hub::Hub;
use crate::shared::{ListenSockets, Shared};
use crate::supervise::driver;
use crate::supervise::generations::Generations;
use crate::supervise::handle::{ReloadRequest, SupervisorHandle};
use crate::supervise::spawn::Spawner;
use crate::supervise::view::SupervisionView;
use crate::upgrade::Takeover;
use crate::wait::{raised, wait_until};
use crate::wire::{ReloadKind, WorkerPhase};
use hotsock_protocol::TableSpec;
use hotsock_table::Table;

/// How long a stopping node waits for its cluster task to unregister.
const CLUSTER_LEAVE_MAX: Duration = Duration::from_secs(2);

/// After an upgrade, idle connections start in steps of this many, the
/// runtime's other tasks running between steps.
const IDLE_SPAWN_STEP: usize = 256;

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
    /// Started by `hotsock upgrade`: the running server to take over from.
    takeover: Option<Takeover>,
    /// The generation to serve first and the rollback target.
    first: (u64, Option<u64>),
}

/// How the start ended (`Server::run`).
enum Start {
    /// Every worker is Ready: serve, with the connections taken over from
    /// an old server if this is a binary upgrade.
    Serve(Option<crate::upgrade::Taken>),
    /// A stop signal came first.
    Stopped,
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
        // Started by `hotsock upgrade`: the sockets, tables and generation
        // come from the running server instead of being made here.
        let takeover = Takeover::begin()?;
        let mut run_files = match &takeover {
            Some(_) => RunFiles::for_upgrade(&config.run_dir())?,
            None => RunFiles::create(&config.run_dir())?,
        };
        let listener = match &takeover {
            Some(takeover) => {
                let listener = takeover.client.try_clone().map_err(io_error("the listening socket handed over"))?;
                listener.set_nonblocking(true).map_err(io_error("the listening socket handed over"))?;
                TcpListener::from_std(listener).map_err(io_error("the listening socket handed over"))?
            }
            None => crate::net::listen::client_listener(config.server.listen, config.server.backlog)?,
        };
        let inherited_metrics = takeover.as_ref().and_then(|t| t.metrics.as_ref());
        let metrics_listener = match (config.metrics.as_ref().map(|m| m.listen), inherited_metrics) {
            (Some(_), Some(inherited)) => {
                let listener = inherited.try_clone().map_err(io_error("the metrics socket handed over"))?;
                listener.set_nonblocking(true).map_err(io_error("the metrics socket handed over"))?;
                Some(TcpListener::from_std(listener).map_err(io_error("the metrics socket handed over"))?)
            }
            (Some(addr), None) => Some(crate::net::listen::bind(addr, METRICS_BACKLOG, "metrics.listen")?),
            (None, _) => None,
        };
        let listen = listener.local_addr().map_err(io_error("reading the listen address"))?;
        let sockets = ListenSockets {
            client: std::os::fd::AsFd::as_fd(&listener)
                .try_clone_to_owned()
                .map_err(io_error("duplicating the listener"))?,
            metrics: match &metrics_listener {
                Some(l) => Some(
                    std::os::fd::AsFd::as_fd(l)
                        .try_clone_to_owned()
                        .map_err(io_error("duplicating the metrics listener"))?,
                ),
                None => None,
            },
        };
        let admin = run_files.bind_admin()?;
        let first = takeover.as_ref().map_or((1, None), |t| (t.begin.serving, t.begin.previous));
        let generations = match &takeover {
            Some(_) => {
                Generations::adopt(&config.run_dir(), config.worker_program(), config.reload.keep_generations, first.0)
                    .map_err(io_error("cannot adopt the generation store"))?
            }
            None => {
                let mut generations =
                    Generations::new(&config.run_dir(), config.worker_program(), config.reload.keep_generations)
                        .map_err(io_error("cannot prepare the generation store"))?;
                generations.create().map_err(io_error("cannot store generation 1"))?;
                generations
            }
        };
        let spawner = Spawner::start(tokio::runtime::Handle::current()).map_err(io_error("starting the spawner"))?;
        let tables = create_tables(&config, takeover.as_ref())?;
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
            parking: Parking::default(),
            spawner,
            tables,
            conn_tasks: std::sync::atomic::AtomicUsize::new(0),
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
            sockets,
            exe: std::env::current_exe().unwrap_or_else(|_| std::env::args_os().next().unwrap_or_default().into()),
            upgrade: Mutex::new(None),
            upgrading: std::sync::atomic::AtomicBool::new(false),
            successor: OnceLock::new(),
        });
        let cluster = crate::cluster::start(&shared).await?;
        Ok(Server { shared, listener, metrics_listener, admin, run_files, generations, cluster, takeover, first })
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
        let Server { shared, listener, metrics_listener, admin, mut run_files, generations, cluster, takeover, first } =
            self;
        // Up before the workers, so /readyz can say why they are not ready.
        let metrics_task = metrics_listener.map(|l| tokio::spawn(crate::control::scrape::serve(shared.clone(), l)));
        let (supervisor, supervise) = driver::start(shared.clone(), generations, first);
        let _ = shared.supervisor.set(supervisor.clone());
        let mut supervise = tokio::spawn(supervise);
        let admin_task = tokio::spawn(admin::serve(shared.clone(), admin));
        let signal_task = tokio::spawn(reload_signals(shared.clone(), supervisor.clone()));
        tokio::pin!(shutdown);
        let started = tokio::select! {
            ready = wait_ready(&shared) => ready.map(|()| Start::Serve(None)),
            // A stop before the workers are Ready: nothing was served, and
            // the signal is spent (polling it again would panic).
            () = &mut shutdown => Ok(Start::Stopped),
        };
        // Taking over: the connections move once our workers are Ready.
        let started = match (started, takeover) {
            (Ok(Start::Serve(_)), Some(takeover)) => match takeover.take_over(&shared).await {
                Ok(taken) => {
                    // Before the admin socket is in place: the first status
                    // asked of this server already says how it took over.
                    *shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(taken.status.clone());
                    run_files.commit().map(|()| Start::Serve(Some(taken)))
                }
                Err(why) => Err(ServerError::Upgrade(why)),
            },
            (started, _) => started,
        };
        let taken = match started {
            Ok(Start::Serve(taken)) => taken,
            outcome => {
                if outcome.is_ok() {
                    tracing::info!("stop requested by signal before the workers were ready");
                }
                shared.request_stop();
                supervisor.retire();
                let _ = (&mut supervise).await;
                admin_task.abort();
                signal_task.abort();
                if let Some(task) = &metrics_task {
                    task.abort();
                }
                drop(run_files);
                return outcome.map(|_| ());
            }
        };
        if let Some(crate::upgrade::Taken { busy, idle, status }) = taken {
            tracing::info!(
                from = status.from_version,
                to = status.to_version.as_deref().unwrap_or(""),
                connections = status.connections,
                pause_ms = status.pause_ms,
                "upgrade: took over from pid {}",
                status.from_pid
            );
            for conn in busy {
                tokio::spawn(crate::net::conn::adopted(shared.clone(), conn));
            }
            // The idle ones in steps, so the busy ones (which have messages
            // waiting since they parked) get the threads first.
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut idle = idle.into_iter().peekable();
                while idle.peek().is_some() {
                    tokio::task::yield_now().await;
                    for conn in idle.by_ref().take(IDLE_SPAWN_STEP) {
                        tokio::spawn(crate::net::conn::adopted(shared.clone(), conn));
                    }
                }
            });
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
        let successor = shared.successor.get().copied();
        // After an upgrade systemd already follows the new server (the
        // handover sent MAINPID): nothing more to say.
        if let Some(notifier) = &shared.notifier
            && successor.is_none()
        {
            notifier.send("STOPPING=1");
        }
        shared.request_stop();
        let _ = accept_task.await;
        watch_task.abort();
        match successor {
            Some(pid) => {
                // Nothing to close: every connection is the new server's.
                // The workers have nothing in flight; they stop.
                run_files.disown();
                handed_over(&shared, &supervisor, &mut supervise).await;
                tracing::info!(successor = pid, "hotsock handed over to pid {pid}");
            }
            None => graceful_stop(&shared, &supervisor, &mut supervise).await,
        }
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
/// failure there is logged and reloads nothing. SIGURG upgrades the server
/// binary (`hotsock upgrade`): chosen because its default action is to be
/// ignored, so sent to a server too old to know it, it does nothing.
async fn reload_signals(shared: Arc<Shared>, supervisor: SupervisorHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut usr1), Ok(mut usr2), Ok(mut urg)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
        signal(SignalKind::from_raw(nix::libc::SIGURG)),
    ) else {
        tracing::error!("cannot install SIGUSR1/SIGUSR2/SIGURG handlers; use `hotsock reload` and `hotsock upgrade`");
        return;
    };
    loop {
        let kind = tokio::select! {
            _ = usr1.recv() => ReloadKind::Workers,
            _ = usr2.recv() => ReloadKind::Tasks,
            _ = urg.recv() => {
                tracing::info!("upgrade requested by signal (SIGURG)");
                match crate::upgrade::refusal(&shared) {
                    Some(why) => tracing::error!("upgrade refused: {why}"),
                    None => crate::upgrade::spawn(shared.clone(), None),
                }
                continue;
            }
        };
        tracing::info!(?kind, "reload requested by signal");
        if shared.upgrading.load(std::sync::atomic::Ordering::Acquire) {
            tracing::error!("reload refused: a binary upgrade is under way");
            continue;
        }
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

/// Creates every `[tables.NAME]` segment (or, taking over, maps the one
/// the running server has, rows and all).
fn create_tables(config: &Config, takeover: Option<&Takeover>) -> Result<Vec<(TableSpec, Table)>, ServerError> {
    let mut tables = Vec::new();
    // Cluster-wide tables live in Redis: the workers reach them themselves.
    for (name, table) in config.tables.iter().filter(|(_, t)| t.scope == TableScope::Local) {
        let fail = |e: hotsock_table::TableError| ServerError::Table(format!("tables.{name}: {e}"));
        let schema = table.schema().map_err(|e| ServerError::Table(format!("tables.{name}: {e}")))?;
        let inherited = takeover.and_then(|t| t.tables.get(name));
        let table_now = match inherited {
            Some(file) => {
                let file = file.try_clone().map_err(io_error(format!("tables.{name}: the segment handed over")))?;
                Table::open(name, file, &schema, hotsock_table::Owner::this_process()).map_err(|e| {
                    ServerError::Table(format!(
                        "tables.{name}: the running server's table does not fit this config ({e}); a schema change needs a restart"
                    ))
                })?
            }
            None => Table::create(name, &schema).map_err(fail)?,
        };
        tables.push((table.spec(name), table_now));
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

/// The stop after a successful upgrade: the workers drain (nothing is in
/// flight) and exit; no connection is touched.
async fn handed_over(shared: &Shared, supervisor: &SupervisorHandle, supervise: &mut JoinHandle<()>) {
    let budget = StopBudget::of(&shared.config());
    supervisor.retire();
    if timeout(budget.drain + budget.reap, supervise).await.is_err() {
        tracing::error!("workers did not exit in time; the server exits anyway (they get the parent-death signal)");
    }
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
