//! The hub's lock, and the direct writes that follow it.
//!
//! Messages for idle connections are written to their sockets by the
//! thread that queued them (`ConnShared::offer`, `write_out`), but never
//! under the hub's lock: a send on loopback runs the receiver's TCP work
//! too, and every connection's events wait for this lock. So the hub notes
//! each connection due for a write in a list of its thread's, and the
//! guard writes them out when it lets go of the lock.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, MutexGuard};

use super::HubState;
use crate::route::outbox::ConnShared;

/// Above this, the list's memory is given back after a write-out (one
/// publication to a large channel).
const DUE_KEEP_MAX: usize = 1024;

thread_local! {
    /// Connections this thread queued a message for under the hub's lock,
    /// to write out once it has let go.
    static DUE: RefCell<Vec<Arc<ConnShared>>> = const { RefCell::new(Vec::new()) };
}

/// Notes `conn` for a write-out when this thread's hub guard goes.
pub(super) fn due(conn: &Arc<ConnShared>) {
    DUE.with(|due| due.borrow_mut().push(conn.clone()));
}

/// The hub's state, locked; on drop, unlocks and then writes out what was
/// queued under it (see the module docs).
pub(super) struct HubGuard<'a> {
    state: Option<MutexGuard<'a, HubState>>,
}

impl<'a> HubGuard<'a> {
    pub(super) fn new(state: MutexGuard<'a, HubState>) -> HubGuard<'a> {
        HubGuard { state: Some(state) }
    }
}

impl Deref for HubGuard<'_> {
    type Target = HubState;

    fn deref(&self) -> &HubState {
        match &self.state {
            Some(state) => state,
            None => unreachable!("the state is taken only in drop"),
        }
    }
}

impl DerefMut for HubGuard<'_> {
    fn deref_mut(&mut self) -> &mut HubState {
        match &mut self.state {
            Some(state) => state,
            None => unreachable!("the state is taken only in drop"),
        }
    }
}

impl Drop for HubGuard<'_> {
    fn drop(&mut self) {
        drop(self.state.take());
        // Most locks queue nothing: one look at the list, no other work.
        let due = DUE.try_with(|due| {
            let mut due = due.try_borrow_mut().ok()?;
            (!due.is_empty()).then(|| std::mem::take(&mut *due))
        });
        let Ok(Some(due)) = due else { return };
        let mut out = WriteOut { due, next: 0 };
        // Unwinding, write nothing: the tasks write their own output.
        out.run(std::thread::panicking());
        // Give the list's memory back for the next time, unless it grew
        // large.
        let mut list = std::mem::take(&mut out.due);
        list.clear();
        if list.capacity() <= DUE_KEEP_MAX {
            let _ = DUE.try_with(|due| {
                if let Ok(mut due) = due.try_borrow_mut()
                    && due.is_empty()
                {
                    *due = list;
                }
            });
        }
    }
}

/// The connections due for a write-out; if a write-out panics, the ones
/// after it are woken instead, so that nothing is left queued unseen.
struct WriteOut {
    due: Vec<Arc<ConnShared>>,
    next: usize,
}

impl WriteOut {
    fn run(&mut self, wake_only: bool) {
        while let Some(conn) = self.due.get(self.next) {
            self.next += 1;
            if wake_only {
                conn.wake_for_output();
            } else {
                conn.write_out();
            }
        }
    }
}

impl Drop for WriteOut {
    fn drop(&mut self) {
        for conn in self.due.iter().skip(self.next) {
            conn.wake_for_output();
        }
    }
}
