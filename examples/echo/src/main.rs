//! The echo example: replies to each text message with `<prefix><message>`.
//!
//! - The prefix is read once, at worker start, from the file named by
//!   `ECHO_PREFIX_FILE` (default `v1:` when unset). Changing the file and
//!   reloading is the smallest possible "new code" for reload tests.
//! - `sleep:<ms>:<rest>` is answered with `<prefix><rest>` after `<ms>`
//!   milliseconds: simulated in-flight work.
//! - A reply to a redelivered event (its first worker died before finishing)
//!   starts with `[redelivered]`, so tests can tell which answers may repeat.
//! - A handshake with `?deny=1` is refused with 403.
//! - Binary messages are echoed back unchanged.

use std::sync::RwLock;
use std::time::Duration;

use hotsock_worker::{App, Bytes, Ctx, Decision, Handshake, Message};

/// Longest sleep a client may ask for, so a typo cannot park a handler for
/// hours.
const SLEEP_MS_MAX: u64 = 60_000;

struct Echo {
    prefix: RwLock<String>,
}

impl App for Echo {
    const HANDLES_HANDSHAKE: bool = true;

    async fn on_worker_start(&self, _ctx: &Ctx, _handoff: Option<Bytes>) {
        let prefix = match std::env::var("ECHO_PREFIX_FILE") {
            Ok(path) => match std::fs::read_to_string(&path) {
                Ok(text) => text.trim_end_matches(['\n', '\r']).to_owned(),
                Err(error) => panic!("cannot read ECHO_PREFIX_FILE {path}: {error}"),
            },
            Err(_) => "v1:".to_owned(),
        };
        *self.prefix.write().unwrap_or_else(|p| p.into_inner()) = prefix;
    }

    async fn on_handshake(&self, _ctx: &Ctx, handshake: Handshake) -> Decision {
        if handshake.request.query("deny") == Some("1") {
            Decision::reject(403, "denied by the echo example (?deny=1)\n")
        } else {
            Decision::accept()
        }
    }

    async fn on_message(&self, ctx: &Ctx, message: Message) {
        let Some(text) = message.text() else {
            ctx.push(message.conn, message.data.clone());
            return;
        };
        let prefix = self.prefix.read().unwrap_or_else(|p| p.into_inner()).clone();
        let body = match parse_sleep(text) {
            Some((ms, rest)) => {
                tokio::time::sleep(Duration::from_millis(ms.min(SLEEP_MS_MAX))).await;
                rest
            }
            None => text,
        };
        let mark = if message.redelivered { "[redelivered]" } else { "" };
        ctx.push(message.conn, format!("{mark}{prefix}{body}"));
    }
}

/// `sleep:<ms>:<rest>` → `(ms, rest)`.
fn parse_sleep(text: &str) -> Option<(u64, &str)> {
    let rest = text.strip_prefix("sleep:")?;
    let (ms, rest) = rest.split_once(':')?;
    Some((ms.parse().ok()?, rest))
}

fn main() {
    if let Err(error) = hotsock_worker::run(Echo { prefix: RwLock::new(String::new()) }) {
        eprintln!("echo worker: {error}");
        std::process::exit(1);
    }
}
