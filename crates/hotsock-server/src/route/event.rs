//! What the routing layer keeps about events and connections.

use bytes::Bytes;
use hotsock_protocol::HandshakeRequest;

/// The body of an event, kept until it is acknowledged.
#[derive(Debug, Clone)]
pub(crate) enum EventBody {
    Handshake(HandshakeRequest),
    Open,
    Message {
        binary: bool,
        data: Bytes,
    },
    Close {
        code: u16,
        reason: String,
    },
    /// A task, for a task slot (the pending's `conn` is the task id).
    Task(Bytes),
    /// The connection joined a channel (workers with `CHANNEL_EVENTS`).
    Join(std::sync::Arc<str>),
    /// The connection left a channel (workers with `CHANNEL_EVENTS`).
    Leave(std::sync::Arc<str>),
}

/// Connection facts fixed at accept time.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnMeta {
    pub(crate) peer: String,
    pub(crate) path: String,
    pub(crate) connected_at_unix_ms: u64,
}

impl EventBody {
    /// Payload bytes of a message (0 for the other events), for the
    /// byte counters.
    pub(crate) fn len(&self) -> usize {
        match self {
            EventBody::Message { data, .. } => data.len(),
            _ => 0,
        }
    }
}
