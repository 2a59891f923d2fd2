//! The hub: who is connected, which worker slot each event goes to, and which
//! events no worker has acknowledged yet.
//!
//! Theory of operation. Every event (handshake, open, message, close) gets a
//! server-wide increasing id and is kept in its slot until the worker holding
//! it acknowledges it (`slot.rs` has the rules for who holds what). A slot
//! outlives the processes that fill it, so a worker's death or replacement
//! costs a redelivery, never an event. Because a connection with events in
//! flight always routes to the slot that holds them (the sticky rule), one
//! connection's events reach one slot in arrival order, whatever the dispatch
//! mode.
//!
//! The hub never blocks and never awaits: every method takes the lock, does
//! a bounded amount of work, and returns. Messages to clients go through
//! per-connection outboxes (a queue in `ConnShared`, allocated on first use)
//! whose size is capped by byte counting (`limits.output_buffer_bytes`), so
//! a slow client can never stall a worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use hotsock_protocol::{
    ChannelError, ConnInfo, HandshakeReply, LOCAL_NODE, Member, Position, PresenceEntry, ToServer, ToWorker,
    capabilities, encode_conn_list, encode_members, encode_names, encode_presence,
};
use tokio::sync::oneshot;

use crate::close;
use crate::cluster::link::{ClusterLink, Command, ReplyTo};
use crate::config::{Config, DispatchMode, Envelope};
use crate::route::channels::{Channels, unsubscribed_envelope};
use crate::route::event::{ConnMeta, EventBody};
use crate::route::outbox::{ConnShared, NotUtf8, Outgoing};
use crate::route::slot::{Attached, IdMap, Pending, Poisoned, Slot, SlotCounters, WorkerId};
use crate::wire::{ChannelCounters, ClientStatus, TaskCounters};

#[derive(Debug)]
struct ConnEntry {
    meta: ConnMeta,
    shared: Arc<ConnShared>,
    uid: Option<u64>,
    /// The slot holding this connection's unacknowledged events.
    slot: usize,
    /// Whether the upgrade completed (only open connections get pushes,
    /// broadcasts and show in `ConnList`).
    open: bool,
}

/// A slot's events plus what the supervisor reports about it.
#[derive(Debug)]
struct SlotEntry {
    slot: Slot,
    /// Handler panics its workers caught and reported.
    panics: u64,
    /// When the current worker last answered a heartbeat.
    heartbeat: Option<std::time::Instant>,
}

#[derive(Debug)]
struct HubState {
    conns: IdMap<ConnEntry>,
    uids: HashMap<u64, Vec<u64>>,
    slots: Vec<SlotEntry>,
    handshakes: HashMap<u64, oneshot::Sender<HandshakeReply>>,
    /// Tasks whose result has not come back: who dispatched them.
    tasks: IdMap<TaskOrigin>,
    next_task: u64,
    task_counters: TaskCounters,
    next_event: u64,
    round_robin: usize,
    /// From the workers' Ready: they want to decide on upgrades.
    worker_handshakes: bool,
    /// From the workers' Ready: they want Join and Leave events.
    channel_events: bool,
    channels: Channels,
    /// Uids whose local connections changed since the cluster was last
    /// told (`flush_cluster`).
    touched: Vec<u64>,
}

/// What a batch from a worker reported, beyond its effects.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    /// Handler panics it reported.
    pub(crate) panics: u32,
    /// It handed over its state (answer to Snapshot).
    pub(crate) handed_off: bool,
}

/// One slot as the hub sees it (see `Hub::slot_reports`).
#[derive(Debug, Clone)]
pub(crate) struct SlotReport {
    /// The worker that gets new events.
    pub(crate) current: Option<WorkerId>,
    /// Events each attached worker holds.
    pub(crate) held: Vec<(WorkerId, usize)>,
    /// Events not acknowledged yet (held or waiting).
    pub(crate) queued: usize,
    pub(crate) counters: SlotCounters,
    pub(crate) panics: u64,
    pub(crate) heartbeat_age_ms: Option<u64>,
}

/// Who dispatched a task, to send its result back to.
#[derive(Debug, Clone, Copy)]
struct TaskOrigin {
    slot: usize,
    worker: WorkerId,
}

/// A worker's misbehaviour that makes its output untrustworthy; the
/// supervisor kills it (`ExitCause::ProtocolViolation`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerFault {
    /// Its bytes do not decode as frames.
    #[error("malformed frame: {0}")]
    Malformed(#[from] hotsock_protocol::ProtocolError),
    /// Ready after Ready.
    #[error("sent Ready twice")]
    SecondReady,
    /// A text push that is not UTF-8.
    #[error(transparent)]
    NotUtf8(#[from] NotUtf8),
}

/// Events routed to a slot: see the module docs.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Mutex<HubState>,
    dispatch: DispatchMode,
    /// The limits a reload may change (`Hub::set_limits`): atomics, so the
    /// paths that read them take no lock for it.
    max_inflight_per_conn: AtomicU32,
    output_buffer_bytes: AtomicUsize,
    handoff_max_bytes: AtomicUsize,
    /// Slots `0..event_slots` take connection events; the rest run tasks.
    event_slots: usize,
    task_queue_max: AtomicUsize,
    next_conn: AtomicU64,
    envelope: Envelope,
    /// The clock channel histories age by: `clock_base_ms` plus the time
    /// since `started` (the base is the old server's clock after an upgrade).
    started: std::time::Instant,
    clock_base_ms: AtomicU64,
    /// `[cluster]`: the handle on the task that talks to Redis (set once,
    /// before the first connection; see `cluster.rs` beside this file).
    cluster: OnceLock<ClusterLink>,
}

mod cluster;
mod handover;
mod lock;

use lock::HubGuard;

pub(crate) use handover::{ConnState, HubSnapshot};

impl Hub {
    pub(crate) fn new(config: &Config) -> Hub {
        let (workers, limits) = (&config.workers, &config.limits);
        let dispatch = workers.dispatch;
        let max_inflight_per_conn = limits.max_inflight_per_conn;
        let output_buffer_bytes = limits.output_buffer_bytes;
        let handoff_max_bytes = config.reload.handoff_max_bytes;
        let task_queue_max = workers.task_queue_max;
        let (slots, task_slots) = (workers.count, workers.task_count);
        let event_slots = slots;
        let slots = slots + task_slots;
        let slots = (0..slots)
            .map(|_| SlotEntry { slot: Slot::new(workers.max_redeliveries), panics: 0, heartbeat: None })
            .collect();
        Hub {
            state: Mutex::new(HubState {
                conns: IdMap::default(),
                uids: HashMap::new(),
                slots,
                handshakes: HashMap::new(),
                tasks: IdMap::default(),
                next_task: 1,
                task_counters: TaskCounters::default(),
                next_event: 1,
                round_robin: 0,
                worker_handshakes: false,
                channel_events: false,
                channels: Channels::new(config.channels.clone(), limits.max_message_bytes, epoch_seed()),
                touched: Vec::new(),
            }),
            dispatch,
            max_inflight_per_conn: AtomicU32::new(max_inflight_per_conn),
            output_buffer_bytes: AtomicUsize::new(output_buffer_bytes),
            handoff_max_bytes: AtomicUsize::new(handoff_max_bytes),
            event_slots,
            task_queue_max: AtomicUsize::new(task_queue_max),
            next_conn: AtomicU64::new(1),
            envelope: config.channels.envelope,
            started: std::time::Instant::now(),
            clock_base_ms: AtomicU64::new(0),
            cluster: OnceLock::new(),
        }
    }

    fn lock(&self) -> HubGuard<'_> {
        // A panic while holding the lock leaves consistent data (every
        // method updates maps in single steps), so keep going rather than
        // turning one panic into a dead server.
        HubGuard::new(self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A new connection id: increasing, never reused in this server's life.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn max_inflight_per_conn(&self) -> u32 {
        self.max_inflight_per_conn.load(Ordering::Relaxed)
    }

    /// A reload changed the limits the hub keeps (see `config/diff.rs`).
    /// Every connection is woken once, so one that stopped reading at the
    /// old in-flight cap looks again at the new one.
    pub(crate) fn set_limits(&self, config: &Config) {
        let (limits, reload) = (&config.limits, &config.reload);
        self.output_buffer_bytes.store(limits.output_buffer_bytes, Ordering::Relaxed);
        self.handoff_max_bytes.store(reload.handoff_max_bytes, Ordering::Relaxed);
        self.task_queue_max.store(config.workers.task_queue_max, Ordering::Relaxed);
        self.lock().channels.set_config(config.channels.clone(), limits.max_message_bytes);
        let before = self.max_inflight_per_conn.swap(limits.max_inflight_per_conn, Ordering::Relaxed);
        if before != limits.max_inflight_per_conn {
            for entry in self.lock().conns.values() {
                entry.shared.wake.notify_one();
            }
        }
    }

    pub(crate) fn worker_handshakes(&self) -> bool {
        self.lock().worker_handshakes
    }

    /// Adds a connection that is mid-handshake.
    pub(crate) fn register(&self, conn: u64, meta: ConnMeta, shared: Arc<ConnShared>) {
        let mut state = self.lock();
        state.conns.insert(conn, ConnEntry { meta, shared, uid: None, slot: 0, open: false });
    }

    /// Marks the upgrade as done, binding the uid the handshake chose.
    pub(crate) fn opened(&self, conn: u64, uid: Option<u64>) {
        let mut state = self.lock();
        if let Some(entry) = state.conns.get_mut(&conn) {
            entry.open = true;
        }
        if let Some(uid) = uid {
            bind(&mut state, conn, uid);
        }
        self.flush_cluster(&mut state);
    }

    /// Forgets a connection. Its unacknowledged events stay in their slot.
    pub(crate) fn remove(&self, conn: u64) {
        let mut state = self.lock();
        state.handshakes.remove(&conn);
        // Normally it left its channels with its Close event; a connection
        // refused at the handshake never had one.
        state.channels.leave_all(conn);
        if let Some(entry) = state.conns.remove(&conn)
            && let Some(uid) = entry.uid
        {
            unbind(&mut state, conn, uid);
        }
        self.flush_cluster(&mut state);
    }

    /// Registers interest in the worker's answer to `conn`'s handshake.
    pub(crate) fn expect_handshake(&self, conn: u64) -> oneshot::Receiver<HandshakeReply> {
        let (tx, rx) = oneshot::channel();
        self.lock().handshakes.insert(conn, tx);
        rx
    }

    /// Routes events of `conn`, in order, to a slot and sends them if the
    /// slot has a live worker; otherwise they wait in the slot for the next.
    pub(crate) fn dispatch(&self, conn: u64, bodies: impl IntoIterator<Item = EventBody>) {
        let mut guard = self.lock();
        for body in bodies {
            if matches!(body, EventBody::Close { .. }) {
                // A closing connection leaves its channels first, so the
                // app sees its Leave events before its Close.
                let left = guard.channels.leave_all(conn);
                if guard.channel_events {
                    self.dispatch_locked(&mut guard, conn, left.into_iter().map(EventBody::Leave));
                }
            }
            self.dispatch_locked(&mut guard, conn, [body]);
        }
        self.flush_cluster(&mut guard);
    }

    fn dispatch_locked(&self, state: &mut HubState, conn: u64, bodies: impl IntoIterator<Item = EventBody>) {
        let slot_count = self.event_slots;
        let Some(entry) = state.conns.get_mut(&conn) else { return };
        for body in bodies {
            let inflight = entry.shared.inflight.load(Ordering::Relaxed);
            // The sticky rule: while any event of this connection is
            // unacknowledged, its next event goes to the same slot.
            if inflight == 0 {
                entry.slot = match self.dispatch {
                    DispatchMode::Fd => (conn % slot_count as u64) as usize,
                    DispatchMode::Uid => (entry.uid.unwrap_or(conn) % slot_count as u64) as usize,
                    DispatchMode::RoundRobin => {
                        state.round_robin = (state.round_robin + 1) % slot_count;
                        state.round_robin
                    }
                    DispatchMode::LeastBusy => least_busy(&state.slots[..slot_count]),
                };
            }
            entry.shared.inflight.store(inflight + 1, Ordering::Relaxed);
            let id = state.next_event;
            state.next_event += 1;
            state.slots[entry.slot].slot.push(id, Pending::new(conn, body));
        }
    }

    /// Registers a worker that said Ready; it gets events once current.
    /// An event worker's capabilities (`capabilities` bits) say what the
    /// serving code wants from the server from now on.
    pub(crate) fn attach(&self, slot_index: usize, worker: Attached, caps: u32) {
        let mut state = self.lock();
        if slot_index < self.event_slots {
            state.worker_handshakes = caps & capabilities::HANDSHAKE != 0;
            state.channel_events = caps & capabilities::CHANNEL_EVENTS != 0;
        }
        state.slots[slot_index].slot.attach(worker);
    }

    /// Routes the slot's new events to `worker`; the previous current worker
    /// drains (finishes what it holds, then is told to stop).
    pub(crate) fn make_current(&self, slot_index: usize, worker: WorkerId) {
        self.lock().slots[slot_index].slot.make_current(worker);
    }

    /// Stops routing events to `worker` and tells it to stop once idle.
    pub(crate) fn drain(&self, slot_index: usize, worker: WorkerId) {
        self.lock().slots[slot_index].slot.drain(worker);
    }

    /// Stops routing anything to a worker whose link is gone (see
    /// `Slot::disconnect`).
    pub(crate) fn disconnect(&self, slot_index: usize, worker: WorkerId) {
        self.lock().slots[slot_index].slot.disconnect(worker);
    }

    /// Removes a worker whose process is gone: what it had not acknowledged
    /// becomes redelivered work for the slot's current worker. When the
    /// worker failed (`blame`), the events it was running get a strike; an
    /// event with more than `max_redeliveries` strikes is a poison pill: it
    /// is dropped and its connection closed with 1011, so one bad message
    /// cannot keep a slot crashing forever. Events queued behind it go on.
    pub(crate) fn detach(&self, slot_index: usize, worker: WorkerId, blame: bool) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let poisoned = state.slots[slot_index].slot.detach(worker, blame);
        for Poisoned { conn, id, strikes } in poisoned {
            tracing::error!(
                slot = slot_index,
                conn,
                event = id,
                "dropping an event that crashed {strikes} workers (workers.max_redeliveries); closing its connection with 1011"
            );
            if slot_index >= self.event_slots {
                // A task that kills every task worker: its dispatcher gets
                // a failure instead of waiting forever.
                self.finish_task(state, conn, true, Bytes::from("the task crashed every task worker that ran it"));
                continue;
            }
            if let Some(entry) = state.conns.get(&conn) {
                entry.shared.inflight.fetch_sub(1, Ordering::Relaxed);
                let (code, reason) = close::POISON_EVENT;
                entry.shared.push(Outgoing::Close(code, reason.into()));
            }
        }
    }

    /// Applies a batch of messages from the worker in `slot_index`, under one
    /// lock, and returns how many handler panics it reported. An error means
    /// the worker broke the protocol.
    pub(crate) fn apply(
        &self,
        slot_index: usize,
        worker: WorkerId,
        messages: Vec<ToServer>,
    ) -> Result<Applied, WorkerFault> {
        let mut applied = Applied::default();
        let mut guard = self.lock();
        let state = &mut *guard;
        for message in messages {
            match message {
                ToServer::Ready(_) => return Err(WorkerFault::SecondReady),
                // Heartbeats are the worker task's business (worker.rs).
                ToServer::Pong { .. } => {}
                // So are table requests, run outside this lock (route/tables.rs).
                ToServer::Table { .. } => {}
                ToServer::Ack(ids) => {
                    let slot = &mut state.slots[slot_index].slot;
                    // In a task slot a lane is a task, not a connection.
                    let conns = slot_index < self.event_slots;
                    for id in ids {
                        let Some(conn) = slot.ack(worker, id) else { continue };
                        if let Some(entry) = state.conns.get(&conn).filter(|_| conns) {
                            let before = entry.shared.inflight.fetch_sub(1, Ordering::Relaxed);
                            if before == self.max_inflight_per_conn.load(Ordering::Relaxed) {
                                entry.shared.wake.notify_one();
                            }
                        }
                    }
                }
                ToServer::Push { conn, binary, data } => {
                    let message = Outgoing::data(binary, data)?;
                    if let Some(entry) = state.conns.get(&conn) {
                        self.send(&entry.shared, message);
                    }
                }
                ToServer::CloseConn { conn, code, reason } => {
                    if let Some(entry) = state.conns.get(&conn) {
                        self.send(&entry.shared, Outgoing::Close(code, reason));
                    }
                }
                ToServer::Bind { conn, uid } => bind(state, conn, uid),
                ToServer::SendToUid { uid, binary, data } => {
                    let message = Outgoing::data(binary, data.clone())?;
                    self.to_uid(state, uid, &message);
                    if let Some(link) = self.cluster.get() {
                        // Refused: counted as dropped (docs/scaling.md).
                        let _ = link.send(Command::ToUid { uid, binary, data });
                    }
                }
                ToServer::CloseUid { uid, code, reason } => {
                    self.to_uid(state, uid, &Outgoing::Close(code, reason.clone()));
                    if let Some(link) = self.cluster.get() {
                        let _ = link.send(Command::CloseUid { uid, code, reason });
                    }
                }
                ToServer::Broadcast { binary, data } => {
                    let message = Outgoing::data(binary, data.clone())?;
                    self.to_all(state, &message);
                    if let Some(link) = self.cluster.get() {
                        let _ = link.send(Command::Broadcast { binary, data });
                    }
                }
                ToServer::ConnInfo { conn, request } => {
                    let reply = match state.conns.get(&conn).filter(|e| e.open) {
                        Some(entry) => ToWorker::Reply {
                            id: request,
                            not_found: false,
                            body: ConnInfo {
                                conn,
                                peer: entry.meta.peer.clone(),
                                path: entry.meta.path.clone(),
                                uid: entry.uid,
                                connected_at_unix_ms: entry.meta.connected_at_unix_ms,
                                slot: entry.slot as u32,
                            }
                            .to_bytes(),
                        },
                        None => ToWorker::Reply { id: request, not_found: true, body: Bytes::new() },
                    };
                    state.slots[slot_index].slot.send_to(worker, reply);
                }
                ToServer::ConnList { request } => {
                    let mut ids: Vec<u64> = state.conns.iter().filter(|(_, e)| e.open).map(|(id, _)| *id).collect();
                    ids.sort_unstable();
                    let reply = ToWorker::Reply { id: request, not_found: false, body: encode_conn_list(&ids) };
                    state.slots[slot_index].slot.send_to(worker, reply);
                }
                ToServer::HandshakeReply { conn, reply } => {
                    if let Some(waiter) = state.handshakes.remove(&conn) {
                        let _ = waiter.send(reply);
                    }
                }
                ToServer::DispatchTask { request, payload } => {
                    let reply = self.dispatch_task(state, slot_index, worker, payload);
                    let reply = match reply {
                        Ok(task) => ToWorker::Reply {
                            id: request,
                            not_found: false,
                            body: Bytes::copy_from_slice(&task.to_le_bytes()),
                        },
                        Err(why) => {
                            state.task_counters.refused += 1;
                            ToWorker::Reply { id: request, not_found: true, body: Bytes::from(why) }
                        }
                    };
                    state.slots[slot_index].slot.send_to(worker, reply);
                }
                ToServer::TaskDone { task, failed, payload } => self.finish_task(state, task, failed, payload),
                ToServer::Subscribe { conn, request, channel, from } if self.cluster.get().is_some() => {
                    let reply = ReplyTo { slot: slot_index, worker, request };
                    self.to_cluster(state, Command::Subscribe { conn, channel, from, reply });
                }
                ToServer::Subscribe { conn, request, channel, from } => {
                    let reply = self.subscribe(state, conn, &channel, from);
                    self.reply(state, slot_index, worker, request, reply.map(|s| s.to_bytes()));
                }
                ToServer::Unsubscribe { conn, channel } => {
                    // In a cluster, a channel left without local members is
                    // unfollowed by `flush_cluster`.
                    if let Some(name) = state.channels.unsubscribe(conn, &channel) {
                        if let Some(entry) = state.conns.get(&conn)
                            && self.envelope == Envelope::Json
                        {
                            self.send(&entry.shared, unsubscribed_envelope(&name));
                        }
                        if state.channel_events {
                            self.dispatch_locked(state, conn, [EventBody::Leave(name)]);
                        }
                    }
                }
                ToServer::Publish { request, channel, except, binary, data } if self.cluster.get().is_some() => {
                    Outgoing::data(binary, data.clone())?;
                    let reply = ReplyTo { slot: slot_index, worker, request };
                    match state.channels.check_publish(&channel, data.len()) {
                        Ok(()) => self.to_cluster(state, Command::Publish { channel, except, binary, data, reply }),
                        Err(error) => self.answer_locked(state, reply, Err(error)),
                    }
                }
                ToServer::Publish { request, channel, except, binary, data } => {
                    let message = Outgoing::data(binary, data)?;
                    let now = self.now_ms();
                    let reply = state.channels.publish(&channel, message, now).map(|published| {
                        for (conn, shared) in state.channels.members(&channel) {
                            if Some(conn) != except {
                                self.send(shared, published.message.clone());
                            }
                        }
                        position_bytes(published.position)
                    });
                    self.reply(state, slot_index, worker, request, reply);
                }
                ToServer::Members { request, channel } => {
                    let mut members: Vec<Member> = state
                        .channels
                        .members(&channel)
                        .map(|(conn, _)| Member { conn, uid: state.conns.get(&conn).and_then(|e| e.uid) })
                        .collect();
                    members.sort_unstable_by_key(|m| m.conn);
                    let body = encode_members(&members);
                    state.slots[slot_index]
                        .slot
                        .send_to(worker, ToWorker::Reply { id: request, not_found: false, body });
                }
                ToServer::Presence { request, uid } if self.cluster.get().is_some() => {
                    let reply = ReplyTo { slot: slot_index, worker, request };
                    self.to_cluster(state, Command::PresenceQuery { uid, reply });
                }
                ToServer::Presence { request, uid } => {
                    let conns = state.uids.get(&uid).cloned().unwrap_or_default();
                    let entries: Vec<PresenceEntry> = Some(PresenceEntry { node: LOCAL_NODE.into(), conns })
                        .filter(|entry| !entry.conns.is_empty())
                        .into_iter()
                        .collect();
                    let reply = ReplyTo { slot: slot_index, worker, request };
                    self.answer_locked(state, reply, Ok(encode_presence(&entries)));
                }
                ToServer::ConnChannels { conn, request } => {
                    let reply = match state.conns.get(&conn) {
                        Some(_) => Ok(encode_names(state.channels.of_conn(conn).iter().map(|n| &**n))),
                        None => Err(ChannelError::NoSuchConnection),
                    };
                    self.reply(state, slot_index, worker, request, reply);
                }
                ToServer::Panicked { conn, event, message } => {
                    tracing::warn!(slot = slot_index, conn, event, "handler panicked in the worker: {message}");
                    state.slots[slot_index].panics += 1;
                    applied.panics += 1;
                }
                ToServer::Handoff(handoff) => {
                    let handoff_max_bytes = self.handoff_max_bytes.load(Ordering::Relaxed);
                    let handoff = match handoff {
                        Some(bytes) if bytes.len() > handoff_max_bytes => {
                            tracing::error!(
                                slot = slot_index,
                                bytes = bytes.len(),
                                "handoff state over reload.handoff_max_bytes = {}; the successor starts without it",
                                handoff_max_bytes
                            );
                            None
                        }
                        other => other,
                    };
                    applied.handed_off |= state.slots[slot_index].slot.store_handoff(worker, handoff);
                }
            }
        }
        self.flush_cluster(state);
        Ok(applied)
    }

    /// Adds `conn` to a channel, queueing the `subscribed` envelope and any
    /// replay before the live publications (all under the hub lock, so none
    /// is missed or doubled).
    fn subscribe(
        &self,
        state: &mut HubState,
        conn: u64,
        channel: &str,
        from: Option<Position>,
    ) -> Result<hotsock_protocol::Subscribed, ChannelError> {
        let now = self.now_ms();
        let Some(entry) = state.conns.get(&conn) else { return Err(ChannelError::NoSuchConnection) };
        let shared = entry.shared.clone();
        // A replay must not make the connection a slow reader by itself:
        // one that would not fit what its outbox may still take is not
        // made, and the client is told it did not recover.
        let queued = shared.queued_bytes.load(Ordering::Relaxed);
        let budget = self.output_buffer_bytes.load(Ordering::Relaxed).saturating_sub(queued);
        let joined = state.channels.subscribe(conn, &shared, channel, from, budget, now)?;
        for out in joined.queue {
            self.send(&shared, out);
        }
        if !joined.already && state.channel_events {
            self.dispatch_locked(state, conn, [EventBody::Join(joined.name)]);
        }
        Ok(joined.subscribed)
    }

    /// Answers a channel request (request id 0: the worker wants no answer).
    fn reply(
        &self,
        state: &mut HubState,
        slot_index: usize,
        worker: WorkerId,
        request: u64,
        result: Result<Bytes, ChannelError>,
    ) {
        self.answer_locked(state, ReplyTo { slot: slot_index, worker, request }, result);
    }

    fn answer_locked(&self, state: &mut HubState, to: ReplyTo, result: Result<Bytes, ChannelError>) {
        let reply = match result {
            Ok(body) => ToWorker::Reply { id: to.request, not_found: false, body },
            Err(error) => {
                state.channels.counters.refused += 1;
                tracing::debug!(slot = to.slot, reason = error.reason(), "channel request refused: {error}");
                ToWorker::Reply { id: to.request, not_found: true, body: error.to_bytes() }
            }
        };
        if to.request != 0 {
            state.slots[to.slot].slot.send_to(to.worker, reply);
        }
    }

    /// To every local connection bound to `uid`.
    fn to_uid(&self, state: &HubState, uid: u64, message: &Outgoing) {
        for conn in state.uids.get(&uid).into_iter().flatten() {
            if let Some(entry) = state.conns.get(conn) {
                self.send(&entry.shared, message.clone());
            }
        }
    }

    /// To every open local connection.
    fn to_all(&self, state: &HubState, message: &Outgoing) {
        for entry in state.conns.values().filter(|e| e.open) {
            self.send(&entry.shared, message.clone());
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock_base_ms.load(Ordering::Relaxed) + self.started.elapsed().as_millis() as u64
    }

    /// Channel totals for `status` and `/metrics`: O(1) under the lock
    /// (the dashboard reads them every second); expired history is swept
    /// when the number of channels doubles (`Channels::get_or_create`).
    pub(crate) fn channel_counters(&self) -> ChannelCounters {
        let state = self.lock();
        let mut counters = state.channels.counters;
        counters.channels = state.channels.len();
        counters.history_bytes = state.channels.history_bytes();
        counters
    }

    /// Queues a task on the least busy task slot; returns its id, or why it
    /// was refused.
    fn dispatch_task(
        &self,
        state: &mut HubState,
        slot: usize,
        worker: WorkerId,
        payload: Bytes,
    ) -> Result<u64, String> {
        let task_slots = &state.slots[self.event_slots..];
        if task_slots.is_empty() {
            return Err("no task workers are configured (workers.task_count = 0)".into());
        }
        let queued: usize = task_slots.iter().map(|s| s.slot.unacked_len()).sum();
        let task_queue_max = self.task_queue_max.load(Ordering::Relaxed);
        if queued >= task_queue_max {
            return Err(format!("task queue full (workers.task_queue_max = {task_queue_max})"));
        }
        let target = self.event_slots + least_busy(task_slots);
        let task = state.next_task;
        state.next_task += 1;
        let id = state.next_event;
        state.next_event += 1;
        state.tasks.insert(task, TaskOrigin { slot, worker });
        state.slots[slot].slot.task_started(worker);
        state.slots[target].slot.push(id, Pending::new(task, EventBody::Task(payload)));
        Ok(task)
    }

    /// Sends a task's result to the worker that dispatched it while it is
    /// attached (draining included), else to its slot's current worker as
    /// an orphan. A second result for the same task (it ran again after a
    /// task worker died) is dropped: each task's result is delivered once.
    fn finish_task(&self, state: &mut HubState, task: u64, failed: bool, payload: Bytes) {
        let Some(origin) = state.tasks.remove(&task) else { return };
        if failed {
            state.task_counters.failed += 1;
        } else {
            state.task_counters.completed += 1;
        }
        state.slots[origin.slot].slot.finish_task(origin.worker, task, failed, payload);
    }

    /// Task totals for `status`.
    pub(crate) fn task_counters(&self) -> TaskCounters {
        let state = self.lock();
        let mut counters = state.task_counters;
        counters.queued = state.tasks.len();
        counters
    }

    /// Starts a state handoff in `slot_index` if its current worker supports
    /// one (see `Slot::suspend`).
    pub(crate) fn suspend(&self, slot_index: usize) -> bool {
        self.lock().slots[slot_index].slot.suspend()
    }

    /// Ends a suspension whose successor failed.
    pub(crate) fn resume(&self, slot_index: usize) {
        self.lock().slots[slot_index].slot.resume();
    }

    /// The state the slot's last suspended worker handed over.
    pub(crate) fn handoff_state(&self, slot_index: usize) -> Option<Bytes> {
        self.lock().slots[slot_index].slot.handoff_state()
    }

    /// Events `worker` has acknowledged (for `workers.max_requests`).
    pub(crate) fn acked_by(&self, slot_index: usize, worker: WorkerId) -> u64 {
        self.lock().slots[slot_index].slot.acked_by(worker)
    }

    /// Queues a message for a client, counting its bytes. The limit bounds
    /// what waits behind a reader that does not read, not the size of one
    /// message: a message larger than `limits.output_buffer_bytes` is queued
    /// when nothing waits ahead of it, so a connection's queued output never
    /// exceeds the larger of the limit and one message. Past that the client
    /// is a slow reader and is closed instead.
    fn send(&self, shared: &Arc<ConnShared>, out: Outgoing) {
        if shared.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let len = out.len();
        let ahead = shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if ahead > 0 && ahead + len > self.output_buffer_bytes.load(Ordering::Relaxed) {
            shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            shared.overflowed.store(true, Ordering::Relaxed);
            shared.wake.notify_one();
            return;
        }
        if shared.offer(out) {
            lock::due(shared);
        }
    }

    /// Asks every connection to close (graceful stop).
    pub(crate) fn close_all(&self, code: u16, reason: &str) {
        let state = self.lock();
        for entry in state.conns.values() {
            entry.shared.push(Outgoing::Close(code, reason.to_owned()));
        }
    }

    /// Connections currently registered (open or mid-handshake).
    pub(crate) fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Events no worker has acknowledged yet, over all slots.
    pub(crate) fn unacked_total(&self) -> usize {
        self.lock().slots.iter().map(|s| s.slot.unacked_len()).sum()
    }

    /// Records a heartbeat answer (or, at Ready, the start of the count).
    pub(crate) fn heartbeat(&self, slot_index: usize) {
        self.lock().slots[slot_index].heartbeat = Some(std::time::Instant::now());
    }

    /// What the hub knows of each slot, for `status`.
    pub(crate) fn slot_reports(&self) -> Vec<SlotReport> {
        let state = self.lock();
        state
            .slots
            .iter()
            .map(|entry| {
                let slot = &entry.slot;
                SlotReport {
                    current: slot.current().map(|w| w.id),
                    held: slot.held_by_worker(),
                    queued: slot.unacked_len(),
                    counters: slot.counters.clone(),
                    panics: entry.panics,
                    heartbeat_age_ms: match (slot.current(), entry.heartbeat) {
                        (Some(_), Some(at)) => Some(at.elapsed().as_millis() as u64),
                        _ => None,
                    },
                }
            })
            .collect()
    }

    pub(crate) fn clients(&self) -> Vec<ClientStatus> {
        let state = self.lock();
        let mut clients: Vec<ClientStatus> = state
            .conns
            .iter()
            .filter(|(_, e)| e.open)
            .map(|(id, e)| ClientStatus {
                conn: *id,
                peer: e.meta.peer.clone(),
                path: e.meta.path.clone(),
                uid: e.uid,
                slot: e.slot,
                inflight: e.shared.inflight.load(Ordering::Relaxed),
                connected_at_unix_ms: e.meta.connected_at_unix_ms,
            })
            .collect();
        clients.sort_by_key(|c| c.conn);
        clients
    }

    /// Whether every slot has a worker in state Ready.
    pub(crate) fn all_ready(&self) -> bool {
        self.lock().slots.iter().all(|s| s.slot.has_current())
    }
}

/// The body of a `Reply` to `Publish`: the publication's epoch and offset.
pub(crate) fn position_bytes(position: Position) -> Bytes {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&position.epoch.to_le_bytes());
    body.extend_from_slice(&position.offset.to_le_bytes());
    Bytes::from(body)
}

/// A value no earlier run of this server used, mixed into every channel
/// epoch: a restart loses the histories, so a client recovering across it
/// must see a new epoch.
fn epoch_seed() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn least_busy(slots: &[SlotEntry]) -> usize {
    slots
        .iter()
        .enumerate()
        .min_by_key(|(_, entry)| (!entry.slot.has_current(), entry.slot.unacked_len()))
        .map(|(index, _)| index)
        .unwrap_or(0)
}

fn bind(state: &mut HubState, conn: u64, uid: u64) {
    let Some(entry) = state.conns.get_mut(&conn) else { return };
    let previous = entry.uid.replace(uid);
    if previous == Some(uid) {
        return;
    }
    if let Some(previous) = previous {
        unbind(state, conn, previous);
    }
    state.uids.entry(uid).or_default().push(conn);
    state.touched.push(uid);
}

fn unbind(state: &mut HubState, conn: u64, uid: u64) {
    state.touched.push(uid);
    if let Some(conns) = state.uids.get_mut(&uid) {
        conns.retain(|c| *c != conn);
        if conns.is_empty() {
            state.uids.remove(&uid);
        }
    }
}
