//! Routing: which slot each event goes to, which worker holds it, and what
//! waits for each client. Pure bookkeeping under one lock; no I/O, no
//! awaiting. The hub reads the clock only to age heartbeats and channel
//! histories; the modules under it take the time as a parameter.

pub(crate) mod channels;
pub(crate) mod event;
pub(crate) mod hub;
pub(crate) mod outbox;
pub(crate) mod slot;
pub(crate) mod tables;
