//! Per-connection outboxes: what the workers send a client, queued for the
//! connection's task, with the byte count the output limit is checked
//! against and the flags that wake the task.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

use bytes::Bytes;
use tokio::sync::Notify;

/// What a connection task is told to send. The hub's own type: the network
/// side turns it into frames of whatever WebSocket library it uses.
#[derive(Debug, Clone)]
pub(crate) enum Outgoing {
    /// A text message; the bytes are valid UTF-8 (checked once, where the
    /// message enters the server: `Outgoing::text`).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// Close the connection with this code and reason.
    Close(u16, String),
}

/// A worker sent a text message that is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sent a text message that is not UTF-8")]
pub(crate) struct NotUtf8;

impl Outgoing {
    /// A data message from a worker's payload; text must be UTF-8.
    pub(crate) fn data(binary: bool, data: Bytes) -> Result<Outgoing, NotUtf8> {
        if binary {
            Ok(Outgoing::Binary(data))
        } else {
            std::str::from_utf8(&data).map_err(|_| NotUtf8)?;
            Ok(Outgoing::Text(data))
        }
    }

    /// The bytes it counts against `limits.output_buffer_bytes`.
    pub(crate) fn len(&self) -> usize {
        match self {
            Outgoing::Text(data) | Outgoing::Binary(data) => data.len(),
            Outgoing::Close(_, reason) => reason.len(),
        }
    }
}

/// State shared between a connection's task and the hub.
#[derive(Debug, Default)]
pub(crate) struct ConnShared {
    /// Bytes queued in the outbox, not yet taken by the connection task.
    pub(crate) queued_bytes: AtomicUsize,
    /// Events of this connection no worker has acknowledged yet.
    pub(crate) inflight: AtomicU32,
    /// When the client last sent a message (the hub's clock, ms): a binary
    /// upgrade hands the busiest connections over first.
    pub(crate) last_read_ms: AtomicU64,
    /// Set when the outbox overflowed; the task closes with 1008.
    pub(crate) overflowed: AtomicBool,
    /// Wakes the task: an acknowledgement freed room, or it overflowed.
    pub(crate) wake: Notify,
    /// Messages for the client, in order, taken by the connection task. A
    /// queue rather than a channel: it allocates on first use, where a
    /// channel allocates a block of slots up front for every idle client.
    outbox: Mutex<VecDeque<Outgoing>>,
    /// Wakes the task when the outbox gets something.
    outbox_ready: Notify,
}

impl ConnShared {
    /// Queues for the connection task (the hub counts the bytes).
    pub(crate) fn push(&self, out: Outgoing) {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).push_back(out);
        self.outbox_ready.notify_one();
    }

    /// Nothing is queued (zero-byte items count: `queued_bytes` would not).
    pub(crate) fn outbox_is_empty(&self) -> bool {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Everything queued, in order (a binary upgrade moves it).
    pub(crate) fn take_outbox(&self) -> Vec<Outgoing> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect()
    }

    /// Puts `items` back in front of whatever is queued (an aborted
    /// upgrade gives back what it took).
    pub(crate) fn requeue(&self, items: Vec<Outgoing>) {
        let mut queue = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        for item in items.into_iter().rev() {
            queue.push_front(item);
        }
        drop(queue);
        self.outbox_ready.notify_one();
    }

    /// The next queued item, if any.
    fn try_pop(&self) -> Option<Outgoing> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    /// Moves queued items, in order, into `into` under one lock: about
    /// `budget` bytes of them, and nothing after a Close.
    pub(crate) fn pop_batch(&self, budget: usize, into: &mut VecDeque<Outgoing>) {
        let mut queue = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = 0;
        while bytes < budget {
            let Some(item) = queue.pop_front() else { break };
            bytes += item.len();
            let close = matches!(item, Outgoing::Close(..));
            into.push_back(item);
            if close {
                break;
            }
        }
    }

    /// Waits for the next queued item. Cancel-safe: an item is taken only
    /// in the poll that returns it.
    pub(crate) async fn next_out(&self) -> Outgoing {
        loop {
            if let Some(out) = self.try_pop() {
                return out;
            }
            // A push between the check and here leaves a permit, so the
            // wait cannot miss it.
            self.outbox_ready.notified().await;
        }
    }
}
