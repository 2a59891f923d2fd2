//! The hub's side of cluster mode: what it queues for the cluster task
//! (`crate::cluster`), and what that task delivers back into it. Every
//! method here takes the hub lock once and never waits, like the rest of
//! the hub.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hotsock_protocol::{ChannelError, Position};

use super::{Hub, HubState};
use crate::cluster::cursor::Verdict;
use crate::cluster::link::{ClusterLink, Command, Refused, ReplyTo};
use crate::route::channels::Fetched;
use crate::route::outbox::Outgoing;

impl Hub {
    /// Turns cluster mode on: called once, before the first connection.
    pub(crate) fn set_cluster(&self, link: ClusterLink) {
        self.lock().channels.set_external();
        let _ = self.cluster.set(link);
    }

    pub(crate) fn cluster(&self) -> Option<&ClusterLink> {
        self.cluster.get()
    }

    /// Queues a request for the cluster task; one it cannot take is
    /// answered here (a full queue is an unavailable cluster to the app).
    pub(super) fn to_cluster(&self, state: &mut HubState, command: Command) {
        let Some(link) = self.cluster.get() else { return };
        let Err(Refused(command)) = link.send(command) else { return };
        let why = || ChannelError::ClusterUnavailable("cluster.queue_max requests are waiting for Redis".into());
        match command {
            Command::Publish { reply, .. }
            | Command::Subscribe { reply, .. }
            | Command::PresenceQuery { reply, .. } => {
                self.answer_locked(state, reply, Err(why()));
            }
            Command::Presence { .. } => link.shared.presence_dirty.store(true, Ordering::Relaxed),
            Command::ToUid { .. } | Command::CloseUid { .. } | Command::Broadcast { .. } | Command::Unfollow { .. } => {
            }
        }
    }

    /// Tells the cluster what changed locally under this lock: the uids
    /// whose connections changed, the channels left without members.
    pub(super) fn flush_cluster(&self, state: &mut HubState) {
        if self.cluster.get().is_none() {
            state.touched.clear();
            return;
        }
        let mut touched = std::mem::take(&mut state.touched);
        touched.sort_unstable();
        touched.dedup();
        for uid in touched {
            self.to_cluster(state, Command::Presence { uid });
        }
        for channel in state.channels.take_emptied() {
            self.to_cluster(state, Command::Unfollow { channel });
        }
    }

    /// Answers a worker's request once Redis has.
    pub(crate) fn answer(&self, to: ReplyTo, result: Result<Bytes, ChannelError>) {
        let mut state = self.lock();
        self.answer_locked(&mut state, to, result);
    }

    /// A subscribe, once the node follows the channel: `head` is where the
    /// cluster's log is (used if this node did not follow it yet), `fetched`
    /// what the cluster's stream holds after the client's position (in the
    /// epoch given), for the replay.
    pub(crate) fn cluster_subscribe(
        &self,
        conn: u64,
        channel: &str,
        from: Option<Position>,
        head: Position,
        fetched: (u64, Vec<Fetched>),
        reply: ReplyTo,
    ) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let now = self.now_ms();
        let result = state
            .channels
            .follow(channel, Some(head), fetched, now)
            .and_then(|()| self.subscribe(state, conn, channel, from));
        if result.is_err() {
            state.channels.drop_if_empty(channel);
        }
        self.answer_locked(state, reply, result.map(|subscribed| subscribed.to_bytes()));
        self.flush_cluster(state);
    }

    /// A publication from the cluster's log of `channel`, for the local
    /// members (`except` is a connection of this node when `mine`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cluster_deliver(
        &self,
        channel: &str,
        position: Position,
        except: Option<u64>,
        data: Outgoing,
        at_unix_ms: u64,
        jump: bool,
    ) -> Verdict {
        let mut guard = self.lock();
        let state = &mut *guard;
        let at_ms = self.clock_ms(at_unix_ms);
        let (verdict, message) = state.channels.deliver(channel, position, data, at_ms, jump);
        if let Some(message) = message {
            for (conn, shared) in state.channels.members(channel) {
                if Some(conn) != except {
                    self.send(shared, message.clone());
                }
            }
        }
        verdict
    }

    /// A uid send routed here by another node.
    pub(crate) fn cluster_to_uid(&self, uid: u64, message: &Outgoing) {
        let state = self.lock();
        self.to_uid(&state, uid, message);
    }

    /// A `close_uid` from another node.
    pub(crate) fn cluster_close_uid(&self, uid: u64, code: u16, reason: &str) {
        let state = self.lock();
        self.to_uid(&state, uid, &Outgoing::Close(code, reason.to_owned()));
    }

    /// A broadcast from another node.
    pub(crate) fn cluster_broadcast(&self, message: &Outgoing) {
        let state = self.lock();
        self.to_all(&state, message);
    }

    /// Every bound uid and its local connections (to put presence back).
    pub(crate) fn local_presence(&self) -> Vec<(u64, Vec<u64>)> {
        self.lock().uids.iter().map(|(uid, conns)| (*uid, conns.clone())).collect()
    }

    /// A uid's local connections.
    pub(crate) fn conns_of(&self, uid: u64) -> Vec<u64> {
        self.lock().uids.get(&uid).cloned().unwrap_or_default()
    }

    /// Whether the node follows `channel` (it has local members).
    pub(crate) fn follows(&self, channel: &str) -> bool {
        self.lock().channels.position(channel).is_some()
    }

    /// Where a followed channel is.
    pub(crate) fn position(&self, channel: &str) -> Option<Position> {
        self.lock().channels.position(channel)
    }

    /// The channels with local members, and where each is.
    pub(crate) fn followed(&self) -> Vec<(Arc<str>, Position)> {
        self.lock().channels.positions()
    }

    /// The hub clock (channel histories age by it) at a Unix time.
    fn clock_ms(&self, unix_ms: u64) -> u64 {
        let now = self.now_ms();
        let age = crate::cluster::unix_ms().saturating_sub(unix_ms);
        now.saturating_sub(age)
    }
}
