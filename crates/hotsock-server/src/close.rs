//! Every close the server itself initiates, with its code and reason. A
//! reload, rollback, recycle, drain or crash is not among them: those never
//! close a client connection.

/// Graceful stop (going away).
pub(crate) const SERVER_STOPPING: (u16, &str) = (1001, "server shutting down");
/// A WebSocket protocol violation by the client.
pub(crate) const PROTOCOL_ERROR: (u16, &str) = (1002, "protocol error");
/// A text message that is not UTF-8.
pub(crate) const INVALID_UTF8: (u16, &str) = (1007, "invalid UTF-8 in text message");
/// More output waiting than `limits.output_buffer_bytes` behind a client
/// that does not read (policy violation: it does not read what it asked for).
pub(crate) const SLOW_READER: (u16, &str) = (1008, "output buffer full: client is not reading");
/// A message over `limits.max_message_bytes`.
pub(crate) const MESSAGE_TOO_BIG: (u16, &str) = (1009, "message too big");
/// A poison event: it was running in `workers.max_redeliveries` + 1 workers
/// that crashed, and was dropped (internal error).
pub(crate) const POISON_EVENT: (u16, &str) = (1011, "an event of this connection crashed the worker");
