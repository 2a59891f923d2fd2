//! The network side: listening, one task per client connection, the HTTP
//! upgrade. The only place that knows the WebSocket library: everything
//! else sees whole messages and its own outbox type.

pub(crate) mod admit;
pub(crate) mod conn;
pub(crate) mod http;
pub(crate) mod listen;
pub(crate) mod park;
pub(crate) mod plain;
pub(crate) mod readahead;
pub(crate) mod tls;
