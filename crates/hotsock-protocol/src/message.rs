//! Typed messages: what the server says to a worker ([`ToWorker`]) and what a
//! worker says to the server ([`ToServer`]). Each encodes straight into a
//! caller's buffer (so a writer can batch many into one write) and decodes
//! from a [`Frame`] whose payload it slices without copying.

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::{FieldReader, decode_ids, encode_ids, put_bytes};
use crate::channel::Position;
use crate::frame::put_header;
use crate::table::TableOp;
use crate::{Frame, HEADER_LEN, HandshakeReply, HandshakeRequest, Hello, Kind, ProtocolError, Ready, flags};

/// A message from the server to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// Versions and identity; always the first frame.
    Hello(Hello),
    /// Event: decide on an upgrade request (answer with `HandshakeReply`).
    Handshake {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
        /// The upgrade request.
        request: HandshakeRequest,
    },
    /// Event: the connection is open.
    Open {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
    },
    /// Event: one whole message from the client.
    Message {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
        /// Binary (true) or text (false; then `data` is valid UTF-8).
        binary: bool,
        /// The message payload.
        data: Bytes,
    },
    /// Event: the connection is closed.
    Close {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
        /// The WebSocket close code (1006 when the peer vanished).
        code: u16,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// Answer to `ConnInfo` or `ConnList`, matched by request id.
    Reply {
        /// The request id the worker chose.
        id: u64,
        /// The connection asked about does not exist.
        not_found: bool,
        /// An encoded [`ConnInfo`] or id list.
        body: Bytes,
    },
    /// Finish in-flight events, run `on_worker_stop`, then exit.
    Stop,
    /// Once idle, run `on_worker_stop` and answer with `Handoff`.
    Snapshot,
    /// Event (task workers): run task `task`.
    Task {
        /// Task id.
        task: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// A task worker died holding it before.
        redelivered: bool,
        /// The task's payload.
        payload: Bytes,
    },
    /// A task's result.
    Finish {
        /// Task id.
        task: u64,
        /// Delivered to the slot's current worker because the dispatcher is
        /// gone.
        orphaned: bool,
        /// The task handler failed.
        failed: bool,
        /// The result.
        payload: Bytes,
    },
    /// Heartbeat; answer with `Pong` and the same sequence number.
    Ping {
        /// Sequence number.
        seq: u64,
    },
    /// Event: the connection joined a channel (`CHANNEL_EVENTS` only).
    Join {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
        /// The channel.
        channel: String,
    },
    /// Event: the connection left a channel (`CHANNEL_EVENTS` only).
    Leave {
        /// Connection id.
        conn: u64,
        /// Event id, to acknowledge.
        id: u64,
        /// Sent before to a worker that died without acknowledging it.
        redelivered: bool,
        /// The channel.
        channel: String,
    },
}

/// A message from a worker to the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ToServer {
    /// The answer to Hello.
    Ready(Ready),
    /// These events' handlers have finished.
    Ack(Vec<u64>),
    /// Send a message to one connection.
    Push {
        /// Target connection.
        conn: u64,
        /// Binary (true) or text (false).
        binary: bool,
        /// Payload; text must be UTF-8 or the server kills the worker.
        data: Bytes,
    },
    /// Close a connection.
    CloseConn {
        /// Target connection.
        conn: u64,
        /// WebSocket close code.
        code: u16,
        /// Close reason (at most 123 bytes reach the client).
        reason: String,
    },
    /// Bind a connection to a uid.
    Bind {
        /// Connection to bind.
        conn: u64,
        /// The uid.
        uid: u64,
    },
    /// Send to every connection bound to `uid`.
    SendToUid {
        /// The uid.
        uid: u64,
        /// Binary (true) or text (false).
        binary: bool,
        /// Payload.
        data: Bytes,
    },
    /// Send to every open connection.
    Broadcast {
        /// Binary (true) or text (false).
        binary: bool,
        /// Payload.
        data: Bytes,
    },
    /// Ask for one connection's [`ConnInfo`].
    ConnInfo {
        /// Connection asked about.
        conn: u64,
        /// Request id echoed in the reply.
        request: u64,
    },
    /// Ask for all open connection ids.
    ConnList {
        /// Request id echoed in the reply.
        request: u64,
    },
    /// Accept or reject the upgrade of `conn`.
    HandshakeReply {
        /// Connection whose handshake this answers.
        conn: u64,
        /// The decision.
        reply: HandshakeReply,
    },
    /// The answer to `Snapshot`: state for the slot's next worker.
    Handoff(Option<Bytes>),
    /// Dispatch a task; the server answers with a `Reply` to `request`
    /// carrying the task id (8 bytes), or refuses (`NOT_FOUND`, reason).
    DispatchTask {
        /// Request id echoed in the reply.
        request: u64,
        /// The task's payload.
        payload: Bytes,
    },
    /// A task worker's result.
    TaskDone {
        /// Task id.
        task: u64,
        /// The handler failed.
        failed: bool,
        /// The result.
        payload: Bytes,
    },
    /// A handler panicked; the worker caught it and keeps serving.
    Panicked {
        /// The connection whose event it was handling.
        conn: u64,
        /// The event id.
        event: u64,
        /// The panic message (UTF-8, possibly cut).
        message: String,
    },
    /// Answer to `Ping`.
    Pong {
        /// The `Ping`'s sequence number.
        seq: u64,
    },
    /// Add a connection to a channel, optionally replaying what it missed.
    Subscribe {
        /// The connection.
        conn: u64,
        /// Request id echoed in the reply (0: no reply).
        request: u64,
        /// The channel.
        channel: String,
        /// Replay the publications after this position first.
        from: Option<Position>,
    },
    /// Remove a connection from a channel.
    Unsubscribe {
        /// The connection.
        conn: u64,
        /// The channel.
        channel: String,
    },
    /// Send to every member of a channel, with the channel's next offset.
    Publish {
        /// Request id echoed in the reply (0: no reply).
        request: u64,
        /// The channel.
        channel: String,
        /// A member that does not get it (typically the sender).
        except: Option<u64>,
        /// Binary (true) or text (false).
        binary: bool,
        /// Payload.
        data: Bytes,
    },
    /// Ask for a channel's members.
    Members {
        /// Request id echoed in the reply.
        request: u64,
        /// The channel.
        channel: String,
    },
    /// Ask for the channels a connection is in.
    ConnChannels {
        /// The connection.
        conn: u64,
        /// Request id echoed in the reply.
        request: u64,
    },
    /// Close every connection bound to `uid` (on every node of a cluster),
    /// after what was sent to it before.
    CloseUid {
        /// The uid.
        uid: u64,
        /// WebSocket close code.
        code: u16,
        /// Close reason (at most 123 bytes are sent).
        reason: String,
    },
    /// Ask where a uid is connected (every node of a cluster).
    Presence {
        /// Request id echoed in the reply.
        request: u64,
        /// The uid.
        uid: u64,
    },
    /// A shared-table operation for the server to run (kinds 0x60-0x67).
    Table {
        /// Request id echoed in the reply.
        request: u64,
        /// The table's place in Hello's list.
        table: u16,
        /// What to do.
        op: TableOp,
    },
}

/// Encodes a frame whose body is written by `body`, patching the length into
/// the header afterwards so no intermediate buffer is needed.
fn encode_with(dst: &mut BytesMut, kind: Kind, flags: u8, conn: u64, id: u64, body: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    put_header(dst, kind, flags, conn, id, 0);
    body(dst);
    let len = dst.len() - start - HEADER_LEN;
    let len = u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes();
    dst[start..start + 4].copy_from_slice(&len);
}

fn event_flags(redelivered: bool) -> u8 {
    if redelivered { flags::REDELIVERED } else { 0 }
}

fn data_flags(binary: bool) -> u8 {
    if binary { flags::BINARY } else { 0 }
}

fn put_raw(dst: &mut BytesMut, kind: Kind, flags: u8, conn: u64, id: u64, payload: &[u8]) {
    put_header(dst, kind, flags, conn, id, payload.len());
    dst.extend_from_slice(payload);
}

fn close_body(kind: Kind, payload: &[u8]) -> Result<(u16, String), ProtocolError> {
    let mut r = FieldReader::new(kind, payload);
    let code = r.u16()?;
    let reason = std::str::from_utf8(r.rest())
        .map_err(|_| ProtocolError::BadBody { kind, reason: "close reason is not UTF-8" })?
        .to_owned();
    Ok((code, reason))
}

fn utf8(kind: Kind, payload: &[u8]) -> Result<String, ProtocolError> {
    std::str::from_utf8(payload)
        .map(str::to_owned)
        .map_err(|_| ProtocolError::BadBody { kind, reason: "channel name is not UTF-8" })
}

fn expect_empty(frame: &Frame) -> Result<(), ProtocolError> {
    if frame.payload.is_empty() {
        Ok(())
    } else {
        Err(ProtocolError::BadBody { kind: frame.kind, reason: "body must be empty" })
    }
}

fn text_ok(kind: Kind, binary: bool, data: &[u8]) -> Result<(), ProtocolError> {
    if binary || std::str::from_utf8(data).is_ok() {
        Ok(())
    } else {
        Err(ProtocolError::BadBody { kind, reason: "text payload is not UTF-8" })
    }
}

impl ToWorker {
    /// Appends the encoded message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ToWorker::Hello(hello) => encode_with(dst, Kind::Hello, 0, 0, 0, |b| hello.encode_body(b)),
            ToWorker::Handshake { conn, id, redelivered, request } => {
                encode_with(dst, Kind::Handshake, event_flags(*redelivered), *conn, *id, |b| request.encode_body(b))
            }
            ToWorker::Open { conn, id, redelivered } => {
                put_raw(dst, Kind::Open, event_flags(*redelivered), *conn, *id, &[])
            }
            ToWorker::Message { conn, id, redelivered, binary, data } => {
                let flags = event_flags(*redelivered) | data_flags(*binary);
                put_raw(dst, Kind::Message, flags, *conn, *id, data)
            }
            ToWorker::Close { conn, id, redelivered, code, reason } => {
                encode_with(dst, Kind::Close, event_flags(*redelivered), *conn, *id, |b| {
                    b.put_u16_le(*code);
                    b.extend_from_slice(reason.as_bytes());
                })
            }
            ToWorker::Reply { id, not_found, body } => {
                let flags = if *not_found { flags::NOT_FOUND } else { 0 };
                put_raw(dst, Kind::Reply, flags, 0, *id, body)
            }
            ToWorker::Stop => put_raw(dst, Kind::Stop, 0, 0, 0, &[]),
            ToWorker::Snapshot => put_raw(dst, Kind::Snapshot, 0, 0, 0, &[]),
            ToWorker::Task { task, id, redelivered, payload } => {
                put_raw(dst, Kind::Task, event_flags(*redelivered), *task, *id, payload)
            }
            ToWorker::Finish { task, orphaned, failed, payload } => {
                let flags = (if *orphaned { flags::ORPHANED } else { 0 }) | (if *failed { flags::FAILED } else { 0 });
                put_raw(dst, Kind::Finish, flags, *task, 0, payload)
            }
            ToWorker::Ping { seq } => put_raw(dst, Kind::Ping, 0, 0, *seq, &[]),
            ToWorker::Join { conn, id, redelivered, channel } => {
                put_raw(dst, Kind::Join, event_flags(*redelivered), *conn, *id, channel.as_bytes())
            }
            ToWorker::Leave { conn, id, redelivered, channel } => {
                put_raw(dst, Kind::Leave, event_flags(*redelivered), *conn, *id, channel.as_bytes())
            }
        }
    }

    /// Interprets a frame read by a worker.
    pub fn from_frame(frame: Frame) -> Result<ToWorker, ProtocolError> {
        let redelivered = frame.flags & flags::REDELIVERED != 0;
        let (conn, id) = (frame.conn, frame.id);
        Ok(match frame.kind {
            Kind::Hello => ToWorker::Hello(Hello::decode_body(&frame.payload)?),
            Kind::Handshake => {
                ToWorker::Handshake { conn, id, redelivered, request: HandshakeRequest::decode_body(&frame.payload)? }
            }
            Kind::Open => {
                expect_empty(&frame)?;
                ToWorker::Open { conn, id, redelivered }
            }
            Kind::Message => {
                let binary = frame.flags & flags::BINARY != 0;
                text_ok(frame.kind, binary, &frame.payload)?;
                ToWorker::Message { conn, id, redelivered, binary, data: frame.payload }
            }
            Kind::Close => {
                let (code, reason) = close_body(frame.kind, &frame.payload)?;
                ToWorker::Close { conn, id, redelivered, code, reason }
            }
            Kind::Reply => ToWorker::Reply { id, not_found: frame.flags & flags::NOT_FOUND != 0, body: frame.payload },
            Kind::Stop => {
                expect_empty(&frame)?;
                ToWorker::Stop
            }
            Kind::Snapshot => {
                expect_empty(&frame)?;
                ToWorker::Snapshot
            }
            Kind::Task => ToWorker::Task { task: conn, id, redelivered, payload: frame.payload },
            Kind::Finish => ToWorker::Finish {
                task: conn,
                orphaned: frame.flags & flags::ORPHANED != 0,
                failed: frame.flags & flags::FAILED != 0,
                payload: frame.payload,
            },
            Kind::Ping => {
                expect_empty(&frame)?;
                ToWorker::Ping { seq: id }
            }
            Kind::Join => ToWorker::Join { conn, id, redelivered, channel: utf8(frame.kind, &frame.payload)? },
            Kind::Leave => ToWorker::Leave { conn, id, redelivered, channel: utf8(frame.kind, &frame.payload)? },
            other => return Err(ProtocolError::WrongDirection(other)),
        })
    }

    /// The event id and connection, for the kinds that are events.
    pub fn event(&self) -> Option<(u64, u64)> {
        match self {
            ToWorker::Handshake { conn, id, .. }
            | ToWorker::Open { conn, id, .. }
            | ToWorker::Message { conn, id, .. }
            | ToWorker::Close { conn, id, .. }
            | ToWorker::Task { task: conn, id, .. }
            | ToWorker::Join { conn, id, .. }
            | ToWorker::Leave { conn, id, .. } => Some((*conn, *id)),
            _ => None,
        }
    }
}

impl ToServer {
    /// Appends the encoded message to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            ToServer::Ready(ready) => encode_with(dst, Kind::Ready, 0, 0, 0, |b| ready.encode_body(b)),
            ToServer::Ack(ids) => encode_with(dst, Kind::Ack, 0, 0, 0, |b| encode_ids(ids, b)),
            ToServer::Push { conn, binary, data } => put_raw(dst, Kind::Push, data_flags(*binary), *conn, 0, data),
            ToServer::CloseConn { conn, code, reason } => encode_with(dst, Kind::CloseConn, 0, *conn, 0, |b| {
                b.put_u16_le(*code);
                b.extend_from_slice(reason.as_bytes());
            }),
            ToServer::Bind { conn, uid } => put_raw(dst, Kind::Bind, 0, *conn, *uid, &[]),
            ToServer::SendToUid { uid, binary, data } => {
                put_raw(dst, Kind::SendToUid, data_flags(*binary), 0, *uid, data)
            }
            ToServer::Broadcast { binary, data } => put_raw(dst, Kind::Broadcast, data_flags(*binary), 0, 0, data),
            ToServer::ConnInfo { conn, request } => put_raw(dst, Kind::ConnInfo, 0, *conn, *request, &[]),
            ToServer::ConnList { request } => put_raw(dst, Kind::ConnList, 0, 0, *request, &[]),
            ToServer::HandshakeReply { conn, reply } => {
                encode_with(dst, Kind::HandshakeReply, 0, *conn, 0, |b| reply.encode_body(b))
            }
            ToServer::DispatchTask { request, payload } => put_raw(dst, Kind::DispatchTask, 0, 0, *request, payload),
            ToServer::TaskDone { task, failed, payload } => {
                put_raw(dst, Kind::TaskDone, if *failed { flags::FAILED } else { 0 }, *task, 0, payload)
            }
            ToServer::Handoff(state) => put_raw(dst, Kind::Handoff, 0, 0, 0, state.as_deref().unwrap_or_default()),
            ToServer::Panicked { conn, event, message } => {
                put_raw(dst, Kind::Panicked, 0, *conn, *event, message.as_bytes())
            }
            ToServer::Pong { seq } => put_raw(dst, Kind::Pong, 0, 0, *seq, &[]),
            ToServer::Subscribe { conn, request, channel, from } => {
                let flags = if from.is_some() { flags::FROM } else { 0 };
                encode_with(dst, Kind::Subscribe, flags, *conn, *request, |b| {
                    put_bytes(b, channel.as_bytes());
                    if let Some(from) = from {
                        b.put_u64_le(from.epoch);
                        b.put_u64_le(from.offset);
                    }
                })
            }
            ToServer::Unsubscribe { conn, channel } => put_raw(dst, Kind::Unsubscribe, 0, *conn, 0, channel.as_bytes()),
            ToServer::Publish { request, channel, except, binary, data } => {
                let flags = data_flags(*binary) | if except.is_some() { flags::EXCEPT } else { 0 };
                encode_with(dst, Kind::Publish, flags, except.unwrap_or(0), *request, |b| {
                    put_bytes(b, channel.as_bytes());
                    b.extend_from_slice(data);
                })
            }
            ToServer::Members { request, channel } => put_raw(dst, Kind::Members, 0, 0, *request, channel.as_bytes()),
            ToServer::ConnChannels { conn, request } => put_raw(dst, Kind::ConnChannels, 0, *conn, *request, &[]),
            ToServer::Presence { request, uid } => put_raw(dst, Kind::Presence, 0, *uid, *request, &[]),
            ToServer::CloseUid { uid, code, reason } => encode_with(dst, Kind::CloseUid, 0, 0, *uid, |b| {
                b.put_u16_le(*code);
                b.extend_from_slice(reason.as_bytes());
            }),
            ToServer::Table { request, table, op } => {
                encode_with(dst, op.kind(), 0, 0, *request, |b| op.encode_body(*table, b))
            }
        }
    }

    /// Interprets a frame read by the server.
    pub fn from_frame(frame: Frame) -> Result<ToServer, ProtocolError> {
        let binary = frame.flags & flags::BINARY != 0;
        let (conn, id) = (frame.conn, frame.id);
        Ok(match frame.kind {
            Kind::Ready => ToServer::Ready(Ready::decode_body(&frame.payload)?),
            Kind::Ack => ToServer::Ack(decode_ids(frame.kind, &frame.payload)?),
            // Text payloads from workers are checked for UTF-8 once, by the
            // server, when it turns them into WebSocket messages.
            Kind::Push => ToServer::Push { conn, binary, data: frame.payload },
            Kind::CloseConn => {
                let (code, reason) = close_body(frame.kind, &frame.payload)?;
                ToServer::CloseConn { conn, code, reason }
            }
            Kind::Bind => {
                expect_empty(&frame)?;
                ToServer::Bind { conn, uid: id }
            }
            Kind::SendToUid => ToServer::SendToUid { uid: id, binary, data: frame.payload },
            Kind::Broadcast => ToServer::Broadcast { binary, data: frame.payload },
            Kind::ConnInfo => {
                expect_empty(&frame)?;
                ToServer::ConnInfo { conn, request: id }
            }
            Kind::ConnList => {
                expect_empty(&frame)?;
                ToServer::ConnList { request: id }
            }
            Kind::HandshakeReply => {
                ToServer::HandshakeReply { conn, reply: HandshakeReply::decode_body(&frame.payload)? }
            }
            Kind::DispatchTask => ToServer::DispatchTask { request: id, payload: frame.payload },
            Kind::TaskDone => {
                ToServer::TaskDone { task: conn, failed: frame.flags & flags::FAILED != 0, payload: frame.payload }
            }
            Kind::Handoff => ToServer::Handoff((!frame.payload.is_empty()).then_some(frame.payload)),
            Kind::Panicked => {
                ToServer::Panicked { conn, event: id, message: String::from_utf8_lossy(&frame.payload).into_owned() }
            }
            Kind::Pong => {
                expect_empty(&frame)?;
                ToServer::Pong { seq: id }
            }
            Kind::Subscribe => {
                let mut r = FieldReader::new(frame.kind, &frame.payload);
                let channel = r.string()?;
                let from = if frame.flags & flags::FROM != 0 {
                    Some(Position { epoch: r.u64()?, offset: r.u64()? })
                } else {
                    None
                };
                r.finish()?;
                ToServer::Subscribe { conn, request: id, channel, from }
            }
            Kind::Unsubscribe => ToServer::Unsubscribe { conn, channel: utf8(frame.kind, &frame.payload)? },
            Kind::Publish => {
                let mut r = FieldReader::new(frame.kind, &frame.payload);
                let channel = r.string()?;
                // The data is the rest of the payload: slice it, no copy.
                let data = frame.payload.slice(frame.payload.len() - r.rest().len()..);
                let except = (frame.flags & flags::EXCEPT != 0).then_some(conn);
                ToServer::Publish { request: id, channel, except, binary, data }
            }
            Kind::Members => ToServer::Members { request: id, channel: utf8(frame.kind, &frame.payload)? },
            Kind::ConnChannels => {
                expect_empty(&frame)?;
                ToServer::ConnChannels { conn, request: id }
            }
            Kind::CloseUid => {
                let (code, reason) = close_body(frame.kind, &frame.payload)?;
                ToServer::CloseUid { uid: id, code, reason }
            }
            Kind::Presence => {
                expect_empty(&frame)?;
                ToServer::Presence { request: id, uid: conn }
            }
            Kind::TableGet
            | Kind::TableSet
            | Kind::TableInsert
            | Kind::TableIncr
            | Kind::TableIncrFloat
            | Kind::TableCompareAndSet
            | Kind::TableDelete
            | Kind::TableIterate => {
                let (table, op) = TableOp::decode_body(frame.kind, &frame.payload)?;
                ToServer::Table { request: id, table, op }
            }
            other => return Err(ProtocolError::WrongDirection(other)),
        })
    }
}

/// Encodes the body of a `ConnList` reply.
pub fn encode_conn_list(ids: &[u64]) -> Bytes {
    let mut buf = BytesMut::with_capacity(ids.len() * 8);
    encode_ids(ids, &mut buf);
    buf.freeze()
}

/// Decodes the body of a `ConnList` reply.
pub fn decode_conn_list(body: &[u8]) -> Result<Vec<u64>, ProtocolError> {
    decode_ids(Kind::Reply, body)
}
