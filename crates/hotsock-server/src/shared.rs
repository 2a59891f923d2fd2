//! The state every task of the server shares. It holds the parts; it never
//! imports the modules that use it (connections, workers, the supervisor,
//! the admin socket), so the arrows point one way: everything else depends
//! on `Shared`, and `Shared` on nothing but the leaves it is made of.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use hotsock_protocol::TableSpec;
use hotsock_table::Table;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::control::notify::Notifier;
use crate::metrics::Metrics;
use crate::net::admit::{OriginPattern, PerIp};
use crate::net::park::Parking;
use crate::options::Options;
use crate::route::hub::Hub;
use crate::supervise::handle::SupervisorHandle;
use crate::supervise::spawn::Spawner;
use crate::supervise::view::SupervisionView;
use crate::wire::{UpgradeStatus, WatchStatus};

/// State every task of the server shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The config in force: read once per connection, per worker launch or
    /// per decision, never per message; `control/reconfig.rs` swaps it.
    pub(crate) current: ArcSwap<Config>,
    /// Bumped after each config swap, for tasks that follow the config
    /// (the file watcher).
    pub(crate) reconfigured: watch::Sender<u64>,
    /// Held while a reload re-reads and applies the config, so two at once
    /// (a signal and `hotsock reload`) do not interleave their swaps.
    pub(crate) reconfiguring: Mutex<()>,
    /// What `hotsock start` handed over besides the config.
    pub(crate) options: Options,
    pub(crate) hub: Hub,
    /// Connections stopping for (or stopped by) a binary upgrade.
    pub(crate) parking: Parking,
    pub(crate) spawner: Spawner,
    /// The shared tables, created before any worker, living as long as the
    /// server: each worker maps them, reloads and crashes leave them be.
    pub(crate) tables: Vec<(TableSpec, Table)>,
    /// One permit per connection, open or mid-handshake.
    pub(crate) conn_permits: Arc<Semaphore>,
    pub(crate) accepted_total: AtomicU64,
    /// Connection tasks alive, from accept (before any byte is read) to
    /// their end: an upgrade's quiet point needs every one of them parked.
    pub(crate) conn_tasks: std::sync::atomic::AtomicUsize,
    /// Counters and histograms for `/metrics`.
    pub(crate) metrics: Metrics,
    /// `server.allowed_origins`, parsed (swapped with the config).
    pub(crate) origins: ArcSwapOption<Vec<OriginPattern>>,
    /// `[server.tls]`, loaded: every handshake takes the one current when
    /// it starts; a reload swaps in a freshly read one. `None`: plain.
    pub(crate) tls: Option<ArcSwap<rustls::ServerConfig>>,
    /// Per-address connection cap and handshake rate.
    pub(crate) per_ip: PerIp,
    /// systemd's notify socket, when started by systemd with `Type=notify`.
    pub(crate) notifier: Option<Notifier>,
    pub(crate) stopping: watch::Sender<bool>,
    pub(crate) supervisor: OnceLock<SupervisorHandle>,
    /// What the supervisor last published, for `status`.
    pub(crate) supervision: Mutex<SupervisionView>,
    pub(crate) watch_status: WatchCell,
    pub(crate) started: Instant,
    pub(crate) listen: SocketAddr,
    /// Duplicates of the listening sockets, to hand to a new binary.
    pub(crate) sockets: ListenSockets,
    /// The executable this server was started from (`hotsock upgrade`
    /// starts it again unless told another).
    pub(crate) exe: std::path::PathBuf,
    /// The binary upgrade under way or last tried (or, in a server that
    /// took over, how it did).
    pub(crate) upgrade: Mutex<Option<UpgradeStatus>>,
    /// An upgrade is under way (single flight).
    pub(crate) upgrading: std::sync::atomic::AtomicBool,
    /// Set once a new server holds everything: this one exits without
    /// closing anything.
    pub(crate) successor: OnceLock<u32>,
}

/// The listening sockets, as descriptors.
#[derive(Debug)]
pub(crate) struct ListenSockets {
    pub(crate) client: std::os::fd::OwnedFd,
    pub(crate) metrics: Option<std::os::fd::OwnedFd>,
}

impl Shared {
    /// The config in force now.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.current.load_full()
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub(crate) fn supervisor(&self) -> Option<&SupervisorHandle> {
        self.supervisor.get()
    }

    pub(crate) fn set_watch_status(&self, status: WatchStatus) {
        *self.watch_status.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    pub(crate) fn update_watch_status(&self, update: impl FnOnce(&mut WatchStatus)) {
        if let Some(status) = self.watch_status.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            update(status);
        }
    }

    pub(crate) fn request_stop(&self) {
        self.stopping.send_replace(true);
    }
}

/// Shared slot for `WatchStatus`.
pub(crate) type WatchCell = Mutex<Option<WatchStatus>>;
