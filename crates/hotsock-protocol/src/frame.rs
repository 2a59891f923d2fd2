//! The frame layer: a fixed little-endian header followed by raw payload
//! bytes. Nothing here interprets payloads; that is `message.rs`'s job.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ProtocolError;

/// Size of the fixed header: `len u32, kind u8, flags u8, conn u64, id u64`.
pub const HEADER_LEN: usize = 22;

/// Hard upper bound on one frame's payload, whatever a decoder is configured
/// with. It is the largest WebSocket message the server can be configured to
/// accept (64 MiB) plus room for the body fields around it, so a single
/// corrupted length can never make a reader allocate gigabytes.
pub const PAYLOAD_MAX_BYTES: u32 = (64 << 20) + 4096;

/// Bits of a frame's `flags` byte. Their meaning depends on the kind, as
/// documented on each [`Kind`].
pub mod flags {
    /// Message/Push/SendToUid/Broadcast/Publish: the payload is binary, not text.
    pub const BINARY: u8 = 1 << 0;
    /// Any event: the event was sent to a worker before, which died or was
    /// killed before acknowledging it. The handler may have run already.
    pub const REDELIVERED: u8 = 1 << 1;
    /// Reply: the connection asked about does not exist (any more), or the
    /// task was refused (the body says why).
    pub const NOT_FOUND: u8 = 1 << 2;
    /// Finish: the worker that dispatched the task is gone; this is its
    /// slot's current worker.
    pub const ORPHANED: u8 = 1 << 3;
    /// TaskDone/Finish: the task handler failed (panicked).
    pub const FAILED: u8 = 1 << 4;
    /// Subscribe: the body ends with a recovery position (epoch, offset).
    pub const FROM: u8 = 1 << 5;
    /// Publish: the connection in `conn` does not get this publication.
    pub const EXCEPT: u8 = 1 << 6;
}

/// The frame kinds. Values below 0x40 travel server → worker, values from
/// 0x40 travel worker → server, so a reader can reject a frame sent in the
/// wrong direction from the header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// First frame on every worker socket: versions and identity.
    Hello = 0x01,
    /// Event: a WebSocket upgrade request awaiting the worker's decision.
    Handshake = 0x02,
    /// Event: a connection was accepted.
    Open = 0x03,
    /// Event: a whole WebSocket message (text unless `BINARY`).
    Message = 0x04,
    /// Event: a connection is gone (close code and reason in the body).
    Close = 0x05,
    /// Answer to a worker's query (`ConnInfo`, `ConnList`), matched by `id`.
    Reply = 0x06,
    /// Graceful stop: finish in-flight events, run `on_worker_stop`, exit.
    Stop = 0x07,
    /// State handoff: the worker gets no new events; once idle it runs
    /// `on_worker_stop` and answers with `Handoff`. It may receive events
    /// again afterwards (its successor failed to start) or `Stop`.
    Snapshot = 0x08,
    /// Event for a task worker: run a task (`conn` is the task id).
    Task = 0x09,
    /// A task's result, to the worker that dispatched it (`conn`: task id).
    Finish = 0x0a,
    /// Heartbeat: answer with `Pong` carrying the same `id`. Answered from
    /// the worker's event loop, so a handler that blocks the loop stops
    /// the answers and the server replaces the worker.
    Ping = 0x0b,
    /// Event (with the `CHANNEL_EVENTS` capability): the connection joined
    /// the channel named in the body.
    Join = 0x0c,
    /// Event (with the `CHANNEL_EVENTS` capability): the connection left
    /// the channel named in the body (unsubscribed, or closed).
    Leave = 0x0d,
    /// The worker's answer to Hello: its version and capabilities.
    Ready = 0x41,
    /// Acknowledges handled events; the body is a list of event ids.
    Ack = 0x42,
    /// Send a message to one connection.
    Push = 0x43,
    /// Close one connection with a code and reason.
    CloseConn = 0x44,
    /// Bind a connection to a numeric uid (`id` is the uid).
    Bind = 0x45,
    /// Send a message to every connection bound to a uid (`id` is the uid).
    SendToUid = 0x46,
    /// Send a message to every open connection.
    Broadcast = 0x47,
    /// Ask for one connection's details; answered by `Reply`.
    ConnInfo = 0x48,
    /// Ask for the ids of all open connections; answered by `Reply`.
    ConnList = 0x49,
    /// Accept or reject a `Handshake` event.
    HandshakeReply = 0x4a,
    /// A handler panicked (the SDK caught it); `id` is the event id and the
    /// payload the panic message. Counts toward canary and auto-rollback.
    Panicked = 0x4b,
    /// Answer to `Snapshot`: the state for the slot's next worker (empty
    /// payload: no state).
    Handoff = 0x4c,
    /// Dispatch a task; answered by `Reply` with the task id (or refused).
    DispatchTask = 0x4d,
    /// A task worker's result for task `conn`.
    TaskDone = 0x4e,
    /// Answer to `Ping` (same `id`).
    Pong = 0x4f,
    /// Add connection `conn` to a channel (`id`: request id, 0 for no
    /// reply); with `FROM`, replay what it missed since a position.
    Subscribe = 0x50,
    /// Remove connection `conn` from a channel.
    Unsubscribe = 0x51,
    /// Publish to a channel's members (`id`: request id, 0 for no reply;
    /// with `EXCEPT`, not to connection `conn`).
    Publish = 0x52,
    /// Ask for a channel's members; answered by `Reply`.
    Members = 0x53,
    /// Ask for the channels connection `conn` is in; answered by `Reply`.
    ConnChannels = 0x54,
    /// Worker → server: where a uid is connected, cluster-wide (reply:
    /// `encode_presence`).
    Presence = 0x70,
    /// Worker → server: close every connection bound to a uid
    /// (cluster-wide).
    CloseUid = 0x71,
    /// Read a shared-table row (`id`: request id); answered by `Reply`.
    /// The table kinds (0x60-0x67) are for SDKs that cannot map the
    /// segment; the server runs them on its own mapping (`table.rs`).
    TableGet = 0x60,
    /// Set columns of a row, creating it; answered by `Reply`.
    TableSet = 0x61,
    /// Insert a row if its key is new; answered by `Reply`.
    TableInsert = 0x62,
    /// Add to an `i64` column; answered by `Reply` with the new value.
    TableIncr = 0x63,
    /// Add to an `f64` column; answered by `Reply` with the new value.
    TableIncrFloat = 0x64,
    /// Set a column if it holds the expected value; answered by `Reply`.
    TableCompareAndSet = 0x65,
    /// Delete a row; answered by `Reply`.
    TableDelete = 0x66,
    /// Copy every live row; answered by `Reply`.
    TableIterate = 0x67,
}

impl Kind {
    /// Maps a header byte to a kind.
    pub fn from_u8(byte: u8) -> Result<Kind, ProtocolError> {
        Ok(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Handshake,
            0x03 => Kind::Open,
            0x04 => Kind::Message,
            0x05 => Kind::Close,
            0x06 => Kind::Reply,
            0x07 => Kind::Stop,
            0x08 => Kind::Snapshot,
            0x09 => Kind::Task,
            0x0a => Kind::Finish,
            0x0b => Kind::Ping,
            0x0c => Kind::Join,
            0x0d => Kind::Leave,
            0x41 => Kind::Ready,
            0x42 => Kind::Ack,
            0x43 => Kind::Push,
            0x44 => Kind::CloseConn,
            0x45 => Kind::Bind,
            0x46 => Kind::SendToUid,
            0x47 => Kind::Broadcast,
            0x48 => Kind::ConnInfo,
            0x49 => Kind::ConnList,
            0x4a => Kind::HandshakeReply,
            0x4b => Kind::Panicked,
            0x4c => Kind::Handoff,
            0x4d => Kind::DispatchTask,
            0x4e => Kind::TaskDone,
            0x4f => Kind::Pong,
            0x50 => Kind::Subscribe,
            0x51 => Kind::Unsubscribe,
            0x52 => Kind::Publish,
            0x53 => Kind::Members,
            0x54 => Kind::ConnChannels,
            0x70 => Kind::Presence,
            0x71 => Kind::CloseUid,
            0x60 => Kind::TableGet,
            0x61 => Kind::TableSet,
            0x62 => Kind::TableInsert,
            0x63 => Kind::TableIncr,
            0x64 => Kind::TableIncrFloat,
            0x65 => Kind::TableCompareAndSet,
            0x66 => Kind::TableDelete,
            0x67 => Kind::TableIterate,
            other => return Err(ProtocolError::UnknownKind(other)),
        })
    }

    /// True for kinds the server sends to workers.
    pub fn is_to_worker(self) -> bool {
        (self as u8) < 0x40
    }
}

/// One frame: header fields plus the payload bytes, uninterpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame is.
    pub kind: Kind,
    /// Kind-specific bits, see [`flags`].
    pub flags: u8,
    /// The connection the frame is about, or 0.
    pub conn: u64,
    /// Event id, request id or uid, depending on the kind.
    pub id: u64,
    /// Raw payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with no payload.
    pub fn bare(kind: Kind, flags: u8, conn: u64, id: u64) -> Frame {
        Frame { kind, flags, conn, id, payload: Bytes::new() }
    }

    /// Appends the encoded frame to `dst`. Writers call this for every queued
    /// frame and then write `dst` once, which is how batching works.
    pub fn encode(&self, dst: &mut BytesMut) {
        put_header(dst, self.kind, self.flags, self.conn, self.id, self.payload.len());
        dst.extend_from_slice(&self.payload);
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Writes a header for a payload of `len` bytes. Callers that build a body in
/// place write the header first and the body right after.
pub(crate) fn put_header(dst: &mut BytesMut, kind: Kind, flags: u8, conn: u64, id: u64, len: usize) {
    dst.reserve(HEADER_LEN + len);
    // The length always fits: every encoder's payload comes from a bounded
    // source (a WebSocket message capped well below PAYLOAD_MAX_BYTES).
    dst.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
    dst.put_u8(kind as u8);
    dst.put_u8(flags);
    dst.put_u64_le(conn);
    dst.put_u64_le(id);
}

/// Splits a byte stream into frames. Holds no buffer of its own: the caller
/// owns the `BytesMut` it reads into, and each decoded payload is a zero-copy
/// slice of it.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_payload: u32,
}

impl Decoder {
    /// A decoder that rejects payloads over `max_payload` bytes (clamped to
    /// [`PAYLOAD_MAX_BYTES`]).
    pub fn new(max_payload: u32) -> Decoder {
        Decoder { max_payload: max_payload.min(PAYLOAD_MAX_BYTES) }
    }

    /// Takes one whole frame off the front of `src`, or returns `Ok(None)` if
    /// more bytes are needed. An error means the stream is unusable: the
    /// header is garbage and there is no way to find the next frame.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut header = &src[..HEADER_LEN];
        let len = header.get_u32_le();
        let kind = Kind::from_u8(header.get_u8())?;
        if len > self.max_payload {
            return Err(ProtocolError::PayloadTooLarge { len, max: self.max_payload });
        }
        let flags = header.get_u8();
        let conn = header.get_u64_le();
        let id = header.get_u64_le();
        let total = HEADER_LEN + len as usize;
        if src.len() < total {
            // Reserve once for the rest of the frame so a large payload is
            // read with few reallocations.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len as usize).freeze();
        Ok(Some(Frame { kind, flags, conn, id, payload }))
    }
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(PAYLOAD_MAX_BYTES)
    }
}
