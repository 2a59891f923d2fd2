//! Routing: which slot each event goes to, which worker holds it, and what
//! waits for each client. Pure bookkeeping under one lock; no I/O, no
//! awaiting, no clock beyond what callers pass in.

pub(crate) mod event;
pub(crate) mod hub;
pub(crate) mod outbox;
pub(crate) mod slot;
