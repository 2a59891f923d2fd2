//! [`Ctx`]: what a handler can do. Commands are queued to the writer task and
//! sent in batches; they never block and never fail loudly, because a worker
//! whose server is gone is about to exit anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hotsock_protocol::{
    ChannelError, ConnInfo, HandshakeReply, Member, Position, PresenceEntry, Role, Subscribed, ToServer,
    decode_conn_list, decode_members, decode_names, decode_presence,
};
use tokio::sync::{mpsc, oneshot};

use crate::table::Table;
use crate::{Error, Finish, Payload};

/// An item for the writer task.
#[derive(Debug)]
pub(crate) enum Out {
    Frame(ToServer),
    /// An event handler finished; acknowledgements are coalesced.
    Ack(u64),
    /// Answered once everything queued before it has been written.
    Flush(oneshot::Sender<()>),
}

/// Longest panic message sent to the server; the full one is in the log.
const PANIC_MESSAGE_MAX_BYTES: usize = 1024;

type Waiters = Mutex<HashMap<u64, oneshot::Sender<(bool, Bytes)>>>;
type TaskWaiters = Mutex<HashMap<u64, oneshot::Sender<Finish>>>;

/// A dispatched task: its id, and its result when awaited.
#[derive(Debug)]
pub struct TaskHandle {
    id: u64,
    result: Option<oneshot::Receiver<Finish>>,
    /// Where a result goes if the handle is dropped unread.
    ctx: Ctx,
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        // A result that arrived but was never read is not lost: it goes to
        // `App::on_finish` like one that arrives after the drop.
        if let Some(mut result) = self.result.take()
            && let Ok(finish) = result.try_recv()
        {
            self.ctx.unclaimed(finish);
        }
    }
}

impl TaskHandle {
    /// The task id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the task's result. Dropping the handle instead makes the
    /// result go to `App::on_finish`.
    pub async fn result(mut self) -> Result<Bytes, Error> {
        let result = self.result.take().ok_or(Error::Disconnected)?;
        let finish = result.await.map_err(|_| Error::Disconnected)?;
        if finish.failed {
            return Err(Error::TaskFailed(String::from_utf8_lossy(&finish.payload).into_owned()));
        }
        Ok(finish.payload)
    }
}

/// A handle to the server, given to every callback. Cheap to clone; clones
/// may be moved into spawned tasks.
#[derive(Debug, Clone)]
pub struct Ctx {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    out: mpsc::UnboundedSender<Out>,
    waiters: Waiters,
    /// Result senders of `task()` calls, by request id until the server
    /// names the task, then by task id.
    task_requests: TaskWaiters,
    task_results: TaskWaiters,
    unclaimed: mpsc::UnboundedSender<Finish>,
    /// Results handed to `on_finish` whose handler has not finished: a
    /// stopping worker waits for them as for events, so a draining worker
    /// does not exit between receiving its result and acting on it.
    finishing: std::sync::atomic::AtomicUsize,
    /// Woken when events or `on_finish` results run out.
    idle: tokio::sync::Notify,
    next_request: AtomicU64,
    slot: u32,
    generation: u64,
    role: Role,
    tables: Vec<Table>,
    /// `cluster.node_id`, in a cluster.
    node: Option<String>,
}

impl Ctx {
    pub(crate) fn new(
        out: mpsc::UnboundedSender<Out>,
        slot: u32,
        generation: u64,
        role: Role,
        tables: Vec<Table>,
        unclaimed: mpsc::UnboundedSender<Finish>,
        node: Option<String>,
    ) -> Ctx {
        Ctx {
            inner: Arc::new(Inner {
                out,
                waiters: Mutex::new(HashMap::new()),
                task_requests: Mutex::new(HashMap::new()),
                task_results: Mutex::new(HashMap::new()),
                unclaimed,
                finishing: std::sync::atomic::AtomicUsize::new(0),
                idle: tokio::sync::Notify::new(),
                next_request: AtomicU64::new(1),
                slot,
                generation,
                role,
                tables,
                node,
            }),
        }
    }

    fn send(&self, message: ToServer) {
        let _ = self.inner.out.send(Out::Frame(message));
    }

    pub(crate) fn ack(&self, id: u64) {
        let _ = self.inner.out.send(Out::Ack(id));
    }

    /// Tells the server a handler panicked, so canaries and automatic
    /// rollback can count it.
    pub(crate) fn report_panic(&self, conn: u64, event: u64, mut message: String) {
        if message.len() > PANIC_MESSAGE_MAX_BYTES {
            let mut end = PANIC_MESSAGE_MAX_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        self.send(ToServer::Panicked { conn, event, message });
    }

    pub(crate) fn send_handoff(&self, state: Option<Bytes>) {
        self.send(ToServer::Handoff(state));
    }

    pub(crate) fn reply_handshake(&self, conn: u64, reply: HandshakeReply) {
        self.send(ToServer::HandshakeReply { conn, reply });
    }

    /// Delivers a reply to the query waiting for it. For a task dispatch the
    /// result waiter is filed under the task id right here, in the read
    /// loop, before any later frame (the result) can be read.
    pub(crate) fn resolve(&self, request: u64, not_found: bool, body: Bytes) {
        let sender = self.inner.task_requests.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
        if let Some(sender) = sender
            && !not_found
            && let Ok(id) = <[u8; 8]>::try_from(&body[..])
        {
            self.inner.task_results.lock().unwrap_or_else(|p| p.into_inner()).insert(u64::from_le_bytes(id), sender);
        }
        let waiter = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
        if let Some(waiter) = waiter {
            let _ = waiter.send((not_found, body));
        }
    }

    /// Fails every waiting query (the server is gone).
    pub(crate) fn fail_all(&self) {
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.task_requests.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.inner.task_results.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Hands a task result to its waiter; returns it if nobody waits.
    pub(crate) fn deliver(&self, finish: Finish) -> Option<Finish> {
        let sender = self.inner.task_results.lock().unwrap_or_else(|p| p.into_inner()).remove(&finish.task);
        match sender {
            Some(sender) => sender.send(finish).err(),
            None => Some(finish),
        }
    }

    /// A result nobody waits for: to `App::on_finish`.
    pub(crate) fn unclaimed(&self, finish: Finish) {
        self.inner.finishing.fetch_add(1, Ordering::AcqRel);
        if self.inner.unclaimed.send(finish).is_err() {
            self.finished_one();
        }
    }

    /// An `on_finish` handler returned.
    pub(crate) fn finished_one(&self) {
        if self.inner.finishing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }

    /// `on_finish` handlers pending or running.
    pub(crate) fn finishing(&self) -> usize {
        self.inner.finishing.load(Ordering::Acquire)
    }

    pub(crate) fn idle(&self) -> &tokio::sync::Notify {
        &self.inner.idle
    }

    pub(crate) fn task_done(&self, task: u64, failed: bool, payload: Bytes) {
        self.send(ToServer::TaskDone { task, failed, payload });
    }

    /// Hands `payload` to a task worker. Returns once the server accepted it
    /// (or refused it: queue full, no task workers); await
    /// [`TaskHandle::result`] for the result, or drop the handle and get it
    /// in `App::on_finish`.
    pub async fn task(&self, payload: impl Into<Bytes>) -> Result<TaskHandle, Error> {
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (result_tx, result) = oneshot::channel();
        self.inner.task_requests.lock().unwrap_or_else(|p| p.into_inner()).insert(request, result_tx);
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        self.send(ToServer::DispatchTask { request, payload: payload.into() });
        let (refused, body) = rx.await.map_err(|_| Error::Disconnected)?;
        if refused {
            return Err(Error::TaskRefused(String::from_utf8_lossy(&body).into_owned()));
        }
        let id = <[u8; 8]>::try_from(&body[..]).map(u64::from_le_bytes).map_err(|_| Error::Disconnected)?;
        Ok(TaskHandle { id, result: Some(result), ctx: self.clone() })
    }

    /// A shared table declared in the config (`[tables.NAME]`): the same
    /// rows in every worker, kept across reloads and crashes.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.inner.tables.iter().find(|t| t.name() == name)
    }

    /// This node's `cluster.node_id` in a cluster (`None` on a single
    /// server). Connection ids are per node: with it, a connection is named
    /// cluster-wide.
    pub fn node(&self) -> Option<&str> {
        self.inner.node.as_deref()
    }

    /// This worker's slot (0-based).
    pub fn slot(&self) -> u32 {
        self.inner.slot
    }

    /// The code generation this worker belongs to.
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// Event worker or task worker.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Sends a message to one connection. Messages to one connection arrive
    /// in the order they were pushed; a connection that is gone drops them.
    pub fn push(&self, conn: u64, payload: impl Into<Payload>) {
        let (binary, data) = payload.into().into_parts();
        self.send(ToServer::Push { conn, binary, data });
    }

    /// Closes a connection with a WebSocket close code and reason, after
    /// every message pushed to it before.
    pub fn close(&self, conn: u64, code: u16, reason: impl Into<String>) {
        self.send(ToServer::CloseConn { conn, code, reason: reason.into() });
    }

    /// Closes every connection bound to `uid` (on every node of a
    /// cluster) after what was sent to it before (`send_to_uid`).
    pub fn close_uid(&self, uid: u64, code: u16, reason: impl Into<String>) {
        self.send(ToServer::CloseUid { uid, code, reason: reason.into() });
    }

    /// Binds a connection to a numeric user id, for [`Ctx::send_to_uid`] and
    /// for `dispatch = "uid"`. A connection has at most one uid; a uid may
    /// have many connections.
    pub fn bind(&self, conn: u64, uid: u64) {
        self.send(ToServer::Bind { conn, uid });
    }

    /// Sends a message to every connection bound to `uid`.
    pub fn send_to_uid(&self, uid: u64, payload: impl Into<Payload>) {
        let (binary, data) = payload.into().into_parts();
        self.send(ToServer::SendToUid { uid, binary, data });
    }

    /// Sends a message to every open connection.
    pub fn broadcast(&self, payload: impl Into<Payload>) {
        let (binary, data) = payload.into().into_parts();
        self.send(ToServer::Broadcast { binary, data });
    }

    /// Sends a request now and returns the receiver of its reply, so the
    /// request goes out whether or not the caller ever awaits the answer.
    fn request(&self, message: impl FnOnce(u64) -> ToServer) -> oneshot::Receiver<(bool, Bytes)> {
        let request = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        self.send(message(request));
        rx
    }

    async fn query(&self, message: impl FnOnce(u64) -> ToServer) -> Result<(bool, Bytes), Error> {
        self.request(message).await.map_err(|_| Error::Disconnected)
    }

    /// Adds a connection to a channel: from now on it gets every
    /// publication of the channel, in offset order, after everything pushed
    /// to it before. Membership lives in the server: it survives reloads,
    /// rollbacks and worker crashes, and ends when the connection closes.
    /// The request is sent at once; await the [`Reply`] for the outcome
    /// (a refusal names the limit), or drop it.
    pub fn subscribe(&self, conn: u64, channel: impl Into<String>) -> Reply<Subscribed> {
        let channel = channel.into();
        Reply::new(
            self.request(|request| ToServer::Subscribe { conn, request, channel, from: None }),
            decode_subscribed,
        )
    }

    /// Like [`Ctx::subscribe`], for a client that reconnects and says it saw
    /// the channel up to `since`: the server first replays what came after
    /// (nothing twice, nothing skipped) and reports
    /// [`Subscribed::recovered`]; when it cannot (the history no longer
    /// reaches back, the epoch changed, or the gap exceeds
    /// `channels.max_replay`) the connection joins live with
    /// `recovered = false`, so send it a full state.
    pub fn subscribe_from(&self, conn: u64, channel: impl Into<String>, since: Position) -> Reply<Subscribed> {
        let channel = channel.into();
        Reply::new(
            self.request(|request| ToServer::Subscribe { conn, request, channel, from: Some(since) }),
            decode_subscribed,
        )
    }

    /// Removes a connection from a channel (nothing happens if it is not in
    /// it). Nothing published afterwards reaches it.
    pub fn unsubscribe(&self, conn: u64, channel: impl Into<String>) {
        self.send(ToServer::Unsubscribe { conn, channel: channel.into() });
    }

    /// Sends `payload` to every member of `channel` with the channel's next
    /// offset; also kept in the channel's history for recovery. Framed once
    /// in the server, whatever the number of members. The reply carries
    /// the publication's position.
    pub fn publish(&self, channel: impl Into<String>, payload: impl Into<Payload>) -> Reply<Position> {
        self.publish_inner(channel.into(), payload.into(), None)
    }

    /// [`Ctx::publish`] to every member but `except` (typically the sender).
    pub fn publish_except(
        &self,
        channel: impl Into<String>,
        payload: impl Into<Payload>,
        except: u64,
    ) -> Reply<Position> {
        self.publish_inner(channel.into(), payload.into(), Some(except))
    }

    fn publish_inner(&self, channel: String, payload: Payload, except: Option<u64>) -> Reply<Position> {
        let (binary, data) = payload.into_parts();
        let rx = self.request(|request| ToServer::Publish { request, channel, except, binary, data });
        Reply::new(rx, decode_position)
    }

    /// The members of a channel (connection ids and bound uids), in
    /// ascending connection order; empty for a channel that does not exist.
    pub async fn members(&self, channel: impl Into<String>) -> Result<Vec<Member>, Error> {
        let channel = channel.into();
        let (_, body) = self.query(|request| ToServer::Members { request, channel }).await?;
        Ok(decode_members(&body)?)
    }

    /// Where `uid` is connected: one entry per node holding it (in a
    /// cluster, every live node; on a single server, node `local`). Fails
    /// with `ChannelError::ClusterUnavailable` while Redis is unreachable.
    pub async fn presence(&self, uid: u64) -> Result<Vec<PresenceEntry>, Error> {
        let (refused, body) = self.query(|request| ToServer::Presence { request, uid }).await?;
        if refused {
            return Err(Error::Channel(ChannelError::decode(&body)?));
        }
        Ok(decode_presence(&body)?)
    }

    /// The channels a connection is in.
    pub async fn channels(&self, conn: u64) -> Result<Vec<String>, Error> {
        let (refused, body) = self.query(|request| ToServer::ConnChannels { conn, request }).await?;
        if refused {
            return Err(Error::Channel(ChannelError::decode(&body)?));
        }
        Ok(decode_names(&body)?)
    }

    /// Details of an open connection; `None` if it is not open.
    pub async fn conn_info(&self, conn: u64) -> Result<Option<ConnInfo>, Error> {
        let (not_found, body) = self.query(|request| ToServer::ConnInfo { conn, request }).await?;
        if not_found {
            return Ok(None);
        }
        Ok(Some(ConnInfo::decode(&body)?))
    }

    /// Ids of all open connections, in ascending order.
    pub async fn connections(&self) -> Result<Vec<u64>, Error> {
        let (_, body) = self.query(|request| ToServer::ConnList { request }).await?;
        Ok(decode_conn_list(&body)?)
    }
}

/// The server's answer to a channel request that was already sent: await
/// it for the outcome, or drop it if the outcome does not matter.
#[must_use = "the request is sent either way; await the reply to see a refusal"]
#[derive(Debug)]
pub struct Reply<T> {
    rx: oneshot::Receiver<(bool, Bytes)>,
    decode: fn(&[u8]) -> Result<T, hotsock_protocol::ProtocolError>,
}

impl<T> Reply<T> {
    fn new(
        rx: oneshot::Receiver<(bool, Bytes)>,
        decode: fn(&[u8]) -> Result<T, hotsock_protocol::ProtocolError>,
    ) -> Self {
        Reply { rx, decode }
    }
}

impl<T> std::future::Future for Reply<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let decode = self.decode;
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|reply| {
            let (refused, body) = reply.map_err(|_| Error::Disconnected)?;
            if refused {
                return Err(Error::Channel(ChannelError::decode(&body)?));
            }
            Ok(decode(&body)?)
        })
    }
}

fn decode_subscribed(body: &[u8]) -> Result<Subscribed, hotsock_protocol::ProtocolError> {
    Subscribed::decode(body)
}

fn decode_position(body: &[u8]) -> Result<Position, hotsock_protocol::ProtocolError> {
    match <[u8; 16]>::try_from(body) {
        Ok(raw) => {
            let (epoch, offset) = raw.split_at(8);
            let epoch = u64::from_le_bytes(epoch.try_into().unwrap_or_default());
            let offset = u64::from_le_bytes(offset.try_into().unwrap_or_default());
            Ok(Position { epoch, offset })
        }
        Err(_) => Err(hotsock_protocol::ProtocolError::BadBody {
            kind: hotsock_protocol::Kind::Reply,
            reason: "publish reply is not 16 bytes",
        }),
    }
}
