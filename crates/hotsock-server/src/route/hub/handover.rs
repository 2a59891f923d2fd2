//! The hub's side of a binary upgrade: what the old server's hub hands
//! over once every connection is parked and every event acknowledged
//! (`snapshot`), and how the new server's hub takes it in (`adopt`).
//!
//! Nothing in flight moves: the old server hands over only at a quiet
//! point (no unacknowledged event, every connection stopped between two
//! messages), so what moves is who is connected, their uids, their
//! channels with offsets and histories, and output queued since they
//! parked.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{ConnEntry, Hub, bind};
use crate::route::channels::ChannelState;
use crate::route::event::ConnMeta;
use crate::route::outbox::{ConnShared, Outgoing};

/// One open connection, as the old server hands it over.
#[derive(Debug, Clone)]
pub(crate) struct ConnState {
    pub(crate) conn: u64,
    pub(crate) meta: ConnMeta,
    pub(crate) uid: Option<u64>,
    /// Queued for the client since it parked (timers of the old workers).
    pub(crate) outbox: Vec<Outgoing>,
}

/// Everything the hub hands over.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubSnapshot {
    pub(crate) conns: Vec<ConnState>,
    pub(crate) channels: Vec<ChannelState>,
    /// The next connection id: ids stay unique across the upgrade.
    pub(crate) next_conn: u64,
    /// The hub's clock (what channel histories are dated by), continued by
    /// the new hub.
    pub(crate) clock_ms: u64,
}

impl Hub {
    /// Wakes every connection task (they look at the park state).
    pub(crate) fn wake_all(&self) {
        for entry in self.lock().conns.values() {
            entry.shared.wake.notify_one();
        }
    }

    /// The facts and uid of these connections (`None`: gone).
    pub(crate) fn facts(&self, conns: &[u64]) -> Vec<Option<(ConnMeta, Option<u64>)>> {
        let state = self.lock();
        conns.iter().map(|conn| state.conns.get(conn).map(|e| (e.meta.clone(), e.uid))).collect()
    }

    /// Wakes the connection tasks `skip` does not name.
    pub(crate) fn wake_unless(&self, skip: impl Fn(u64) -> bool) {
        for (conn, entry) in self.lock().conns.iter() {
            if !skip(*conn) {
                entry.shared.wake.notify_one();
            }
        }
    }

    /// What `adopt` needs in the new server. Called at the quiet point; the
    /// outboxes are emptied into it.
    pub(crate) fn snapshot(&self) -> HubSnapshot {
        let state = self.lock();
        let mut open: Vec<_> = state.conns.iter().filter(|(_, e)| e.open).collect();
        // The most recently active first: the new server serves them first.
        open.sort_unstable_by_key(|(_, e)| std::cmp::Reverse(e.shared.last_read_ms.load(Ordering::Relaxed)));
        let conns = open
            .into_iter()
            .map(|(conn, e)| {
                let outbox = e.shared.take_outbox();
                let bytes: usize = outbox.iter().map(Outgoing::len).sum();
                e.shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                ConnState { conn: *conn, meta: e.meta.clone(), uid: e.uid, outbox }
            })
            .collect();
        HubSnapshot {
            conns,
            channels: state.channels.export(),
            next_conn: self.next_conn.load(Ordering::Relaxed),
            clock_ms: self.now_ms(),
        }
    }

    /// An aborted upgrade: the output `snapshot` took goes back in front.
    pub(crate) fn requeue(&self, snapshot: HubSnapshot) {
        let state = self.lock();
        for ConnState { conn, outbox, .. } in snapshot.conns {
            if let Some(entry) = state.conns.get(&conn) {
                let bytes: usize = outbox.iter().map(Outgoing::len).sum();
                entry.shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
                entry.shared.requeue(outbox);
            }
        }
    }

    /// Takes in the old server's connections and channels; the outboxes to
    /// serve each connection with. Runs before any connection is accepted.
    pub(crate) fn adopt(&self, snapshot: HubSnapshot) -> HashMap<u64, Arc<ConnShared>> {
        let HubSnapshot { conns, channels, next_conn, clock_ms } = snapshot;
        self.clock_base_ms.store(clock_ms.saturating_sub(self.started.elapsed().as_millis() as u64), Ordering::Relaxed);
        self.next_conn.fetch_max(next_conn, Ordering::Relaxed);
        let mut state = self.lock();
        let mut shared_of = HashMap::with_capacity(conns.len());
        for ConnState { conn, meta, uid, outbox } in conns {
            let shared = Arc::new(ConnShared::default());
            for out in outbox {
                shared.push(out);
            }
            state.conns.insert(conn, ConnEntry { meta, shared: shared.clone(), uid: None, slot: 0, open: true });
            if let Some(uid) = uid {
                bind(&mut state, conn, uid);
            }
            shared_of.insert(conn, shared);
        }
        state.channels.import(channels, |conn| shared_of.get(&conn).cloned());
        shared_of
    }
}
