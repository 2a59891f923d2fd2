//! The user-facing surface: the [`App`] trait and the event types its
//! callbacks receive.

use std::future::Future;

use bytes::Bytes;
use hotsock_protocol::{HandshakeReply, HandshakeRequest};

use crate::Ctx;

/// Your service. Every callback has a default that does nothing, so
/// implement only what you need. Callbacks take `&self`: keep mutable state
/// behind a lock or in a shared table.
pub trait App: Send + Sync + 'static {
    /// Set to `true` when you implement [`App::on_handshake`]; otherwise the
    /// server accepts every well-formed upgrade without asking the worker.
    const HANDLES_HANDSHAKE: bool = false;

    /// Set to `true` when [`App::on_worker_stop`] returns state for the next
    /// worker of the same slot (the next generation after a reload, or the
    /// replacement after recycling). The server then stops sending this
    /// worker events, lets it finish, takes its state, and starts the
    /// successor with it; events of that slot wait meanwhile. If the
    /// successor fails to start, this worker simply receives events again.
    const HANDOFF: bool = false;

    /// Set to `true` to get [`App::on_join`] and [`App::on_leave`] when a
    /// connection enters or leaves a channel (off by default: most apps
    /// know, since they subscribe).
    const CHANNEL_EVENTS: bool = false;

    /// Runs once when the worker starts, before it tells the server it is
    /// ready: load configuration and code-dependent state here. A worker
    /// that panics here never receives an event (and a reload to its code
    /// is aborted). `handoff` is what the slot's previous worker returned
    /// from `on_worker_stop`, when both have [`App::HANDOFF`].
    fn on_worker_start(&self, ctx: &Ctx, handoff: Option<Bytes>) -> impl Future<Output = ()> + Send {
        let _ = (ctx, handoff);
        async {}
    }

    /// Runs once when the worker is being replaced or stopped, after its
    /// last event. With [`App::HANDOFF`] the returned state (at most
    /// `reload.handoff_max_bytes`) goes to the next worker of the slot.
    fn on_worker_stop(&self, ctx: &Ctx) -> impl Future<Output = Option<Bytes>> + Send {
        let _ = ctx;
        async { None }
    }

    /// Decides on an upgrade request (only when `HANDLES_HANDSHAKE`).
    fn on_handshake(&self, ctx: &Ctx, handshake: Handshake) -> impl Future<Output = Decision> + Send {
        let _ = (ctx, handshake);
        async { Decision::accept() }
    }

    /// A connection is open; pushes to it are delivered from now on.
    fn on_open(&self, ctx: &Ctx, open: Open) -> impl Future<Output = ()> + Send {
        let _ = (ctx, open);
        async {}
    }

    /// One whole message from a client.
    fn on_message(&self, ctx: &Ctx, message: Message) -> impl Future<Output = ()> + Send {
        let _ = (ctx, message);
        async {}
    }

    /// The connection is gone; it is the last event of the connection.
    fn on_close(&self, ctx: &Ctx, close: Close) -> impl Future<Output = ()> + Send {
        let _ = (ctx, close);
        async {}
    }

    /// A connection joined a channel (with [`App::CHANNEL_EVENTS`]). Runs
    /// in the connection's order, like its messages.
    fn on_join(&self, ctx: &Ctx, join: Join) -> impl Future<Output = ()> + Send {
        let _ = (ctx, join);
        async {}
    }

    /// A connection left a channel (with [`App::CHANNEL_EVENTS`]):
    /// unsubscribed, or closed (then before its [`App::on_close`]).
    fn on_leave(&self, ctx: &Ctx, leave: Leave) -> impl Future<Output = ()> + Send {
        let _ = (ctx, leave);
        async {}
    }

    /// Task workers (`workers.task_count`) run tasks here; the returned
    /// bytes go back to the worker that called [`Ctx::task`]. A task may run
    /// again (`redelivered`) if its task worker died; its result is
    /// delivered once.
    fn on_task(&self, ctx: &Ctx, task: Task) -> impl Future<Output = Bytes> + Send {
        let _ = (ctx, task);
        async { Bytes::new() }
    }

    /// The result of a task nobody awaits: its [`TaskHandle`](crate::TaskHandle)
    /// was dropped, or the worker that dispatched it is gone (`orphaned`:
    /// this worker got it as its slot's successor).
    fn on_finish(&self, ctx: &Ctx, finish: Finish) -> impl Future<Output = ()> + Send {
        let _ = (ctx, finish);
        async {}
    }
}

/// A connection joined a channel.
#[derive(Debug, Clone)]
pub struct Join {
    /// Connection id.
    pub conn: u64,
    /// A previous worker received this event and died before finishing.
    pub redelivered: bool,
    /// The channel.
    pub channel: String,
}

/// A connection left a channel.
#[derive(Debug, Clone)]
pub struct Leave {
    /// Connection id.
    pub conn: u64,
    /// A previous worker received this event and died before finishing.
    pub redelivered: bool,
    /// The channel.
    pub channel: String,
}

/// A task to run (task workers).
#[derive(Debug, Clone)]
pub struct Task {
    /// Task id, as `ctx.task()` returned it.
    pub id: u64,
    /// A task worker died running it before.
    pub redelivered: bool,
    /// What the dispatcher sent.
    pub payload: Bytes,
}

/// A task's result, for [`App::on_finish`].
#[derive(Debug, Clone)]
pub struct Finish {
    /// Task id.
    pub task: u64,
    /// The dispatcher is gone; this worker is its slot's successor.
    pub orphaned: bool,
    /// The task handler failed (the payload is its panic message).
    pub failed: bool,
    /// The result.
    pub payload: Bytes,
}

/// An upgrade request to decide on.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The connection id it will have.
    pub conn: u64,
    /// A previous worker received this event and died before finishing.
    pub redelivered: bool,
    /// Path, query, headers and peer address.
    pub request: HandshakeRequest,
}

/// The answer to a [`Handshake`].
#[derive(Debug, Clone)]
pub struct Decision(pub(crate) HandshakeReply);

impl Decision {
    /// Accept the upgrade.
    pub fn accept() -> Decision {
        Decision(HandshakeReply { status: 101, ..HandshakeReply::default() })
    }

    /// Refuse with an HTTP status (4xx or 5xx; anything else becomes 403)
    /// and a short body the client sees.
    pub fn reject(status: u16, body: impl Into<Bytes>) -> Decision {
        Decision(HandshakeReply { status, body: body.into(), ..HandshakeReply::default() })
    }

    /// On accept, bind the connection to `uid` (see [`Ctx::bind`]).
    pub fn bind(mut self, uid: u64) -> Decision {
        self.0.uid = Some(uid);
        self
    }

    /// Adds a response header (for example `Sec-WebSocket-Protocol`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Decision {
        self.0.headers.push((name.into(), value.into()));
        self
    }
}

/// A connection was opened.
#[derive(Debug, Clone, Copy)]
pub struct Open {
    /// Connection id.
    pub conn: u64,
    /// A previous worker received this event and died before finishing.
    pub redelivered: bool,
}

/// A message from a client.
#[derive(Debug, Clone)]
pub struct Message {
    /// Connection id.
    pub conn: u64,
    /// A previous worker received this event and died before finishing:
    /// its handler may already have run once.
    pub redelivered: bool,
    /// Whether the client sent a binary message.
    pub binary: bool,
    /// The payload (UTF-8 when not binary).
    pub data: Bytes,
}

impl Message {
    /// The text of a text message; `None` for binary ones.
    pub fn text(&self) -> Option<&str> {
        if self.binary { None } else { std::str::from_utf8(&self.data).ok() }
    }
}

/// A connection closed.
#[derive(Debug, Clone)]
pub struct Close {
    /// Connection id.
    pub conn: u64,
    /// A previous worker received this event and died before finishing.
    pub redelivered: bool,
    /// WebSocket close code (1006: the client vanished without one).
    pub code: u16,
    /// Close reason, possibly empty.
    pub reason: String,
}

/// What to send: text (from `String`/`&str`) or binary (from `Bytes` or
/// `Vec<u8>`).
#[derive(Debug, Clone)]
pub enum Payload {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Payload {
    pub(crate) fn into_parts(self) -> (bool, Bytes) {
        match self {
            Payload::Text(text) => (false, Bytes::from(text)),
            Payload::Binary(data) => (true, data),
        }
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Payload {
        Payload::Text(text)
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Payload {
        Payload::Text(text.to_owned())
    }
}

impl From<Bytes> for Payload {
    fn from(data: Bytes) -> Payload {
        Payload::Binary(data)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(data: Vec<u8>) -> Payload {
        Payload::Binary(Bytes::from(data))
    }
}
