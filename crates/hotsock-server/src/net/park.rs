//! Parking connections for a binary upgrade: every connection task stops
//! between two client messages with its output written, and waits there
//! while the server's state is handed to the new process; then it either
//! goes on (the upgrade was aborted) or ends without a trace (the new
//! server holds the connection now: no Close event, no close frame).
//!
//! The state is one value all tasks read (`ParkState`); the mover
//! (`upgrade/give.rs`) sets it and wakes every connection through the hub.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// What connection tasks are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkState {
    /// Serve as usual.
    Serving,
    /// Connections idle since this time (the hub's clock, ms), with
    /// nothing in flight or queued, park; the others serve on. The idle
    /// ones move first, so the busy ones pause only for the last step.
    ParkingIdle(u64),
    /// Stop at the next message boundary with nothing queued, and wait.
    Parking,
    /// The new server holds every parked connection: end silently.
    Moved,
}

/// What a connection is doing, as far as parking cares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    /// When the client last sent a message (the hub's clock, ms; 0: never).
    pub(crate) last_read_ms: u64,
    /// Events of it no worker has acknowledged.
    pub(crate) inflight: u32,
    /// Output waits in its outbox.
    pub(crate) queued: bool,
}

impl ParkState {
    /// Whether a connection should head for its parking point now (it
    /// parks once at a message boundary with its output written). Only
    /// `Serving` never parks; while idle ones go first, a busy one serves
    /// on. `activity` is asked only then.
    pub(crate) fn parks(self, activity: impl FnOnce() -> Activity) -> bool {
        match self {
            ParkState::Serving => false,
            ParkState::ParkingIdle(since) => {
                let now = activity();
                now.last_read_ms <= since && now.inflight == 0 && !now.queued
            }
            ParkState::Parking | ParkState::Moved => true,
        }
    }
}

/// One parked connection, as the new server needs it.
#[derive(Debug)]
pub(crate) struct Parked {
    /// The socket's descriptor, not a duplicate: a duplicate per connection
    /// would double the descriptors a server needs for its connections just
    /// when it upgrades (10,000 connections against a limit of 20,000 did
    /// not park). Valid while the state is `Parking`: the parked task holds
    /// the socket and does nothing until the state changes.
    pub(crate) socket: RawFd,
    /// Bytes read from the socket and not yet parsed: the start of the
    /// messages after the boundary.
    pub(crate) leftover: Vec<u8>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Parking {
    state: watch::Sender<ParkState>,
    /// The state is not `Serving`: every connection looks at this once per
    /// turn of its loop, so serving costs one load, not the watch's lock.
    engaged: AtomicBool,
    parked: Mutex<HashMap<u64, Parked>>,
}

impl Default for Parking {
    fn default() -> Parking {
        Parking {
            state: watch::Sender::new(ParkState::Serving),
            engaged: AtomicBool::new(false),
            parked: Mutex::new(HashMap::new()),
        }
    }
}

impl Parking {
    pub(crate) fn state(&self) -> ParkState {
        if !self.engaged.load(Ordering::Acquire) {
            return ParkState::Serving;
        }
        *self.state.borrow()
    }

    /// Follows the state (the accept loop pauses while it is not Serving).
    pub(crate) fn watch(&self) -> watch::Receiver<ParkState> {
        self.state.subscribe()
    }

    /// Sets the state; the caller wakes the connections (`Hub::wake_all`).
    pub(crate) fn set(&self, state: ParkState) {
        self.state.send_replace(state);
        self.engaged.store(state != ParkState::Serving, Ordering::Release);
        if state == ParkState::Serving {
            self.lock().clear();
        }
    }

    /// A connection stopped where it can move.
    pub(crate) fn park(&self, conn: u64, parked: Parked) {
        self.lock().insert(conn, parked);
    }

    /// A parked connection that went on serving (aborted upgrade).
    pub(crate) fn unpark(&self, conn: u64) {
        self.lock().remove(&conn);
    }

    pub(crate) fn parked_count(&self) -> usize {
        self.lock().len()
    }

    /// Every parked connection, for the handover (the map is left empty).
    pub(crate) fn take(&self) -> HashMap<u64, Parked> {
        std::mem::take(&mut *self.lock())
    }

    /// The parked connections now, with their sockets and unread bytes
    /// (they stay parked).
    pub(crate) fn parked_now(&self) -> Vec<(u64, RawFd, Vec<u8>)> {
        self.lock().iter().map(|(conn, p)| (*conn, p.socket, p.leftover.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Parked>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection the new server took over, ready to serve (`conn::adopted`).
#[derive(Debug)]
pub(crate) struct Adopted {
    pub(crate) conn: u64,
    pub(crate) stream: tokio::net::TcpStream,
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) leftover: Vec<u8>,
    pub(crate) conn_shared: std::sync::Arc<crate::route::outbox::ConnShared>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(last_read_ms: u64, inflight: u32, queued: bool) -> impl FnOnce() -> Activity {
        move || Activity { last_read_ms, inflight, queued }
    }

    /// Idle ones go first: nothing sent since the mark, nothing in flight,
    /// nothing queued. Everyone parks in the last step; nobody while serving.
    #[test]
    fn only_idle_connections_park_while_idle_ones_go_first() {
        let idle_first = ParkState::ParkingIdle(1000);
        assert!(idle_first.parks(activity(0, 0, false)), "never sent anything");
        assert!(idle_first.parks(activity(1000, 0, false)), "last sent at the mark");
        assert!(!idle_first.parks(activity(1001, 0, false)), "sent after the mark");
        assert!(!idle_first.parks(activity(0, 1, false)), "an event in flight");
        assert!(!idle_first.parks(activity(0, 0, true)), "output queued");
        for busy in [activity(5000, 3, true), activity(0, 0, false)] {
            assert!(ParkState::Parking.parks(busy));
        }
        assert!(ParkState::Moved.parks(activity(5000, 3, true)));
        assert!(!ParkState::Serving.parks(|| panic!("not asked while serving")));
    }
}
