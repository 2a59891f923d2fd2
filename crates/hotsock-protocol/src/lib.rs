//! The wire protocol between the hotsock server and its worker processes.
//!
//! This crate turns bytes into frames and frames into typed messages, and back.
//! It must never do I/O, spawn tasks or read the clock: everything it needs is
//! passed in, so every decoder can be unit-tested and fuzzed on plain byte
//! slices. `docs/protocol.md` is the human-readable form of this crate; the two
//! change together.
//!
//! Layers:
//! - [`Frame`] and [`Decoder`]: the fixed 22-byte header plus raw payload.
//! - [`ToWorker`] and [`ToServer`]: the typed messages each side sends, with
//!   their bodies ([`Hello`], [`Ready`], [`HandshakeRequest`], ...).
#![deny(missing_docs)]

mod body;
mod channel;
mod frame;
mod message;
mod presence;
mod table;

pub use body::{ClusterSpec, ConnInfo, HandshakeReply, HandshakeRequest, Hello, Ready, Role, TableSpec};
pub use channel::{
    ChannelError, Member, Position, Subscribed, decode_members, decode_names, encode_members, encode_names,
};
pub use frame::{Decoder, Frame, HEADER_LEN, Kind, PAYLOAD_MAX_BYTES, flags};
pub use message::{ToServer, ToWorker, decode_conn_list, encode_conn_list};
pub use presence::{LOCAL_NODE, PresenceEntry, decode_presence, encode_presence};
pub use table::{
    ColumnKind, TableFailure, TableOp, TableValue, TableValues, decode_table_row, decode_table_rows, encode_table_row,
    encode_table_rows,
};

/// The protocol version spoken by this crate. The server sends it in
/// [`Hello`]; a worker whose SDK speaks another version must answer with its
/// own version in [`Ready`] so the server can report the mismatch by name
/// instead of hanging.
pub const PROTOCOL_VERSION: u16 = 1;

/// Environment variable set for every worker process: the file descriptor of
/// its socket to the server. It is always `0`: the socket is the worker's
/// standard input. Its presence tells an SDK it runs under hotsock.
pub const ENV_WORKER_FD: &str = "HOTSOCK_WORKER_FD";

/// Environment variable with the server's pid. A worker that sets a
/// parent-death signal and then finds a different parent knows the server
/// died before it could ask, and exits.
pub const ENV_SERVER_PID: &str = "HOTSOCK_SERVER_PID";

/// Environment variable with the number of threads the worker's async
/// runtime should use (`workers.threads`). `1`, the default, means a
/// single-threaded runtime: a worker is one event loop, as in Swoole, and
/// scales by adding workers; every handoff between threads costs a wakeup.
pub const ENV_WORKER_THREADS: &str = "HOTSOCK_WORKER_THREADS";

/// Bits of [`Ready::capabilities`].
pub mod capabilities {
    /// The worker wants to see each WebSocket upgrade request and decide
    /// whether to accept it (`on_handshake`). Without it the server accepts
    /// every well-formed upgrade by itself.
    pub const HANDSHAKE: u32 = 1 << 0;
    /// The worker hands state to its successor: before the successor starts,
    /// the server suspends this worker and asks for its state (`Snapshot`).
    pub const HANDOFF: u32 = 1 << 1;
    /// The worker wants `Join` and `Leave` events when its connections
    /// enter and leave channels (`on_join` / `on_leave`).
    pub const CHANNEL_EVENTS: u32 = 1 << 2;
}

/// Everything that can be wrong with bytes received from the other side.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The header names a frame kind this version does not know.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The header announces a payload larger than the decoder accepts.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Announced payload length.
        len: u32,
        /// The decoder's limit.
        max: u32,
    },
    /// A frame of a known kind arrived in the wrong direction (for example a
    /// worker sending `Open`).
    #[error("frame kind {0:?} is not valid in this direction")]
    WrongDirection(Kind),
    /// The payload of a structured frame is shorter or longer than its
    /// fields, or a string in it is not UTF-8.
    #[error("malformed {kind:?} body: {reason}")]
    BadBody {
        /// Kind of the frame whose body is malformed.
        kind: Kind,
        /// What is wrong with it.
        reason: &'static str,
    },
}
