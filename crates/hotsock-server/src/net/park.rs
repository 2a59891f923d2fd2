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
    parked: Mutex<HashMap<u64, Parked>>,
}

impl Default for Parking {
    fn default() -> Parking {
        Parking { state: watch::Sender::new(ParkState::Serving), parked: Mutex::new(HashMap::new()) }
    }
}

impl Parking {
    pub(crate) fn state(&self) -> ParkState {
        *self.state.borrow()
    }

    /// Follows the state (the accept loop pauses while it is not Serving).
    pub(crate) fn watch(&self) -> watch::Receiver<ParkState> {
        self.state.subscribe()
    }

    /// Sets the state; the caller wakes the connections (`Hub::wake_all`).
    pub(crate) fn set(&self, state: ParkState) {
        self.state.send_replace(state);
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
