//! One worker slot's events: which worker holds which event, and when a
//! waiting event may be sent. Pure data (the hub calls it under its lock);
//! no I/O beyond pushing onto worker channels, no clock.
//!
//! Theory of operation. A slot has at most one *current* worker (it gets new
//! events) and any number of *draining* ones (an older generation, finishing
//! what they hold). Each connection with unacknowledged events in the slot
//! has a *lane*: its event ids in arrival order, split into a prefix held by
//! exactly one worker and a suffix not sent yet:
//!
//! ```text
//!   lane of conn C:  [e4 e5 | e6 e7]      holder = W (e4, e5 sent to W)
//!                     held    unsent
//! ```
//!
//! The one rule: the unsent suffix goes to the current worker only when the
//! held prefix is empty or held by the current worker itself. So after a
//! switch, C's new events wait until the old worker acknowledged C's earlier
//! ones (per-connection order across generations), and when a worker dies,
//! its prefix becomes unsent again, flagged redelivered, and goes to the next
//! current worker before anything newer. A lane never holds events of two
//! workers at once, which is what makes the rule enough.
//!
//! Blame. When a worker dies of a failure (a crash, a blocked event loop:
//! `ExitCause::blames_running_events`), the head of each lane it held (the
//! event that was running, or next to run) gets a strike; the events queued
//! behind a head cannot have been running and get none, nor does anything
//! when the server itself ended the worker (drain deadline, recycle, stop).
//! A head is not certainly guilty: the worker may have been running several
//! connections' events at once. So an event whose strikes reach
//! `max_redeliveries` gets its last chance *alone* (isolated): the slot sends
//! nothing else to the current worker until that worker holds nothing, sends
//! the event by itself, and waits for its ack. Only a failure during that
//! solo run drops it as a poison event (and closes its connection with
//! 1011). An innocent bystander of a crash loop is late, never dropped.

use std::collections::{HashMap, VecDeque};

use hotsock_protocol::ToWorker;
use tokio::sync::mpsc;

use crate::route::event::EventBody;

/// Identifies one worker process over the server's life.
pub(crate) type WorkerId = u64;

/// A worker that said Ready, as the slot sees it.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) id: WorkerId,
    pub(crate) link: mpsc::UnboundedSender<ToWorker>,
    /// Events sent to it and not acknowledged.
    held: usize,
    /// Gets no new events; told to stop once it holds none.
    draining: bool,
    stop_sent: bool,
    /// Events it acknowledged, for `workers.max_requests`.
    acked: u64,
    /// It hands state to its successor (capability `HANDOFF`).
    handoff: bool,
    /// Tasks it dispatched whose results have not come back: it is not
    /// told to stop while any are out, so it receives them.
    tasks_out: usize,
}

impl Attached {
    pub(crate) fn new(id: WorkerId, link: mpsc::UnboundedSender<ToWorker>, handoff: bool) -> Self {
        Attached { id, link, held: 0, draining: false, stop_sent: false, acked: 0, handoff, tasks_out: 0 }
    }
}

/// An event kept until it is acknowledged.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) conn: u64,
    pub(crate) body: EventBody,
    /// Held by a worker that died before acknowledging it.
    pub(crate) redelivered: bool,
    /// Strikes: workers that died of a failure while it was running (at the
    /// head of its lane). Deaths the server ordered strike nothing.
    pub(crate) strikes: u32,
}

impl Pending {
    pub(crate) fn new(conn: u64, body: EventBody) -> Pending {
        Pending { conn, body, redelivered: false, strikes: 0 }
    }

    fn to_worker(&self, id: u64) -> ToWorker {
        let (conn, redelivered) = (self.conn, self.redelivered);
        match &self.body {
            EventBody::Handshake(request) => ToWorker::Handshake { conn, id, redelivered, request: request.clone() },
            EventBody::Open => ToWorker::Open { conn, id, redelivered },
            EventBody::Message { binary, data } => {
                ToWorker::Message { conn, id, redelivered, binary: *binary, data: data.clone() }
            }
            EventBody::Close { code, reason } => {
                ToWorker::Close { conn, id, redelivered, code: *code, reason: reason.clone() }
            }
            EventBody::Task(payload) => ToWorker::Task { task: conn, id, redelivered, payload: payload.clone() },
            EventBody::Join(channel) => ToWorker::Join { conn, id, redelivered, channel: channel.to_string() },
            EventBody::Leave(channel) => ToWorker::Leave { conn, id, redelivered, channel: channel.to_string() },
        }
    }
}

#[derive(Debug, Default)]
struct Lane {
    ids: VecDeque<u64>,
    /// `ids[..sent]` are held by `holder`.
    sent: usize,
    holder: Option<WorkerId>,
}

/// An event dropped because it was running in too many workers that died.
#[derive(Debug)]
pub(crate) struct Poisoned {
    pub(crate) conn: u64,
    pub(crate) id: u64,
    pub(crate) strikes: u32,
}

/// Counters for `status`.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotCounters {
    pub(crate) dispatched: u64,
    pub(crate) acked: u64,
    pub(crate) redelivered: u64,
    pub(crate) dropped: u64,
}

/// A map keyed by ids the server hands out itself (connection, event and
/// task ids: counters, never chosen by a client or a worker), hashed with
/// foldhash instead of SipHash. Looked up several times per message (an
/// event's lane and entry, its ack, its connection); SipHash was ~7% of
/// the server's CPU under pipelined load.
pub(crate) type IdMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// `workers.max_redeliveries`: strikes an event may have and still run.
    max_redeliveries: u32,
    /// Lanes (connections) whose head waits for its solo last chance.
    isolation: VecDeque<u64>,
    /// The event running alone in the current worker, if one is.
    isolated: Option<u64>,
    current: Option<WorkerId>,
    workers: Vec<Attached>,
    unacked: IdMap<Pending>,
    lanes: IdMap<Lane>,
    pub(crate) counters: SlotCounters,
    /// The current worker gets no new events: its state is being taken for
    /// its successor (they wait in their lanes).
    suspended: bool,
    snapshot_sent: bool,
    /// State handed over by the last suspended worker, for its successor.
    handoff: Option<bytes::Bytes>,
    /// Task results whose dispatcher is gone, waiting for a current worker.
    orphans: Vec<ToWorker>,
}

impl Slot {
    /// An empty slot whose events may be redelivered `max_redeliveries`
    /// times after failures.
    pub(crate) fn new(max_redeliveries: u32) -> Slot {
        Slot { max_redeliveries, ..Slot::default() }
    }

    /// Events in this slot not yet acknowledged (sent or waiting).
    pub(crate) fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub(crate) fn has_current(&self) -> bool {
        self.current.is_some()
    }

    pub(crate) fn current(&self) -> Option<&Attached> {
        self.current.and_then(|id| self.workers.iter().find(|w| w.id == id))
    }

    /// An event's strikes, if it is still unacknowledged (for tests).
    #[cfg(test)]
    pub(crate) fn strikes(&self, id: u64) -> Option<u32> {
        self.unacked.get(&id).map(|p| p.strikes)
    }

    /// Events each attached worker holds.
    pub(crate) fn held_by_worker(&self) -> Vec<(WorkerId, usize)> {
        self.workers.iter().map(|w| (w.id, w.held)).collect()
    }

    /// Sends a reply to a specific worker (answers to its queries).
    pub(crate) fn send_to(&self, worker: WorkerId, message: ToWorker) {
        if let Some(w) = self.workers.iter().find(|w| w.id == worker) {
            let _ = w.link.send(message);
        }
    }

    /// Adds an event of `conn` and sends it if the lane rule allows.
    pub(crate) fn push(&mut self, id: u64, pending: Pending) {
        let conn = pending.conn;
        self.unacked.insert(id, pending);
        self.lanes.entry(conn).or_default().ids.push_back(id);
        self.counters.dispatched += 1;
        self.release(conn);
    }

    /// Sends `conn`'s unsent events to the current worker, if its held
    /// prefix is empty or already the current worker's, and no event is
    /// waiting for or running its solo last chance.
    fn release(&mut self, conn: u64) {
        if self.suspended || self.isolated.is_some() || !self.isolation.is_empty() {
            return;
        }
        let Some(current) = self.current else { return };
        let Some(lane) = self.lanes.get_mut(&conn) else { return };
        if lane.sent > 0 && lane.holder != Some(current) {
            return;
        }
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == current) else { return };
        while lane.sent < lane.ids.len() {
            let id = lane.ids[lane.sent];
            if let Some(pending) = self.unacked.get(&id) {
                // A send can only fail if the worker's task has already
                // ended; its detach will make the event unsent again.
                let _ = worker.link.send(pending.to_worker(id));
            }
            lane.sent += 1;
            worker.held += 1;
        }
        lane.holder = Some(current);
    }

    fn release_all(&mut self) {
        self.run_isolated();
        let conns: Vec<u64> = self.lanes.keys().copied().collect();
        for conn in conns {
            self.release(conn);
        }
    }

    /// Sends the next event waiting for its last chance, alone, once the
    /// current worker holds nothing else.
    fn run_isolated(&mut self) {
        if self.suspended || self.isolated.is_some() {
            return;
        }
        let Some(current) = self.current else { return };
        let Some(worker) = self.workers.iter_mut().find(|w| w.id == current) else { return };
        if worker.held > 0 {
            return;
        }
        while let Some(conn) = self.isolation.pop_front() {
            let Some(lane) = self.lanes.get_mut(&conn) else { continue };
            // The lane may have moved on (its head dropped) since it queued.
            let Some(id) = lane.ids.front().copied().filter(|_| lane.sent == 0) else { continue };
            let Some(pending) = self.unacked.get(&id) else { continue };
            let _ = worker.link.send(pending.to_worker(id));
            lane.sent = 1;
            lane.holder = Some(current);
            worker.held += 1;
            self.isolated = Some(id);
            return;
        }
    }

    /// Acknowledges event `id` from `worker`. Returns the event's connection
    /// if the acknowledgement was valid (the worker held that event).
    pub(crate) fn ack(&mut self, worker: WorkerId, id: u64) -> Option<u64> {
        let conn = self.unacked.get(&id)?.conn;
        let lane = self.lanes.get_mut(&conn)?;
        if lane.holder != Some(worker) {
            return None;
        }
        let position = lane.ids.iter().take(lane.sent).position(|x| *x == id)?;
        lane.ids.remove(position);
        lane.sent -= 1;
        self.unacked.remove(&id);
        self.counters.acked += 1;
        if lane.sent == 0 {
            lane.holder = None;
        }
        if lane.ids.is_empty() {
            self.lanes.remove(&conn);
        }
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
            w.held -= 1;
            w.acked += 1;
        }
        if self.isolated == Some(id) {
            // It ran alone and finished: innocent. The slot flows again.
            self.isolated = None;
            self.release_all();
        } else if self.isolation.is_empty() {
            self.release(conn);
        } else {
            // The worker drains towards an isolated run.
            self.run_isolated();
        }
        self.stop_if_drained(worker);
        self.snapshot_if_idle();
        Some(conn)
    }

    /// Starts a state handoff if the current worker supports it: it gets no
    /// new events and, once idle, is asked for its state. Returns whether a
    /// handoff started.
    pub(crate) fn suspend(&mut self) -> bool {
        if !self.current().is_some_and(|w| w.handoff) {
            return false;
        }
        self.suspended = true;
        self.snapshot_sent = false;
        self.handoff = None;
        self.snapshot_if_idle();
        true
    }

    /// Ends a suspension (the successor failed): the current worker gets its
    /// waiting events.
    pub(crate) fn resume(&mut self) {
        if self.suspended {
            self.suspended = false;
            self.snapshot_sent = false;
            self.release_all();
        }
    }

    fn snapshot_if_idle(&mut self) {
        if !self.suspended || self.snapshot_sent {
            return;
        }
        if let Some(current) = self.current()
            && current.held == 0
        {
            let _ = current.link.send(ToWorker::Snapshot);
            self.snapshot_sent = true;
        }
    }

    /// Keeps the state `worker` handed over, if it is the suspended current
    /// worker. Returns whether it was accepted.
    pub(crate) fn store_handoff(&mut self, worker: WorkerId, state: Option<bytes::Bytes>) -> bool {
        if !self.suspended || self.current != Some(worker) {
            return false;
        }
        self.handoff = state;
        true
    }

    /// The state for the slot's next worker.
    pub(crate) fn handoff_state(&self) -> Option<bytes::Bytes> {
        self.handoff.clone()
    }

    /// `worker` dispatched a task.
    pub(crate) fn task_started(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
            w.tasks_out += 1;
        }
    }

    /// Delivers a task's result: to the worker that dispatched it if it is
    /// still here, else to the current worker (orphaned), else later.
    pub(crate) fn finish_task(&mut self, worker: WorkerId, task: u64, failed: bool, payload: bytes::Bytes) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
            w.tasks_out = w.tasks_out.saturating_sub(1);
            let _ = w.link.send(ToWorker::Finish { task, orphaned: false, failed, payload });
            self.stop_if_drained(worker);
            return;
        }
        let orphan = ToWorker::Finish { task, orphaned: true, failed, payload };
        match self.current() {
            Some(current) => {
                let _ = current.link.send(orphan);
            }
            None => self.orphans.push(orphan),
        }
    }

    /// Events `worker` has acknowledged so far.
    pub(crate) fn acked_by(&self, worker: WorkerId) -> u64 {
        self.workers.iter().find(|w| w.id == worker).map_or(0, |w| w.acked)
    }

    /// Registers a worker that said Ready. It gets events only once it is
    /// made current.
    pub(crate) fn attach(&mut self, worker: Attached) {
        self.workers.push(worker);
    }

    /// Makes `worker` the current one: it receives new events, and the
    /// previous current worker starts draining. Returns the previous one.
    pub(crate) fn make_current(&mut self, worker: WorkerId) -> Option<WorkerId> {
        self.suspended = false;
        self.snapshot_sent = false;
        self.handoff = None;
        let previous = self.current.replace(worker);
        if let Some(current) = self.workers.iter().find(|w| w.id == worker) {
            for orphan in self.orphans.drain(..) {
                let _ = current.link.send(orphan);
            }
        }
        if let Some(previous) = previous.filter(|p| *p != worker) {
            self.drain(previous);
        }
        self.release_all();
        previous
    }

    /// Stops sending to `worker` and tells it to stop once it holds nothing.
    pub(crate) fn drain(&mut self, worker: WorkerId) {
        if self.current == Some(worker) {
            self.current = None;
        }
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
            w.draining = true;
        }
        self.stop_if_drained(worker);
    }

    fn stop_if_drained(&mut self, worker: WorkerId) {
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker)
            && w.draining
            && w.held == 0
            && w.tasks_out == 0
            && !w.stop_sent
        {
            w.stop_sent = true;
            let _ = w.link.send(ToWorker::Stop);
        }
    }

    /// Sends nothing more to a worker whose link is gone (its process is
    /// ending). What it holds stays held, so nothing newer of those
    /// connections overtakes it, until `detach` knows whether it is to blame.
    pub(crate) fn disconnect(&mut self, worker: WorkerId) {
        self.workers.retain(|w| w.id != worker);
        if self.current == Some(worker) {
            self.current = None;
            self.suspended = false;
            self.snapshot_sent = false;
        }
    }

    /// Removes a worker whose process is gone. What it held becomes
    /// redelivered work. With `blame` (the worker died of a failure, see
    /// `ExitCause::blames_running_events`), the event at the head of each of
    /// its lanes, the one that may have been running, gets a strike; the
    /// events queued behind it could not have been running (the SDK runs one
    /// event of a lane at a time) and get none. An event with more than
    /// `max_redeliveries` strikes is dropped and returned.
    pub(crate) fn detach(&mut self, worker: WorkerId, blame: bool) -> Vec<Poisoned> {
        self.disconnect(worker);
        let max_redeliveries = self.max_redeliveries;
        let isolated = self.isolated;
        let mut poisoned = Vec::new();
        let mut last_chances = Vec::new();
        let mut isolated_lost = false;
        let unacked = &mut self.unacked;
        let counters = &mut self.counters;
        self.lanes.retain(|conn, lane| {
            if lane.holder != Some(worker) {
                return true;
            }
            isolated_lost |= isolated.is_some() && lane.ids.front() == isolated.as_ref();
            for (position, id) in lane.ids.iter().take(lane.sent).enumerate() {
                let Some(pending) = unacked.get_mut(id) else { continue };
                pending.redelivered = true;
                counters.redelivered += 1;
                if blame && position == 0 {
                    pending.strikes += 1;
                }
            }
            lane.sent = 0;
            lane.holder = None;
            let Some(head) = lane.ids.front().copied() else { return false };
            let Some(strikes) = unacked.get(&head).map(|p| p.strikes) else { return true };
            // Dropped only when it failed a run it had to itself (or when no
            // redelivery is allowed at all); otherwise a head at the limit
            // gets its last chance alone.
            let alone = isolated == Some(head) || max_redeliveries == 0;
            if strikes > max_redeliveries && alone {
                poisoned.push(Poisoned { conn: *conn, id: head, strikes });
                unacked.remove(&head);
                lane.ids.pop_front();
                counters.dropped += 1;
            } else if last_chance(max_redeliveries, strikes) {
                last_chances.push((head, *conn));
            }
            !lane.ids.is_empty()
        });
        if isolated_lost {
            self.isolated = None;
        }
        // Oldest first, so a connection's turn does not depend on hashing.
        last_chances.sort_unstable();
        self.isolation.extend(last_chances.into_iter().map(|(_, conn)| conn));
        self.release_all();
        poisoned
    }
}

/// Whether an event with `strikes` gets its next run alone: it has used up
/// its redeliveries, so the next failure is final and must be certain.
fn last_chance(max_redeliveries: u32, strikes: u32) -> bool {
    max_redeliveries > 0 && strikes >= max_redeliveries
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Worker {
        id: WorkerId,
        rx: mpsc::UnboundedReceiver<ToWorker>,
    }

    impl Worker {
        fn received(&mut self) -> Vec<(u64, u64, bool)> {
            let mut out = Vec::new();
            while let Ok(message) = self.rx.try_recv() {
                match message {
                    ToWorker::Message { conn, id, redelivered, .. } => out.push((conn, id, redelivered)),
                    ToWorker::Stop => out.push((0, 0, false)),
                    other => panic!("unexpected {other:?}"),
                }
            }
            out
        }
    }

    fn worker(slot: &mut Slot, id: WorkerId) -> Worker {
        let (link, rx) = mpsc::unbounded_channel();
        slot.attach(Attached::new(id, link, true));
        Worker { id, rx }
    }

    fn message(conn: u64) -> Pending {
        Pending::new(conn, EventBody::Message { binary: false, data: bytes::Bytes::new() })
    }

    #[test]
    fn events_wait_for_a_worker_and_go_out_in_order() {
        let mut slot = Slot::new(3);
        slot.push(1, message(7));
        slot.push(2, message(7));
        let mut w = worker(&mut slot, 10);
        assert!(w.received().is_empty(), "not current yet");
        slot.make_current(w.id);
        assert_eq!(w.received(), vec![(7, 1, false), (7, 2, false)]);
        assert_eq!(slot.ack(w.id, 1), Some(7));
        assert_eq!(slot.ack(w.id, 2), Some(7));
        assert_eq!(slot.unacked_len(), 0);
    }

    #[test]
    fn after_a_switch_a_connection_waits_for_the_old_worker() {
        let mut slot = Slot::new(3);
        let mut old = worker(&mut slot, 1);
        slot.make_current(old.id);
        slot.push(1, message(7));
        slot.push(2, message(8));
        assert_eq!(old.received().len(), 2);
        let mut new = worker(&mut slot, 2);
        slot.make_current(new.id);
        slot.push(3, message(7)); // conn 7 still has event 1 at the old worker
        slot.push(4, message(9)); // conn 9 is idle: goes straight to the new worker
        assert_eq!(new.received(), vec![(9, 4, false)]);
        assert_eq!(slot.ack(old.id, 1), Some(7));
        assert_eq!(new.received(), vec![(7, 3, false)], "released once the old worker acknowledged");
        assert!(old.received().is_empty(), "old still holds event 2");
        assert_eq!(slot.ack(old.id, 2), Some(8));
        assert_eq!(old.received(), vec![(0, 0, false)], "drained: told to stop");
        // An acknowledgement from a worker that does not hold the event is ignored.
        assert_eq!(slot.ack(old.id, 3), None);
    }

    #[test]
    fn a_dead_workers_events_are_redelivered_first_and_flagged() {
        let mut slot = Slot::new(3);
        let mut a = worker(&mut slot, 1);
        slot.make_current(a.id);
        slot.push(1, message(7));
        slot.push(2, message(7));
        assert_eq!(a.received().len(), 2);
        assert_eq!(slot.ack(a.id, 1), Some(7));
        assert!(slot.detach(a.id, true).is_empty());
        slot.push(3, message(7)); // arrives while the slot has no worker
        let mut b = worker(&mut slot, 2);
        slot.make_current(b.id);
        assert_eq!(b.received(), vec![(7, 2, true), (7, 3, false)]);
    }

    #[test]
    fn a_draining_worker_that_dies_hands_its_events_to_the_current_one_in_order() {
        let mut slot = Slot::new(3);
        let mut old = worker(&mut slot, 1);
        slot.make_current(old.id);
        slot.push(1, message(7));
        old.received();
        let mut new = worker(&mut slot, 2);
        slot.make_current(new.id);
        slot.push(2, message(7));
        assert!(new.received().is_empty());
        slot.detach(old.id, true);
        assert_eq!(new.received(), vec![(7, 1, true), (7, 2, false)]);
    }

    #[test]
    fn an_event_that_keeps_killing_workers_is_dropped_and_the_ones_behind_it_go_on() {
        let mut slot = Slot::new(2);
        slot.push(1, message(7));
        slot.push(2, message(7));
        for id in 1..=3 {
            let mut w = worker(&mut slot, id);
            slot.make_current(w.id);
            // The last chance (strikes = max_redeliveries) runs alone.
            let expected = if id < 3 { vec![(7, 1, id > 1), (7, 2, id > 1)] } else { vec![(7, 1, true)] };
            assert_eq!(w.received(), expected);
            let poisoned = slot.detach(w.id, true);
            if id < 3 {
                assert!(poisoned.is_empty());
            } else {
                assert_eq!(poisoned.iter().map(|p| (p.id, p.strikes)).collect::<Vec<_>>(), vec![(1, 3)]);
            }
        }
        // Event 2 was queued behind the poison each time: never struck.
        assert_eq!(slot.unacked_len(), 1);
        assert_eq!(slot.unacked.get(&2).map(|p| p.strikes), Some(0));
        let mut w = worker(&mut slot, 4);
        slot.make_current(w.id);
        assert_eq!(w.received(), vec![(7, 2, true)]);
        assert_eq!(slot.counters.dropped, 1);
    }

    #[test]
    fn a_bystander_of_a_crash_loop_gets_its_last_chance_alone_and_survives() {
        let mut slot = Slot::new(2);
        slot.push(1, message(7)); // the poison
        slot.push(2, message(8)); // an innocent event running beside it
        for id in 1..=2 {
            let mut w = worker(&mut slot, id);
            slot.make_current(w.id);
            assert_eq!(w.received().len(), 2, "both run together while under the limit");
            assert!(slot.detach(w.id, true).is_empty());
        }
        // Both heads have 2 strikes: each gets its last run alone, oldest first.
        let mut w = worker(&mut slot, 3);
        slot.make_current(w.id);
        assert_eq!(w.received(), vec![(7, 1, true)]);
        slot.push(3, message(9)); // new traffic waits behind the solo run
        assert!(w.received().is_empty());
        let poisoned = slot.detach(w.id, true);
        assert_eq!(poisoned.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1], "guilty alone: dropped");
        let mut w = worker(&mut slot, 4);
        slot.make_current(w.id);
        assert_eq!(w.received(), vec![(8, 2, true)], "the bystander runs alone");
        assert_eq!(slot.ack(w.id, 2), Some(8));
        assert_eq!(w.received(), vec![(9, 3, false)], "then the slot flows again");
        assert_eq!(slot.counters.dropped, 1);
    }

    #[test]
    fn a_kill_the_server_ordered_strikes_nothing() {
        let mut slot = Slot::new(3);
        slot.push(1, message(7));
        for id in 1..=10 {
            let mut w = worker(&mut slot, id);
            slot.make_current(w.id);
            assert_eq!(w.received(), vec![(7, 1, id > 1)]);
            assert!(slot.detach(w.id, false).is_empty(), "a drain deadline is not the event's fault");
        }
        assert_eq!(slot.unacked.get(&1).map(|p| p.strikes), Some(0));
        assert_eq!(slot.counters.dropped, 0);
    }

    #[test]
    fn a_crash_strikes_only_the_head_of_each_lane() {
        let mut slot = Slot::new(3);
        let mut w = worker(&mut slot, 1);
        slot.make_current(w.id);
        for (id, conn) in [(1, 7), (2, 7), (3, 8), (4, 7), (5, 8)] {
            slot.push(id, message(conn));
        }
        assert_eq!(w.received().len(), 5);
        assert!(slot.detach(w.id, true).is_empty());
        let strikes: Vec<(u64, u32)> = (1..=5).map(|id| (id, slot.unacked[&id].strikes)).collect();
        assert_eq!(strikes, vec![(1, 1), (2, 0), (3, 1), (4, 0), (5, 0)]);
    }

    #[test]
    fn a_suspended_worker_finishes_what_it_holds_then_is_asked_for_its_state() {
        let mut slot = Slot::new(3);
        let mut old = worker(&mut slot, 1);
        slot.make_current(old.id);
        slot.push(1, message(7));
        assert_eq!(old.received().len(), 1);
        assert!(slot.suspend());
        slot.push(2, message(8));
        assert!(old.received().is_empty(), "suspended: nothing new");
        assert_eq!(slot.ack(old.id, 1), Some(7));
        assert!(matches!(old.rx.try_recv(), Ok(ToWorker::Snapshot)));
        assert!(slot.store_handoff(old.id, Some(bytes::Bytes::from_static(b"state"))));
        assert_eq!(slot.handoff_state().as_deref(), Some(&b"state"[..]));
        // The successor failed: the old worker is resumed and gets event 2.
        slot.resume();
        assert_eq!(old.received(), vec![(8, 2, false)]);
    }
}
