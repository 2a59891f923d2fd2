//! The new server's side of a binary upgrade: started by the old server
//! with the handover socket as its standard input, it takes the listening
//! sockets and table segments first (`Takeover::begin`, before binding
//! anything), starts the serving generation's workers, and once they are
//! Ready takes every connection over (`take_over`). Until `Commit` it
//! touches no client socket, so an abort leaves the old server whole.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::wire::{self, Begin, ENV_UPGRADE_FD, HANDOVER_VERSION, Note, WireError};
use super::{unix_ms, unix_us};
use crate::error::ServerError;
use crate::net::park::Adopted;
use crate::shared::Shared;
use crate::wire::{UpgradePhase, UpgradeStatus};

/// How long the new server waits for `Begin`: the old server sends it
/// right after starting us.
const BEGIN_WAIT: Duration = Duration::from_secs(10);

/// The handover as the new server holds it before its workers are ready.
#[derive(Debug)]
pub(crate) struct Takeover {
    socket: Arc<UnixStream>,
    pub(crate) begin: Begin,
    pub(crate) client: std::net::TcpListener,
    pub(crate) metrics: Option<std::net::TcpListener>,
    /// Table segments by name.
    pub(crate) tables: HashMap<String, File>,
    started: std::time::Instant,
}

/// The handover socket, when this process was started by `hotsock upgrade`.
fn socket_from_env() -> std::io::Result<Option<UnixStream>> {
    if std::env::var_os(ENV_UPGRADE_FD).is_none() {
        return Ok(None);
    }
    // Our stdin; a duplicate, so the std handle stays valid.
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    Ok(Some(UnixStream::from(fd)))
}

/// Tells the old server this process cannot take over, if it was started
/// for that (an error before `Server::bind`, such as a config that does
/// not load).
pub fn report_failure(reason: &str) {
    if let Ok(Some(socket)) = socket_from_env() {
        let _ = wire::send(&socket, &Note::Failed { reason: reason.to_owned() }, &[]);
    }
}

impl Takeover {
    /// Reads `Begin` and its descriptors, if this process takes over.
    pub(crate) fn begin() -> Result<Option<Takeover>, ServerError> {
        let io = |context: &str| {
            let context = format!("upgrade: {context}");
            move |e: WireError| ServerError::Upgrade(format!("{context}: {e}"))
        };
        let Some(socket) = socket_from_env().map_err(|e| ServerError::Upgrade(format!("handover socket: {e}")))? else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let (note, _) = wire::receive(&socket, BEGIN_WAIT).map_err(io("reading Begin"))?;
        let Note::Begin(begin) = note else {
            return Err(ServerError::Upgrade(format!("expected Begin, got {note:?}")));
        };
        if begin.handover_version != HANDOVER_VERSION {
            let why = format!(
                "the running server hands over with protocol version {}, this binary speaks {HANDOVER_VERSION}",
                begin.handover_version
            );
            let _ = wire::send(&socket, &Note::Failed { reason: why.clone() }, &[]);
            return Err(ServerError::Upgrade(why));
        }
        let count = 1 + usize::from(begin.metrics) + begin.tables.len();
        let mut fds = wire::receive_fds(&socket, count, BEGIN_WAIT).map_err(io("receiving the sockets"))?.into_iter();
        let mut listener = || fds.next().map(std::net::TcpListener::from);
        let client = listener().ok_or_else(|| ServerError::Upgrade("no client listener".into()))?;
        let metrics = if begin.metrics { listener() } else { None };
        let tables = begin.tables.iter().cloned().zip(fds.map(File::from)).collect();
        Ok(Some(Takeover { socket: Arc::new(socket), begin, client, metrics, tables, started }))
    }

    /// After the readiness gate: takes every connection over. On `Ok`, the
    /// old server has let go and the connections are this server's.
    pub(crate) async fn take_over(self, shared: &Arc<Shared>) -> Result<Taken, String> {
        let config = shared.config();
        // The old server parks within its pause budget, then sends.
        let budget = Duration::from_millis(config.reload.upgrade_pause_max_ms) * 2 + Duration::from_secs(5);
        drop(config);
        let socket = self.socket.clone();
        let ready = Note::Ready { version: crate::version().to_owned(), pid: std::process::id() };
        let first = blocking(move || {
            wire::send(&socket, &ready, &[])?;
            wire::receive(&socket, budget)
        })
        .await?;
        // The idle connections may come ahead of the state.
        let mut ahead = HashMap::new();
        let (note, blob) = match first {
            (Note::Premove(premove), blob) => {
                let socket = self.socket.clone();
                let count = premove.conns.len();
                let fds = blocking(move || wire::receive_fds(&socket, count, budget)).await?;
                let facts = wire::decode_premove(&premove, &blob).map_err(|e| e.to_string())?;
                for (fd, (conn, meta, uid, leftover)) in fds.into_iter().zip(facts) {
                    let stream = register(fd, conn)?;
                    ahead.insert(conn, (stream, meta, uid, leftover));
                }
                let socket = self.socket.clone();
                let connections = ahead.len();
                blocking(move || {
                    wire::send(&socket, &Note::Ahead { connections }, &[])?;
                    wire::receive(&socket, budget)
                })
                .await?
            }
            first => first,
        };
        let state = match note {
            Note::State(state) => state,
            Note::Abort { reason } => return Err(format!("the old server aborted: {reason}")),
            other => return Err(format!("expected State, got {other:?}")),
        };
        let socket = self.socket.clone();
        let following = state.sockets_following();
        let fds = blocking(move || wire::receive_fds(&socket, following, budget)).await?;
        let received_at = std::time::Instant::now();
        let paused_at_unix_us = state.paused_at_unix_us;
        let totals = state.totals;
        let (mut snapshot, leftovers) = wire::decode_state(state, &blob).map_err(|e| e.to_string())?;
        // Registered with the runtime now, before Commit, to keep that work
        // out of the pause after it: registering neither reads nor writes.
        let mut fds = fds.into_iter();
        let mut streams = Vec::with_capacity(snapshot.conns.len());
        for (conn, (_, leftover)) in snapshot.conns.iter_mut().zip(leftovers) {
            let (stream, leftover) = match leftover {
                Some(leftover) => {
                    let fd = fds.next().ok_or_else(|| format!("no socket for connection {}", conn.conn))?;
                    (register(fd, conn.conn)?, leftover)
                }
                None => {
                    let (stream, meta, _, leftover) = ahead
                        .remove(&conn.conn)
                        .ok_or_else(|| format!("connection {} was not sent ahead", conn.conn))?;
                    conn.meta = meta;
                    (stream, leftover)
                }
            };
            let peer = conn.meta.peer.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            streams.push((conn.conn, stream, peer, leftover));
        }
        // Sent ahead and unchanged since: the state note leaves them out.
        let busy = streams.len();
        for (conn, (stream, meta, uid, leftover)) in ahead {
            let peer = meta.peer.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
            snapshot.conns.push(crate::route::hub::ConnState { conn, meta, uid, outbox: Vec::new() });
            streams.push((conn, stream, peer, leftover));
        }
        let shared_of = shared.hub.adopt(snapshot);
        shared.accepted_total.fetch_add(totals.accepted, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.received.add(totals.messages_in, totals.bytes_in);
        shared.metrics.sent.add(totals.messages_out, totals.bytes_out);
        let mut pending = Vec::with_capacity(streams.len());
        for (conn, stream, peer, leftover) in streams {
            let Some(conn_shared) = shared_of.get(&conn).cloned() else { continue };
            pending.push((conn, stream, peer, leftover, conn_shared));
        }
        let held = pending.len();
        let adopted_in = received_at.elapsed();
        let socket = self.socket.clone();
        let commit = blocking(move || {
            wire::send(&socket, &Note::Holding { connections: held }, &[])?;
            wire::receive(&socket, budget)
        })
        .await?;
        match commit.0 {
            Note::Commit => {}
            Note::Abort { reason } => return Err(format!("the old server aborted: {reason}")),
            other => return Err(format!("expected Commit, got {other:?}")),
        }
        let committed_at = std::time::Instant::now();
        // Ours from here on, most recently active first (the old server's
        // order), so the busy ones are served first.
        let adopted: Vec<Adopted> = pending
            .into_iter()
            .map(|(conn, stream, peer, leftover, conn_shared)| Adopted { conn, stream, peer, leftover, conn_shared })
            .collect();
        tracing::info!(
            adopt_ms = adopted_in.as_millis() as u64,
            register_ms = committed_at.elapsed().as_millis() as u64,
            connections = adopted.len(),
            "upgrade: took the connections over"
        );
        let status = UpgradeStatus {
            phase: UpgradePhase::Done,
            from_version: self.begin.from_version.clone(),
            to_version: Some(crate::version().to_owned()),
            from_pid: self.begin.from_pid,
            to_pid: Some(std::process::id()),
            duration_ms: self.started.elapsed().as_millis() as u64,
            pause_ms: unix_us().saturating_sub(paused_at_unix_us) / 1000,
            connections: adopted.len(),
            at_unix_ms: unix_ms(),
            detail: None,
        };
        let mut busy_first = adopted;
        let idle = busy_first.split_off(busy.min(busy_first.len()));
        Ok(Taken { busy: busy_first, idle, status })
    }
}

/// What a takeover hands the server to serve.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The connections the state note named (the busy ones, most recently
    /// active first): served first.
    pub(crate) busy: Vec<Adopted>,
    /// Those sent ahead as idle: served once the busy ones are going.
    pub(crate) idle: Vec<Adopted>,
    pub(crate) status: UpgradeStatus,
}

/// A moved socket, registered with this runtime. The socket is
/// non-blocking already (the flag belongs to the socket, which the old
/// server's runtime set).
fn register(fd: std::os::fd::OwnedFd, conn: u64) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
        .map_err(|e| format!("connection {conn}: the moved socket cannot be served: {e}"))
}

/// Runs a blocking handover step off the async threads.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(step).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("the handover: {e}")),
        Err(e) => Err(e.to_string()),
    }
}
