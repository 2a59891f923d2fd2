//! systemd's notify protocol (`Type=notify`): `READY=1` once every worker
//! is Ready, `RELOADING=1` (with `MONOTONIC_USEC`) while a reload runs and
//! `READY=1` after it, `STOPPING=1` when a graceful stop begins, and
//! `WATCHDOG=1` at half the `WATCHDOG_USEC` systemd asks for. One datagram
//! per state to the socket named by `NOTIFY_SOCKET`; without it, nothing
//! is sent. A failed send is logged, never fatal: the service runs on.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where systemd listens, from `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    target: Target,
    /// The first READY=1 went out: reload states make sense from then on.
    announced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
enum Target {
    Path(PathBuf),
    /// `@name`: Linux's abstract namespace.
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier systemd set up for this process, if any.
    pub(crate) fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str()).to_vec();
        let target = match bytes.strip_prefix(b"@") {
            Some(name) => Target::Abstract(name.to_vec()),
            None => Target::Path(PathBuf::from(socket)),
        };
        Some(Notifier { target, announced: Default::default() })
    }

    /// Every worker is Ready: the service is up (and again after a reload).
    pub(crate) fn ready(&self, status: &str) {
        self.announced.store(true, std::sync::atomic::Ordering::Relaxed);
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Whether the service was announced Ready (reloads before that are
    /// part of the start).
    pub(crate) fn announced(&self) -> bool {
        self.announced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends one state datagram (`READY=1`, `STOPPING=1`, ...).
    pub(crate) fn send(&self, state: &str) {
        if let Err(error) = self.try_send(state) {
            tracing::warn!(%error, state, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }

    fn try_send(&self, state: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        match &self.target {
            Target::Path(path) => socket.send_to(state.as_bytes(), path).map(|_| ()),
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address).map(|_| ())
            }
        }
    }

    /// A reload began: systemd wants the monotonic time with it.
    pub(crate) fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}

/// The watchdog interval systemd asks for, halved (its advice), if it asks
/// this process (`WATCHDOG_PID`, when set, must be ours).
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Pings the watchdog until the server exits.
pub(crate) async fn watchdog(notifier: Notifier, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        notifier.send("WATCHDOG=1");
    }
}
