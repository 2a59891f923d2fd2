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
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admin::{self, RunFiles};
use crate::config::Config;
use crate::hub::Hub;
use crate::status::{ServerStatus, rss_kib};
use crate::supervisor::{self, Spawner};

/// Polling step while waiting for workers or connections during start and
/// stop; short enough to be invisible, long enough to cost nothing.
const WAIT_STEP: Duration = Duration::from_millis(10);

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
    /// One permit per connection, open or mid-handshake.
    pub(crate) conn_permits: Arc<Semaphore>,
    pub(crate) accepted_total: AtomicU64,
    pub(crate) rejected_total: AtomicU64,
    stopping: watch::Sender<bool>,
    /// Raised once every event is acknowledged during a stop: from then on
    /// a worker that exits is not replaced. Until then crashed workers are
    /// restarted as usual, so their unacknowledged events are still handled.
    retire: watch::Sender<bool>,
    kill: watch::Sender<bool>,
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

    pub(crate) fn is_retiring(&self) -> bool {
        *self.retire.borrow()
    }

    pub(crate) fn retire_signal(&self) -> watch::Receiver<bool> {
        self.retire.subscribe()
    }

    /// Fires when workers that outlived the stop deadline must be killed.
    pub(crate) fn kill_signal(&self) -> watch::Receiver<bool> {
        self.kill.subscribe()
    }

    pub(crate) fn request_stop(&self) {
        self.stopping.send_replace(true);
    }

    pub(crate) fn status(&self) -> ServerStatus {
        let mut workers = self.hub.slot_statuses();
        for worker in &mut workers {
            worker.rss_kib = worker.pid.and_then(rss_kib);
        }
        ServerStatus {
            pid: std::process::id(),
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

/// A bound server, not yet running.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
    admin: UnixListener,
    run_files: RunFiles,
}

impl Server {
    /// Binds the listener and the admin socket and prepares the run
    /// directory. Must be called inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let mut run_files = RunFiles::create(&config.run_dir())?;
        let listener = bind_listener(config.server.listen, config.server.backlog)?;
        let listen = listener.local_addr().map_err(io_error("reading the listen address"))?;
        let admin = run_files.bind_admin()?;
        let spawner = Spawner::start(tokio::runtime::Handle::current()).map_err(io_error("starting the spawner"))?;
        let hub = Hub::new(
            config.workers.count,
            config.workers.dispatch,
            config.limits.max_inflight_per_conn,
            config.limits.output_buffer_bytes,
            config.workers.max_redeliveries,
        );
        let shared = Arc::new(Shared {
            conn_permits: Arc::new(Semaphore::new(config.server.max_connections)),
            config,
            hub,
            spawner,
            accepted_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            stopping: watch::Sender::new(false),
            retire: watch::Sender::new(false),
            kill: watch::Sender::new(false),
            started: Instant::now(),
            listen,
        });
        Ok(Server { shared, listener, admin, run_files })
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Starts the workers, serves until `shutdown` resolves or a `stop`
    /// arrives on the admin socket, then stops gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { shared, listener, admin, run_files } = self;
        let mut slots = JoinSet::new();
        for slot in 0..shared.config.workers.count {
            slots.spawn(supervisor::run_slot(shared.clone(), slot));
        }
        let admin_task = tokio::spawn(admin::serve(shared.clone(), admin));
        tokio::pin!(shutdown);
        let started = tokio::select! {
            ready = wait_ready(&shared) => ready,
            () = &mut shutdown => Ok(()),
        };
        if let Err(error) = started {
            shared.request_stop();
            shared.retire.send_replace(true);
            shared.kill.send_replace(true);
            while slots.join_next().await.is_some() {}
            admin_task.abort();
            drop(run_files);
            return Err(error);
        }
        tracing::info!(listen = %shared.listen, workers = shared.config.workers.count, "hotsock is serving");
        let accept_task = tokio::spawn(accept_loop(shared.clone(), listener));
        let mut stop = shared.stop_signal();
        tokio::select! {
            () = &mut shutdown => tracing::info!("stop requested by signal"),
            () = crate::server::raised(&mut stop) => tracing::info!("stop requested over the admin socket"),
        }
        shared.request_stop();
        let _ = accept_task.await;
        graceful_stop(&shared, &mut slots).await;
        admin_task.abort();
        drop(run_files);
        tracing::info!("hotsock stopped");
        Ok(())
    }
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

async fn graceful_stop(shared: &Shared, slots: &mut JoinSet<()>) {
    let close_budget = Duration::from_millis(shared.config.server.close_timeout_ms) + Duration::from_secs(1);
    let max_wait = Duration::from_millis(shared.config.reload.max_wait_ms);
    shared.hub.close_all(1001, "server shutting down");
    wait_until(close_budget, || shared.hub.connection_count() == 0).await;
    if !wait_until(max_wait, || shared.hub.unacked_total() == 0).await {
        tracing::warn!(unacked = shared.hub.unacked_total(), "stopping with unacknowledged events");
    }
    shared.retire.send_replace(true);
    shared.hub.stop_workers();
    let deadline = Instant::now() + max_wait;
    loop {
        tokio::select! {
            next = slots.join_next() => if next.is_none() { break },
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("workers still running after reload.max_wait_ms; killing them");
                shared.kill.send_replace(true);
                while slots.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Resolves once a stop or kill flag is raised. Returns `()` rather than the
/// watch guard so callers' futures stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|raised| *raised).await;
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
