//! What the hub hands the cluster task, and the handle it hands it through.
//!
//! The hub never waits for Redis: under its lock it only queues a
//! [`Command`] (`try_send`, bounded by `cluster.queue_max`). Requests with
//! an answer carry a [`ReplyTo`], and the task answers through the hub once
//! Redis has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use hotsock_protocol::Position;
use tokio::sync::mpsc;

/// Where the answer to a worker's request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub(crate) slot: usize,
    pub(crate) worker: u64,
    /// The worker's request id (0: it wants no answer).
    pub(crate) request: u64,
}

/// One request to the cluster task.
#[derive(Debug)]
pub(crate) enum Command {
    /// `send_to_uid`: to the uid's connections on the other nodes (this
    /// node's were served by the hub already).
    ToUid { uid: u64, binary: bool, data: Bytes },
    /// `close_uid`: closes the uid's connections on the other nodes.
    CloseUid { uid: u64, code: u16, reason: String },
    /// `broadcast`: to every other node's connections.
    Broadcast { binary: bool, data: Bytes },
    /// A publication: the channel's next offset cluster-wide; every node
    /// following the channel delivers it, this one included.
    Publish { channel: String, except: Option<u64>, binary: bool, data: Bytes, reply: ReplyTo },
    /// Subscribe `conn` (through the hub, once the node follows the channel
    /// and has what a recovery from `from` needs).
    Subscribe { conn: u64, channel: String, from: Option<Position>, reply: ReplyTo },
    /// The last local member left: stop following the channel.
    Unfollow { channel: Arc<str> },
    /// The uid's connections on this node changed (the task reads them
    /// from the hub when it writes them).
    Presence { uid: u64 },
    /// Where is this uid connected, cluster-wide.
    PresenceQuery { uid: u64, reply: ReplyTo },
}

/// Counters and state the task keeps and `status` and `/metrics` read.
#[derive(Debug, Default)]
pub(crate) struct ClusterShared {
    /// Redis answers (the node is registered and subscribed).
    pub(crate) connected: AtomicBool,
    /// Messages handed to other nodes (one per node reached).
    pub(crate) routed: AtomicU64,
    /// Cross-node messages delivered here (uid sends, broadcasts,
    /// publications).
    pub(crate) received: AtomicU64,
    /// Messages that never reached Redis: the queue was full or Redis was
    /// unreachable.
    pub(crate) dropped: AtomicU64,
    /// Missed Pub/Sub messages read back from a stream.
    pub(crate) refetched: AtomicU64,
    /// Messages lost for good: missed and already trimmed from the stream.
    pub(crate) lost: AtomicU64,
    /// Times the node lost Redis.
    pub(crate) outages: AtomicU64,
    /// Live nodes at the last heartbeat.
    pub(crate) nodes: AtomicU64,
    /// A presence change could not be queued: the next heartbeat writes
    /// all of this node's presence again.
    pub(crate) presence_dirty: AtomicBool,
    /// Why Redis is unreachable, while it is.
    pub(crate) last_error: std::sync::Mutex<Option<String>>,
}

/// The hub's handle on the cluster task.
#[derive(Debug, Clone)]
pub(crate) struct ClusterLink {
    tx: mpsc::Sender<Command>,
    pub(crate) node: Arc<str>,
    pub(crate) epoch: u64,
    pub(crate) shared: Arc<ClusterShared>,
}

/// A command the task could not take: the queue is full or the task is
/// gone. The hub answers the worker (or counts the drop) itself.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) Command);

impl ClusterLink {
    pub(crate) fn new(
        tx: mpsc::Sender<Command>,
        node: Arc<str>,
        epoch: u64,
        shared: Arc<ClusterShared>,
    ) -> ClusterLink {
        ClusterLink { tx, node, epoch, shared }
    }

    /// Queues `command` without waiting.
    pub(crate) fn send(&self, command: Command) -> Result<(), Refused> {
        self.tx.try_send(command).map_err(|error| {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            Refused(error.into_inner())
        })
    }

    pub(crate) fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }
}
