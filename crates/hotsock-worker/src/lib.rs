//! The hotsock worker SDK: implement [`App`], call [`run`] from `main`, and
//! the `hotsock` server runs your code in worker processes it can restart
//! and replace without dropping a client connection.
//!
//! ```no_run
//! use hotsock_worker::{App, Ctx, Message};
//!
//! struct Echo;
//!
//! impl App for Echo {
//!     async fn on_message(&self, ctx: &Ctx, message: Message) {
//!         if let Some(text) = message.text() {
//!             ctx.push(message.conn, format!("echo: {text}"));
//!         }
//!     }
//! }
//!
//! fn main() -> Result<(), hotsock_worker::Error> {
//!     hotsock_worker::run(Echo)
//! }
//! ```
//!
//! Guarantees the SDK gives your handlers: events of one connection run one
//! at a time, in the order the client sent them; events of different
//! connections run concurrently (up to `workers.max_concurrency`); a panic in
//! a handler is caught and logged with the connection id, and the worker
//! keeps serving. An event is acknowledged to the server when its handler
//! returns; if the process dies first, the event is redelivered to the
//! replacement with [`Message::redelivered`] (and friends) set.
#![deny(missing_docs)]

mod app;
mod cluster_table;
mod ctx;
mod runtime;
mod table;

pub use app::{App, Close, Decision, Finish, Handshake, Join, Leave, Message, Open, Payload, Task};
pub use bytes::Bytes;
pub use ctx::{Ctx, Reply, TaskHandle};
pub use hotsock_protocol::{
    ChannelError, ConnInfo, ENV_SERVER_PID, HandshakeRequest, Member, Position, PresenceEntry, Role, Subscribed,
};
pub use hotsock_table::{Row, TableError, Value};
pub use runtime::run;
pub use table::{Scope, Table};

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program was started by hand, not by `hotsock start`.
    #[error("this program is a hotsock worker: start it with `hotsock start -c <config>`, not directly")]
    NotUnderHotsock,
    /// The socket to the server failed.
    #[error("worker socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes this SDK cannot decode.
    #[error("protocol error from the server: {0}")]
    Protocol(#[from] hotsock_protocol::ProtocolError),
    /// The server speaks another protocol version.
    #[error(
        "the server speaks protocol version {server}, this worker's SDK speaks {sdk}; rebuild against a matching hotsock-worker"
    )]
    VersionMismatch {
        /// The server's version.
        server: u16,
        /// Ours.
        sdk: u16,
    },
    /// The server's first frame was not Hello.
    #[error("expected Hello from the server, got {0}")]
    NoHello(String),
    /// The server closed the socket before a request was answered.
    #[error("the server is gone")]
    Disconnected,
    /// `ctx.task()` was refused (queue full, no task workers).
    #[error("task refused: {0}")]
    TaskRefused(String),
    /// The task handler failed; the message is its panic.
    #[error("task failed: {0}")]
    TaskFailed(String),
    /// The shared tables could not be mapped.
    #[error("shared tables: {0}")]
    Tables(String),
    /// The server refused a channel request.
    #[error("channel request refused: {0}")]
    Channel(#[from] ChannelError),
}
