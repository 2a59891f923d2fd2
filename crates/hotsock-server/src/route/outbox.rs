//! Per-connection outboxes: what the workers send a client, queued for the
//! connection's task, with the byte count the output limit is checked
//! against and the flags that wake the task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

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

/// A client socket that whole messages may be written to at once, from
/// outside the connection's task (`net/plain.rs`: plain TCP).
pub(crate) trait DirectSocket: Send + Sync + std::fmt::Debug {
    /// Writes `messages` (data only), in order, each as one frame, in one
    /// system call, as far as the socket takes them now, without waiting.
    fn write_now(&self, messages: &[&Outgoing]) -> Wrote;
}

/// What [`DirectSocket::write_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wrote {
    /// The leading messages whose frames are wholly in the socket.
    pub(crate) whole: usize,
    /// The next one's frame is in part: the socket keeps the rest, which
    /// the connection's task must finish (it writes it before anything
    /// else).
    pub(crate) started: bool,
}

/// Messages one direct write takes at most (one system call).
pub(crate) const DIRECT_BATCH_MAX: usize = 64;

/// The outbox and who writes it out.
///
/// While the connection's task waits for output with everything written
/// (`direct` set, `task_writes` false), whoever queues a message writes it to
/// the socket itself once it has left the hub's lock (`write_out`), instead
/// of waking the task. As soon as the socket cannot take a message whole,
/// or the task takes an item itself, the task owns the output
/// (`task_writes`) until it has written everything and finds the queue
/// empty. Both sides take items from the front under this lock, so the
/// client gets them in the order they were queued, whoever writes them.
#[derive(Debug, Default)]
struct Outbox {
    items: VecDeque<Outgoing>,
    /// Set while the task lets others write to its socket: after the
    /// upgrade to WebSocket, not while it parks for a binary upgrade or
    /// closes, never for TLS.
    direct: Option<Weak<dyn DirectSocket>>,
    task_writes: bool,
}

/// What the connection's task is to do next with its output.
#[derive(Debug)]
pub(crate) enum Next {
    /// Write this item (and whatever else is queued).
    Item(Outgoing),
    /// A direct write left the rest of a frame, or could not write: the
    /// task writes that out and takes over.
    TakeOver,
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
    outbox: Mutex<Outbox>,
    /// Wakes the task when the outbox gets something.
    outbox_ready: Notify,
}

impl ConnShared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues for the connection task, counting its bytes (which the task
    /// takes off when it takes the item), past any limit: the server's own
    /// closes and an upgrade's moved output.
    pub(crate) fn push(&self, out: Outgoing) {
        self.queued_bytes.fetch_add(out.len(), Ordering::Relaxed);
        self.outbox().items.push_back(out);
        self.outbox_ready.notify_one();
    }

    /// Queues `out`; `true`: the task is not woken, and the caller must
    /// call [`ConnShared::write_out`] once it has left the hub's lock
    /// (`false` when the task was woken, or a `write_out` already due
    /// will take this item too).
    pub(crate) fn offer(&self, out: Outgoing) -> bool {
        let mut outbox = self.outbox();
        let first = outbox.items.is_empty();
        outbox.items.push_back(out);
        if outbox.direct.is_some() && !outbox.task_writes {
            return first;
        }
        drop(outbox);
        self.outbox_ready.notify_one();
        false
    }

    /// Writes what is queued straight to the socket, in order, in batches
    /// of one system call, while the socket takes it whole; hands the rest
    /// to the task (and wakes it). Returns how many messages it wrote.
    pub(crate) fn write_out(&self) -> usize {
        let mut outbox = self.outbox();
        if outbox.task_writes || outbox.items.is_empty() {
            return 0;
        }
        let Some(socket) = outbox.direct.as_ref().and_then(Weak::upgrade) else {
            drop(outbox);
            self.outbox_ready.notify_one();
            return 0;
        };
        let mut written = 0;
        let handover = loop {
            // A close is the task's: it ends the connection, and nothing
            // may follow it on the wire. So a batch stops before one.
            let Some(first) = outbox.items.front().filter(|item| !matches!(item, Outgoing::Close(..))) else {
                break true;
            };
            // On the stack: a fan-out writes one message to each of many
            // connections, and would allocate for each.
            let mut batch = [first; DIRECT_BATCH_MAX];
            let mut offered = 0;
            for item in outbox.items.iter().take_while(|item| !matches!(item, Outgoing::Close(..))) {
                if offered == DIRECT_BATCH_MAX {
                    break;
                }
                batch[offered] = item;
                offered += 1;
            }
            let wrote = socket.write_now(&batch[..offered]);
            let taken = (wrote.whole + usize::from(wrote.started)).min(offered);
            for item in outbox.items.drain(..taken) {
                self.queued_bytes.fetch_sub(item.len(), Ordering::Relaxed);
            }
            written += taken;
            if wrote.whole < offered {
                break true;
            }
            if outbox.items.is_empty() {
                break false;
            }
        };
        // The task alone keeps the socket open: let go of it before the
        // task may end (it waits for this lock in `close_direct`).
        drop(socket);
        if handover {
            outbox.task_writes = true;
            drop(outbox);
            self.outbox_ready.notify_one();
        }
        written
    }

    /// Wakes the task for whatever is queued instead of writing it (a
    /// thread that unwinds from a panic writes nothing).
    pub(crate) fn wake_for_output(&self) {
        self.outbox_ready.notify_one();
    }

    /// Lets others write to `socket` while the task waits for output (see
    /// [`Outbox`]). The task calls it with everything it wrote flushed.
    pub(crate) fn open_direct(&self, socket: Weak<dyn DirectSocket>) {
        self.outbox().direct = Some(socket);
    }

    /// From here on only the task writes (it parks, or closes). Returns
    /// once a direct write under way is done.
    pub(crate) fn close_direct(&self) {
        self.outbox().direct = None;
    }

    /// The task wrote everything it took: unless more is queued, it hands
    /// the writing back (see [`Outbox`]).
    pub(crate) fn written(&self) {
        let mut outbox = self.outbox();
        if outbox.items.is_empty() {
            outbox.task_writes = false;
        }
    }

    /// Nothing is queued (zero-byte items count: `queued_bytes` would not).
    pub(crate) fn outbox_is_empty(&self) -> bool {
        self.outbox().items.is_empty()
    }

    /// Everything queued, in order (a binary upgrade moves it).
    pub(crate) fn take_outbox(&self) -> Vec<Outgoing> {
        self.outbox().items.drain(..).collect()
    }

    /// Puts `items` back in front of whatever is queued (an aborted
    /// upgrade gives back what it took).
    pub(crate) fn requeue(&self, items: Vec<Outgoing>) {
        let mut outbox = self.outbox();
        for item in items.into_iter().rev() {
            outbox.items.push_front(item);
        }
        drop(outbox);
        self.outbox_ready.notify_one();
    }

    /// The next thing to write, if any; the task writes from here on.
    fn try_next(&self) -> Option<Next> {
        let mut outbox = self.outbox();
        if let Some(item) = outbox.items.pop_front() {
            outbox.task_writes = true;
            return Some(Next::Item(item));
        }
        // Waiting for output, the task only writes when a direct write
        // handed it over.
        outbox.task_writes.then_some(Next::TakeOver)
    }

    /// Moves queued items, in order, into `into` under one lock: about
    /// `budget` bytes of them, and nothing after a Close.
    pub(crate) fn pop_batch(&self, budget: usize, into: &mut VecDeque<Outgoing>) {
        let mut outbox = self.outbox();
        let queue = &mut outbox.items;
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

    /// Waits for the next thing to write. Cancel-safe: an item is taken
    /// only in the poll that returns it.
    pub(crate) async fn next_out(&self) -> Next {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            // A push between the check and here leaves a permit, so the
            // wait cannot miss it.
            self.outbox_ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A socket that answers each write from a script (then: all of it)
    /// and keeps what it was offered, one string per write.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Wrote>>,
        offered: Mutex<Vec<String>>,
    }

    impl DirectSocket for Scripted {
        fn write_now(&self, messages: &[&Outgoing]) -> Wrote {
            let texts: Vec<String> = messages
                .iter()
                .map(|message| match message {
                    Outgoing::Text(data) | Outgoing::Binary(data) => String::from_utf8_lossy(data).into_owned(),
                    Outgoing::Close(code, _) => format!("close {code}"),
                })
                .collect();
            self.offered.lock().unwrap_or_else(|p| p.into_inner()).push(texts.join(","));
            let all = Wrote { whole: messages.len(), started: false };
            self.answers.lock().unwrap_or_else(|p| p.into_inner()).pop_front().unwrap_or(all)
        }
    }

    const NOTHING: Wrote = Wrote { whole: 0, started: false };

    fn text(s: &'static str) -> Outgoing {
        Outgoing::Text(Bytes::from_static(s.as_bytes()))
    }

    fn open(answers: &[Wrote]) -> (ConnShared, Arc<Scripted>) {
        let wire = Arc::new(Scripted { answers: Mutex::new(answers.iter().copied().collect()), ..Default::default() });
        let conn = ConnShared::default();
        let weak: Weak<Scripted> = Arc::downgrade(&wire);
        conn.open_direct(weak);
        (conn, wire)
    }

    fn offered(wire: &Scripted) -> Vec<String> {
        wire.offered.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn next_text(conn: &ConnShared) -> Option<String> {
        match conn.try_next()? {
            Next::Item(Outgoing::Text(data)) => Some(String::from_utf8_lossy(&data).into_owned()),
            other => Some(format!("{other:?}")),
        }
    }

    #[test]
    fn an_idle_connection_s_messages_are_written_by_the_one_who_queued_them_in_one_write() {
        let (conn, wire) = open(&[]);
        assert!(conn.offer(text("a")), "the first message of an idle connection is the caller's to write");
        assert!(!conn.offer(text("b")), "a write-out is already due for the second");
        assert_eq!(conn.write_out(), 2);
        assert_eq!(offered(&wire), ["a,b"], "one write for both, in order");
        assert!(conn.outbox_is_empty());
        assert!(conn.try_next().is_none(), "the task has nothing to do");
        assert!(conn.offer(text("c")), "still idle: the next one is written directly too");
    }

    #[test]
    fn a_long_queue_goes_out_in_writes_of_at_most_the_batch_size() {
        let (conn, wire) = open(&[]);
        let texts: Vec<String> = (0..DIRECT_BATCH_MAX + 1).map(|i| i.to_string()).collect();
        for t in &texts {
            conn.offer(Outgoing::Text(Bytes::from(t.clone())));
        }
        assert_eq!(conn.write_out(), DIRECT_BATCH_MAX + 1);
        let writes = offered(&wire);
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0], texts[..DIRECT_BATCH_MAX].join(","));
        assert_eq!(writes[1], texts[DIRECT_BATCH_MAX]);
    }

    #[test]
    fn a_socket_that_takes_part_of_a_frame_hands_the_rest_to_the_task_and_later_messages_wait_for_it() {
        let (conn, wire) = open(&[Wrote { whole: 1, started: true }]);
        for s in ["a", "b", "c"] {
            conn.offer(text(s));
        }
        assert_eq!(conn.write_out(), 2, "a whole, b started");
        assert_eq!(offered(&wire), ["a,b,c"]);
        assert!(!conn.offer(text("d")), "the task writes now: it is woken");
        assert_eq!(next_text(&conn).as_deref(), Some("c"));
        assert_eq!(next_text(&conn).as_deref(), Some("d"));
        assert_eq!(
            next_text(&conn).as_deref(),
            Some("TakeOver"),
            "the task finishes b's frame even with nothing queued"
        );
        conn.written();
        assert!(conn.try_next().is_none());
        assert!(conn.offer(text("e")), "written out and handed back: direct writes again");
    }

    #[test]
    fn a_last_frame_written_in_part_is_still_the_task_s_to_finish() {
        let (conn, _wire) = open(&[Wrote { whole: 0, started: true }]);
        conn.offer(text("a"));
        assert_eq!(conn.write_out(), 1);
        assert!(conn.outbox_is_empty());
        assert_eq!(next_text(&conn).as_deref(), Some("TakeOver"));
    }

    #[test]
    fn a_full_socket_leaves_the_message_to_the_task() {
        let (conn, wire) = open(&[NOTHING]);
        conn.offer(text("a"));
        assert_eq!(conn.write_out(), 0);
        assert_eq!(next_text(&conn).as_deref(), Some("a"), "the same message, not lost or skipped");
        assert_eq!(offered(&wire), ["a"]);
    }

    #[test]
    fn the_task_takes_the_writing_when_it_takes_an_item_and_gives_it_back_only_when_nothing_is_queued() {
        let (conn, wire) = open(&[]);
        conn.push(text("a"));
        assert_eq!(next_text(&conn).as_deref(), Some("a"));
        assert!(!conn.offer(text("b")), "the task is writing: it is woken, nobody else writes");
        assert_eq!(conn.write_out(), 0);
        conn.written();
        assert_eq!(next_text(&conn).as_deref(), Some("b"), "more was queued: the task keeps writing");
        conn.written();
        assert!(conn.offer(text("c")));
        assert_eq!(conn.write_out(), 1);
        assert_eq!(offered(&wire), ["c"]);
    }

    #[test]
    fn a_close_is_never_written_directly_and_nothing_is_written_past_it() {
        let (conn, wire) = open(&[]);
        conn.offer(text("a"));
        conn.offer(Outgoing::Close(1000, "bye".into()));
        conn.offer(text("late"));
        assert_eq!(conn.write_out(), 1);
        assert_eq!(offered(&wire), ["a"], "the close goes through the task, which sends nothing after it");
        assert!(!conn.offer(text("later")), "the task has the writing");
        assert!(matches!(conn.try_next(), Some(Next::Item(Outgoing::Close(1000, _)))));
    }

    #[test]
    fn the_server_s_own_close_counts_its_bytes_as_the_task_takes_them_off() {
        let conn = ConnShared::default();
        conn.push(Outgoing::Close(1001, "bye".into()));
        assert_eq!(conn.queued_bytes.load(Ordering::Relaxed), 3, "or the task's subtraction would wrap");
    }

    #[test]
    fn a_closed_or_dropped_socket_leaves_everything_to_the_task() {
        let (conn, wire) = open(&[]);
        conn.close_direct();
        assert!(!conn.offer(text("a")), "a parked or closing connection's task is woken");
        assert_eq!(conn.write_out(), 0);
        assert_eq!(next_text(&conn).as_deref(), Some("a"));
        conn.written();
        let weak: Weak<Scripted> = Arc::downgrade(&wire);
        conn.open_direct(weak);
        drop(wire);
        assert!(conn.offer(text("b")));
        assert_eq!(conn.write_out(), 0, "the task dropped its socket");
        assert_eq!(next_text(&conn).as_deref(), Some("b"));
    }
}
