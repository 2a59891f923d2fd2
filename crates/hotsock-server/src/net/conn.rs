//! One client connection, from the first byte to the last: HTTP upgrade,
//! then a loop that forwards whole messages to the hub and writes what the
//! workers send back, batched.
//!
//! This task owns the socket: only it reads, closes or moves it, and no
//! worker can close it except by asking the hub (`CloseConn`). While it
//! waits for output with everything written, others may write whole
//! messages to a plain socket (`net/plain.rs`, `route/outbox.rs`). It must
//! never wait on a worker without a deadline, and never let its queues grow
//! past the configured limits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hotsock_protocol::PAYLOAD_MAX_BYTES;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::close;
use crate::config::{Config, LimitsConfig};
use crate::metrics::{Flow, Refused};
use crate::net::admit::{self, Held, PerIp};
use crate::net::http;
use crate::net::park::{Activity, ParkState, Parked, Parking};
use crate::net::plain::PlainStream;
use crate::net::readahead::ReadAhead;
use crate::route::event::{ConnMeta, EventBody};
use crate::route::hub::Hub;
use crate::route::outbox::{ConnShared, DirectSocket, Next, Outgoing};
use crate::shared::Shared;

/// Messages read from a socket in one go before they are handed to the hub
/// under one lock. Bounds the batch so one busy client cannot hog the hub.
const READ_BATCH_MAX: usize = 64;

/// Bytes written to the socket buffer before one flush. Many small frames
/// share one syscall; a large backlog is still flushed in bounded steps.
const WRITE_BATCH_BYTES: usize = 64 << 10;

/// Close code and reason reported to workers when the peer vanished
/// without a close frame (RFC 6455's 1006, never sent on the wire).
const ABNORMAL: (u16, &str) = (1006, "");

/// Serves one accepted TCP connection until it is gone: over TLS first
/// when `[server.tls]` is set, then the same upgrade and loop either way
/// (generic over the stream, so the plain path is the code it always was).
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer_addr: SocketAddr) {
    let _task = ConnTask::count(&shared);
    let _ = stream.set_nodelay(true);
    let accepted_at = Instant::now();
    // The config current at accept serves this connection's handshake;
    // a reload that changes it affects connections accepted later.
    let config = shared.config();
    let deadline = accepted_at + Duration::from_millis(config.server.handshake_timeout_ms);
    // Take the connection slot before reading, so a flood of half-open
    // sockets counts against max_connections too.
    let permit = shared.conn_permits.clone().try_acquire_owned();
    let at_capacity = permit.is_err();
    let Some(tls) = &shared.tls else {
        let stream = PlainStream::new(stream, shared.metrics.sent.clone());
        return serve_stream(&shared, config, stream, peer_addr, accepted_at, deadline, at_capacity).await;
    };
    // Boxed: a task is allocated at the size of its largest state, and the
    // TLS states (rustls' connection, the TLS stream's WebSocket loop) are
    // several KiB that every plain connection would otherwise carry too.
    Box::pin(serve_tls(&shared, config, tls.load_full(), stream, peer_addr, accepted_at, deadline, at_capacity)).await;
}

/// The TLS handshake, then `serve_stream` on the TLS stream.
///
/// In two steps, so that the count can tell a probe from a failed
/// handshake: a client that closes before its ClientHello (a TCP port
/// check) is dropped uncounted, as on a plain listener; one that closes
/// after it, sent an alert or spoke something else is a refused TLS
/// handshake. Clients that reject the certificate do not all say so with an
/// alert (Python's asyncio just closes), so an EOF mid-handshake counts too.
#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    shared: &Shared,
    config: Arc<Config>,
    tls: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer_addr: SocketAddr,
    accepted_at: Instant,
    deadline: Instant,
    at_capacity: bool,
) {
    // The TLS handshake is part of the handshake: the same deadline bounds
    // it, so a client that stalls mid-handshake is dropped like one that
    // stalls mid-request.
    let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let failed = match tokio::time::timeout_at(deadline, hello).await {
        Ok(Ok(start)) => match tokio::time::timeout_at(deadline, start.into_stream(tls)).await {
            Ok(Ok(stream)) => {
                return serve_stream(shared, config, stream, peer_addr, accepted_at, deadline, at_capacity).await;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "not done within server.handshake_timeout_ms".to_owned(),
        },
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return,
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no ClientHello within server.handshake_timeout_ms".to_owned(),
    };
    tracing::debug!(peer = %peer_addr, error = failed, "TLS handshake failed");
    shared.metrics.refused(Refused::Tls);
}

/// The upgrade and the WebSocket loop, on a plain or TLS stream.
async fn serve_stream<S: Stream>(
    shared: &Shared,
    config: Arc<Config>,
    mut stream: S,
    peer_addr: SocketAddr,
    accepted_at: Instant,
    deadline: Instant,
    at_capacity: bool,
) {
    let peer = peer_addr.to_string();
    let upgrade = match tokio::time::timeout_at(
        deadline,
        http::read_head(&mut stream, config.limits.max_request_head_bytes, &peer),
    )
    .await
    {
        Err(_) => {
            tracing::debug!(%peer, "no request head within server.handshake_timeout_ms");
            return;
        }
        Ok(Ok(None)) => {
            tracing::debug!(%peer, elapsed_ms = accepted_at.elapsed().as_millis(), "closed before its request head");
            return;
        }
        Ok(Err(http::Refusal::Plain { method, path })) if config.server.static_dir.is_some() => {
            let dir = config.base_dir.join(config.server.static_dir.as_deref().unwrap_or(std::path::Path::new(".")));
            let files = &config.server.static_files;
            return answer(shared, stream, http::static_answer(&dir, files, &config.base_dir, &method, &path)).await;
        }
        Ok(Err(refusal)) => {
            let why = match refusal {
                http::Refusal::BadRequest(_) => Refused::BadRequest,
                http::Refusal::UpgradeRequired | http::Refusal::Plain { .. } => Refused::NotUpgrade,
                http::Refusal::TooLarge => Refused::HeadTooLarge,
            };
            return refuse(shared, stream, refusal.response(), why).await;
        }
        Ok(Ok(Some(upgrade))) => upgrade,
    };
    if at_capacity || shared.is_stopping() {
        tracing::warn!(%peer, "refusing upgrade: server at max_connections or stopping");
        let body = b"server is at its connection limit or stopping; retry later\n";
        let response = http::response(503, "Service Unavailable", &[("Retry-After", b"1")], body);
        return refuse(shared, stream, response, Refused::AtCapacity).await;
    }
    if !admit::origin_allowed(shared.origins.load().as_deref().map(Vec::as_slice), upgrade.request.header("origin")) {
        tracing::warn!(%peer, "refusing upgrade: Origin not in server.allowed_origins");
        let response = http::response(403, "Forbidden", &[], b"this origin may not open a WebSocket here\n");
        return refuse(shared, stream, response, Refused::ForbiddenOrigin).await;
    }
    let _per_ip = match shared.per_ip.admit(peer_addr.ip(), Instant::now().into_std()) {
        Ok(held) => PerIpHeld { per_ip: &shared.per_ip, held: Some(held) },
        Err(why) => {
            let response = match why {
                Refused::RateLimited => {
                    let body = b"too many connection attempts from your address; slow down\n";
                    http::response(429, "Too Many Requests", &[("Retry-After", b"1")], body)
                }
                _ => {
                    let body = b"your address holds as many connections as it may (limits.max_connections_per_ip)\n";
                    http::response(503, "Service Unavailable", &[("Retry-After", b"5")], body)
                }
            };
            return refuse(shared, stream, response, why).await;
        }
    };
    let hub = &shared.hub;
    let conn = hub.next_conn_id();
    let conn_shared = Arc::new(ConnShared::default());
    let meta = ConnMeta { peer: peer.clone(), path: upgrade.request.path.clone(), connected_at_unix_ms: unix_ms() };
    hub.register(conn, meta, conn_shared.clone());
    let _registered = Registered { hub, conn };

    let (uid, extra_headers) = if hub.worker_handshakes() {
        let reply = hub.expect_handshake(conn);
        hub.dispatch(conn, [EventBody::Handshake(upgrade.request.clone())]);
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(reply)) if reply.status == 101 => (reply.uid, reply.headers),
            Ok(Ok(reply)) => {
                let response = http::worker_rejection(reply.status, &reply.headers, &reply.body);
                return refuse(shared, stream, response, Refused::WorkerRejected).await;
            }
            _ => {
                tracing::warn!(conn, %peer, "no worker decided on the handshake within handshake_timeout_ms");
                let body = b"no worker answered the handshake in time\n";
                let response = http::response(503, "Service Unavailable", &[], body);
                return refuse(shared, stream, response, Refused::HandshakeTimeout).await;
            }
        }
    } else {
        (None, Vec::new())
    };
    if stream.write_all(&http::switching_protocols(&upgrade.key, &extra_headers)).await.is_err() {
        return;
    }
    shared.accepted_total.fetch_add(1, Ordering::Relaxed);
    shared.metrics.handshake(accepted_at.elapsed());
    let early = upgrade.rest.to_vec();
    // The request head (its buffer, headers, path) is not needed any more;
    // free it rather than keep it for the connection's lifetime.
    drop(upgrade);
    let stream = ReadAhead::new(stream, early);
    let ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(ws_config(&config.limits))).await;
    hub.opened(conn, uid);
    hub.dispatch(conn, [EventBody::Open]);
    let close_timeout = Duration::from_millis(config.server.close_timeout_ms);
    // Not kept for the connection's life: a reload frees the old one.
    drop(config);
    pump_until_closed(shared, conn, &conn_shared, ws, close_timeout).await;
}

/// Serves a connection an upgrade moved here from the old server: already
/// open and registered in the hub (`Hub::adopt`), its unparsed bytes in
/// `leftover`; from here on it is served like any other.
pub(crate) async fn adopted(shared: Arc<Shared>, adopted: crate::net::park::Adopted) {
    let _task = ConnTask::count(&shared);
    let crate::net::park::Adopted { conn, stream, peer, leftover, conn_shared } = adopted;
    let _ = stream.set_nodelay(true);
    let config = shared.config();
    let _permit = shared.conn_permits.clone().try_acquire_owned();
    let _per_ip =
        PerIpHeld { per_ip: &shared.per_ip, held: Some(shared.per_ip.adopt(peer.ip(), Instant::now().into_std())) };
    let _registered = Registered { hub: &shared.hub, conn };
    let stream = PlainStream::new(stream, shared.metrics.sent.clone());
    let ws = WebSocketStream::from_raw_socket(
        ReadAhead::new(stream, leftover),
        Role::Server,
        Some(ws_config(&config.limits)),
    )
    .await;
    let close_timeout = Duration::from_millis(config.server.close_timeout_ms);
    drop(config);
    pump_until_closed(&shared, conn, &conn_shared, ws, close_timeout).await;
}

/// The open connection's loop, then its Close event (none when an upgrade
/// moved it: the new server goes on with it).
async fn pump_until_closed<S: Stream>(
    shared: &Shared,
    conn: u64,
    conn_shared: &ConnShared,
    ws: WebSocketStream<ReadAhead<S>>,
    close_timeout: Duration,
) {
    let hub = &shared.hub;
    let ended = Connection {
        ws,
        shared: conn_shared,
        hub,
        parking: &shared.parking,
        conn,
        close_timeout,
        batch: VecDeque::new(),
        received: &shared.metrics.received,
        sent: &shared.metrics.sent,
        read_drained: false,
    }
    .run()
    .await;
    if let Some((code, reason)) = ended {
        hub.dispatch(conn, [EventBody::Close { code, reason }]);
    }
}

/// The WebSocket settings every connection gets, from `[limits]`.
pub(crate) fn ws_config(limits: &LimitsConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        // Frames accumulate in the write buffer until a flush or this size;
        // we flush once per batch. The outbox bounds what is queued (see
        // `Hub::send`); this only caps one batch plus its largest message,
        // which may be a worker's largest push.
        .write_buffer_size(WRITE_BATCH_BYTES)
        .max_write_buffer_size(WRITE_BATCH_BYTES + limits.output_buffer_bytes.max(PAYLOAD_MAX_BYTES as usize))
        .max_message_size(Some(limits.max_message_bytes))
        .max_frame_size(Some(limits.max_message_bytes))
}

/// Counts a connection task in `Shared::conn_tasks` for as long as it runs.
struct ConnTask<'a>(&'a std::sync::atomic::AtomicUsize);

impl ConnTask<'_> {
    fn count(shared: &Shared) -> ConnTask<'_> {
        shared.conn_tasks.fetch_add(1, Ordering::Relaxed);
        ConnTask(&shared.conn_tasks)
    }
}

impl Drop for ConnTask<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Gives the address's connection back to the per-IP count however
/// `serve` returns.
struct PerIpHeld<'a> {
    per_ip: &'a PerIp,
    held: Option<Held>,
}

impl Drop for PerIpHeld<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            self.per_ip.release(held, Instant::now().into_std());
        }
    }
}

/// Removes the connection from the hub however `serve` returns.
struct Registered<'a> {
    hub: &'a Hub,
    conn: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.hub.remove(self.conn);
    }
}

async fn refuse(shared: &Shared, stream: impl Stream, response: Vec<u8>, why: Refused) {
    shared.metrics.refused(why);
    answer(shared, stream, response).await;
}

/// Writes a whole HTTP response and closes (bounded by close_timeout_ms).
async fn answer(shared: &Shared, mut stream: impl Stream, response: Vec<u8>) {
    let close_timeout = Duration::from_millis(shared.config().server.close_timeout_ms);
    let _ = timeout(close_timeout, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}

/// What a client connection runs on: a `TcpStream`, or a TLS stream over one.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin {
    /// Ready once the socket underneath has bytes (or an error) to read;
    /// otherwise registers the waker for that. Asking this is far cheaper
    /// than a read attempt through the WebSocket library (which readies a
    /// buffer first), and a connection asks after every write.
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()>;

    /// The socket, when the connection can move to another process as it
    /// is (plain TCP: a TLS session's state cannot).
    fn movable_socket(&self) -> Option<std::os::fd::BorrowedFd<'_>>;

    /// The socket others may write whole messages to while the task waits
    /// for output (plain TCP: `net/plain.rs`).
    fn direct(&self) -> Option<std::sync::Weak<dyn DirectSocket>>;
}

impl Stream for PlainStream {
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // An error is "readable": the read that follows reports it.
        self.tcp().poll_read_ready(cx).map(|_| ())
    }

    fn movable_socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(self))
    }

    fn direct(&self) -> Option<std::sync::Weak<dyn DirectSocket>> {
        Some(PlainStream::direct(self))
    }
}

impl Stream for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_readable(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Plaintext rustls already decrypted is only left behind when a
        // read stopped early, and then the gate is open (`read_drained`).
        self.get_ref().0.poll_read_ready(cx).map(|_| ())
    }

    fn movable_socket(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }

    fn direct(&self) -> Option<std::sync::Weak<dyn DirectSocket>> {
        None
    }
}

struct Connection<'a, S> {
    ws: WebSocketStream<ReadAhead<S>>,
    shared: &'a ConnShared,
    hub: &'a Hub,
    parking: &'a Parking,
    conn: u64,
    close_timeout: Duration,
    /// Items taken from the outbox for the write under way (taken in one
    /// lock per batch, not one per message; empty and unallocated at rest).
    batch: VecDeque<Outgoing>,
    /// The server's message counters: one add per batch each way.
    received: &'a Flow,
    sent: &'a Flow,
    /// The last read attempt found nothing more: everything the library
    /// had buffered is consumed, so the next message needs the socket to
    /// become readable first (see `Stream::poll_readable`).
    read_drained: bool,
}

/// How a write batch ended.
enum Written {
    Ok,
    /// The hub asked for a close; do it after the data before it.
    Close(u16, String),
    Overflow,
    Failed,
}

/// Why a connection's read/write loop ended.
enum Ending {
    /// Close with this code and reason.
    Close(u16, String),
    Overflow,
    Read(ReadEnd),
    /// The socket failed: nothing more can be sent.
    Abnormal,
    /// An upgrade moved the connection to the new server.
    Moved,
}

impl<S: Stream> Connection<'_, S> {
    /// Runs until the connection is closed; returns the code and reason to
    /// report in the Close event (`None`: it moved to the new server).
    async fn run(mut self) -> Option<(u16, String)> {
        self.open_direct();
        let ending = self.pump().await;
        // Closing (or moved): only this task writes from here on.
        self.shared.close_direct();
        if let Ending::Moved = ending {
            return None;
        }
        // The ways out are rare and their futures large: boxed, so that the
        // task of every idle connection stays small (it is allocated at the
        // size of its largest state).
        Some(Box::pin(self.end(ending)).await)
    }

    async fn end(self, ending: Ending) -> (u16, String) {
        match ending {
            Ending::Close(code, reason) => self.close(code, &reason).await,
            Ending::Overflow => self.overflow().await,
            Ending::Read(end) => self.finish(end).await,
            Ending::Abnormal | Ending::Moved => (ABNORMAL.0, ABNORMAL.1.into()),
        }
    }

    /// Moves messages both ways until one side ends.
    async fn pump(&mut self) -> Ending {
        loop {
            let state = self.parking.state();
            if state == ParkState::Serving {
                if self.ws.get_ref().is_stopping() {
                    self.resume();
                }
            } else if state.parks(|| Activity {
                last_read_ms: self.shared.last_read_ms.load(Ordering::Relaxed),
                inflight: self.shared.inflight.load(Ordering::Relaxed),
                queued: !self.shared.outbox_is_empty(),
            }) && let Some(ending) = self.try_park().await
            {
                return ending;
            }
            // Stop reading while this connection has too many events in
            // flight: TCP back-pressure, not memory, absorbs a fast client.
            // Read each turn (one atomic load): a reload may change it, and
            // then wakes every connection (`Hub::set_limits`).
            let cap = self.hub.max_inflight_per_conn();
            let room = self.shared.inflight.load(Ordering::Relaxed) < cap;
            tokio::select! {
                biased;
                first = self.shared.next_out() => {
                    match self.write_batch(first).await {
                        Written::Ok => self.shared.written(),
                        Written::Close(code, reason) => return Ending::Close(code, reason),
                        Written::Overflow => return Ending::Overflow,
                        Written::Failed => return Ending::Abnormal,
                    }
                }
                () = self.shared.wake.notified() => {
                    if self.shared.overflowed.load(Ordering::Relaxed) {
                        return Ending::Overflow;
                    }
                }
                read = std::future::poll_fn(|cx| {
                    if self.read_drained {
                        let stream = self.ws.get_ref();
                        if !stream.has_pending() {
                            std::task::ready!(stream.get_ref().poll_readable(cx));
                        }
                    }
                    self.ws.poll_next_unpin(cx)
                }), if room => {
                    match self.read_batch(read, cap) {
                        Ok(()) => {}
                        Err(end) => return Ending::Read(end),
                    }
                }
            }
        }
    }

    /// Stops between two messages with all output written, and waits there
    /// for the upgrade's outcome; `None`: not there yet (reading goes on to
    /// the end of the message under way, writing goes on), or the upgrade
    /// was aborted and the connection serves on.
    async fn try_park(&mut self) -> Option<Ending> {
        // A parked socket is the upgrade's: nobody else writes to it, and
        // what is queued meanwhile moves with it.
        self.shared.close_direct();
        self.ws.get_mut().stop_at_boundary();
        if !self.ws.get_ref().stopped() {
            return None;
        }
        // At the boundary the reader hands up nothing more, so one read
        // that finds nothing means the library holds no byte of the
        // client's (a connection that has been idle since it opened, or
        // moved here, never read to a stop).
        if !self.read_drained {
            match self.ws.next().now_or_never() {
                None => self.read_drained = true,
                Some(first) => {
                    let cap = self.hub.max_inflight_per_conn();
                    return self.read_batch(first, cap).err().map(Ending::Read);
                }
            }
        }
        let quiet = self.read_drained && self.shared.outbox_is_empty();
        if !quiet {
            return None;
        }
        // Pongs the library queued for pings it read.
        match timeout(self.close_timeout, self.ws.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Some(Ending::Abnormal),
            Err(_) => return None,
        }
        let reader = self.ws.get_ref();
        let socket = std::os::fd::AsRawFd::as_raw_fd(&reader.get_ref().movable_socket()?);
        self.parking.park(self.conn, Parked { socket, leftover: reader.leftover().to_vec() });
        loop {
            match self.parking.state() {
                ParkState::ParkingIdle(_) | ParkState::Parking => self.shared.wake.notified().await,
                ParkState::Moved => return Some(Ending::Moved),
                ParkState::Serving => {
                    self.parking.unpark(self.conn);
                    self.resume();
                    return None;
                }
            }
        }
    }

    /// Hands one message, and any others already buffered, to the hub.
    fn read_batch(&mut self, first: Option<Result<Message, WsError>>, cap: u32) -> Result<(), ReadEnd> {
        // Stopped early (batch or in-flight cap), the library may still
        // hold whole frames: read again without waiting for the socket.
        self.read_drained = false;
        let mut events = Vec::new();
        let mut next = first;
        let result = loop {
            match next {
                None => break Err(ReadEnd::Gone),
                Some(Err(error)) => break Err(ReadEnd::Error(error)),
                Some(Ok(Message::Text(text))) => {
                    events.push(EventBody::Message { binary: false, data: Bytes::from(text) })
                }
                Some(Ok(Message::Binary(data))) => events.push(EventBody::Message { binary: true, data }),
                Some(Ok(Message::Close(frame))) => break Err(ReadEnd::PeerClosed(frame)),
                // Pings are answered by the library on the next write or
                // flush; pongs and raw frames carry nothing for workers.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
            let inflight = self.shared.inflight.load(Ordering::Relaxed) as usize + events.len();
            if events.len() >= READ_BATCH_MAX || inflight >= cap as usize {
                break Ok(());
            }
            match self.ws.next().now_or_never() {
                Some(more) => next = more,
                None => {
                    self.read_drained = true;
                    break Ok(());
                }
            }
        };
        if !events.is_empty() {
            self.shared.last_read_ms.store(self.hub.now_ms(), Ordering::Relaxed);
            let bytes = events.iter().map(EventBody::len).sum::<usize>();
            self.received.add(events.len() as u64, bytes as u64);
            self.hub.dispatch(self.conn, events);
        }
        result
    }

    /// Serves on after a park or an attempt to park: reads go on, and so
    /// do direct writes (`try_park` shut them).
    fn resume(&mut self) {
        self.ws.get_mut().resume();
        self.open_direct();
    }

    /// Lets others write whole messages to the socket while this task
    /// waits for output (plain TCP; `route::outbox`).
    fn open_direct(&self) {
        if let Some(socket) = self.ws.get_ref().get_ref().direct() {
            self.shared.open_direct(socket);
        }
    }

    /// Writes `first` and everything else queued, then flushes once (which
    /// also finishes a frame a direct write started).
    async fn write_batch(&mut self, first: Next) -> Written {
        let shared = self.shared;
        let ws = &mut self.ws;
        let batch = &mut self.batch;
        let sent = self.sent;
        if let Next::Item(first) = first {
            batch.push_back(first);
        }
        let write = async {
            let mut bytes = 0;
            let (mut messages, mut message_bytes) = (0, 0);
            let mut close = None;
            loop {
                let Some(item) = batch.pop_front() else {
                    if bytes >= WRITE_BATCH_BYTES {
                        break;
                    }
                    shared.pop_batch(WRITE_BATCH_BYTES - bytes, batch);
                    if batch.is_empty() {
                        break;
                    }
                    continue;
                };
                shared.queued_bytes.fetch_sub(item.len(), Ordering::Relaxed);
                bytes += item.len();
                if !matches!(item, Outgoing::Close(..)) {
                    messages += 1;
                    message_bytes += item.len() as u64;
                }
                match item {
                    Outgoing::Text(data) => {
                        if ws.feed(frame(data, Data::Text)).await.is_err() {
                            return Written::Failed;
                        }
                    }
                    Outgoing::Binary(data) => {
                        if ws.feed(Message::Binary(data)).await.is_err() {
                            return Written::Failed;
                        }
                    }
                    Outgoing::Close(code, reason) => {
                        close = Some((code, reason));
                        break;
                    }
                }
            }
            sent.add(messages, message_bytes);
            if ws.flush().await.is_err() {
                return Written::Failed;
            }
            match close {
                Some((code, reason)) => Written::Close(code, reason),
                None => Written::Ok,
            }
        };
        // A client that stops reading makes the flush wait forever; the hub
        // sets `overflowed` when its queue passes the cap, which ends the wait.
        let overflow = async {
            loop {
                shared.wake.notified().await;
                if shared.overflowed.load(Ordering::Relaxed) {
                    return;
                }
            }
        };
        tokio::select! {
            written = write => written,
            () = overflow => Written::Overflow,
        }
    }

    async fn overflow(self) -> (u16, String) {
        tracing::warn!(
            conn = self.conn,
            "closing slow reader: output buffer over limits.output_buffer_bytes; client is not reading"
        );
        self.close(close::SLOW_READER.0, close::SLOW_READER.1).await
    }

    async fn finish(self, end: ReadEnd) -> (u16, String) {
        match end {
            ReadEnd::Gone => (ABNORMAL.0, ABNORMAL.1.into()),
            ReadEnd::PeerClosed(frame) => {
                let (code, reason) =
                    frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                // The library queued our close reply; flushing sends it and
                // reading to the end completes the handshake.
                let mut ws = self.ws;
                let _ = timeout(self.close_timeout, async {
                    let _ = ws.flush().await;
                    while let Some(Ok(_)) = ws.next().await {}
                })
                .await;
                (code, reason)
            }
            ReadEnd::Error(error) => match error {
                WsError::Capacity(_) => self.close(close::MESSAGE_TOO_BIG.0, close::MESSAGE_TOO_BIG.1).await,
                WsError::Utf8(_) => self.close(close::INVALID_UTF8.0, close::INVALID_UTF8.1).await,
                WsError::Protocol(error) => {
                    tracing::debug!(conn = self.conn, %error, "WebSocket protocol violation");
                    self.close(close::PROTOCOL_ERROR.0, close::PROTOCOL_ERROR.1).await
                }
                _ => (ABNORMAL.0, ABNORMAL.1.into()),
            },
        }
    }

    /// Sends a close frame and waits (bounded) for the client's reply.
    async fn close(self, code: u16, reason: &str) -> (u16, String) {
        let code = sanitize_close_code(code);
        let reason = truncate_reason(reason);
        let mut ws = self.ws;
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.clone().into() };
        let _ = timeout(self.close_timeout, async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
        (code, reason)
    }
}

/// A whole text message as one frame. The hub checked the UTF-8 once when
/// the message entered the server; a raw frame is not checked again, which
/// matters when one message goes to many connections.
fn frame(data: Bytes, kind: Data) -> Message {
    Message::Frame(Frame::message(data, OpCode::Data(kind), true))
}

enum ReadEnd {
    Gone,
    PeerClosed(Option<CloseFrame>),
    Error(WsError),
}

/// Close codes a server may send (RFC 6455 §7.4); anything else a worker
/// asks for becomes 1000 rather than an invalid frame.
fn sanitize_close_code(code: u16) -> u16 {
    match code {
        1000..=1003 | 1007..=1014 | 3000..=4999 => code,
        _ => 1000,
    }
}

/// A close frame's reason must fit in 123 bytes; cut at a char boundary.
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<A, B, C, F: std::future::Future>(_: impl FnOnce(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection's task is allocated at the size of `serve`'s
    /// largest state, idle or not: the TLS path once made every plain
    /// connection carry its states (13.5 instead of 7.3 KiB per idle
    /// connection in `hotsock-bench idle`; the future was 8712 bytes in a
    /// debug build, 2160 with the TLS path boxed). The bound (debug layout,
    /// which is larger than release) leaves room for the plain path to grow
    /// a little, not for another stream type inline.
    #[test]
    fn the_connection_task_stays_small() {
        let size = future_size(serve);
        eprintln!("serve future: {size} bytes");
        assert!(size <= CONNECTION_TASK_MAX_BYTES, "serve's future is {size} bytes");
    }

    const CONNECTION_TASK_MAX_BYTES: usize = 3072;
}
