//! hotsock example: chat rooms on server-side channels.
//!
//! A page connects to `/?room=ROOM&name=NICK` (the browser client in
//! `clients/js` adds `&since=...` when it reconnects). The handshake checks
//! both (`params.rs`; a bad one gets a 400 saying why), records the nick in
//! the shared table `chatters` and subscribes the connection to the
//! channel `room:ROOM`:
//!
//! - **recovering** (the URL has a position for that channel): from that
//!   position, so the server replays exactly what the page missed, or
//!   reports `recovered = false` and the page reloads the recent history;
//! - **fresh**: from [`HISTORY_ON_JOIN`] publications before the room's
//!   latest offset (kept in the shared table `rooms`), so a newcomer sees
//!   the recent conversation from the channel's own history.
//!
//! Everything the page shows is a publication on the room's channel (the
//! server's JSON envelope carries offsets): chat lines, join and leave
//! notices with the presence list, typing signals (to everyone but the
//! typist). No worker memory is needed: membership is the server's and
//! nicks are in a shared table, so reloads and crashes lose nothing.

mod params;

use hotsock_worker::{App, Close, Ctx, Decision, Handshake, Join, Leave, Message, Position, Table, TableError, Value};
use serde_json::json;

use crate::params::{ROOM_PREFIX, channel};

/// Publications a fresh page is replayed on join. At most the config's
/// `channels.history_size` (200) and `channels.max_replay`, or the server
/// cannot replay and the page starts empty.
const HISTORY_ON_JOIN: u64 = 50;

struct Chat;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Connection → nick and room, shared by every worker (survives reloads).
fn chatters(ctx: &Ctx) -> Option<&Table> {
    ctx.table("chatters")
}

/// Room → the epoch and latest offset a worker saw published.
fn rooms(ctx: &Ctx) -> Option<&Table> {
    ctx.table("rooms")
}

fn nick_of(ctx: &Ctx, conn: u64) -> Option<String> {
    let row = chatters(ctx)?.get(&conn.to_string()).ok()??;
    row.str("nick").map(str::to_owned)
}

/// The nicks of a room's members, sorted, each once (a page that just
/// reconnected may briefly be there twice).
async fn presence(ctx: &Ctx, channel: &str, without: Option<u64>) -> Vec<String> {
    let Ok(members) = ctx.members(channel).await else { return Vec::new() };
    let mut nicks: Vec<String> =
        members.iter().filter(|m| Some(m.conn) != without).filter_map(|m| nick_of(ctx, m.conn)).collect();
    nicks.sort();
    nicks.dedup();
    nicks
}

/// Publishes to a room and records how far its channel got, for the next
/// fresh join. Two workers publishing at once may record out of order; a
/// lower head only makes a newcomer's replay a little longer.
async fn publish(ctx: &Ctx, room: &str, message: serde_json::Value, except: Option<u64>) {
    let text = message.to_string();
    let reply = match except {
        Some(conn) => ctx.publish_except(channel(room), text, conn),
        None => ctx.publish(channel(room), text),
    };
    match reply.await {
        Ok(position) => {
            if let Err(error) = record_head(ctx, room, position) {
                eprintln!("chat: recording the head of {room}: {error}");
            }
        }
        Err(error) => eprintln!("chat: publishing to {room}: {error}"),
    }
}

fn record_head(ctx: &Ctx, room: &str, position: Position) -> Result<(), TableError> {
    let Some(table) = rooms(ctx) else { return Ok(()) };
    let epoch = position.epoch as i64;
    if let Some(row) = table.get(room)?
        && row.int("epoch") == Some(epoch)
        && row.int("head").is_some_and(|head| head >= position.offset as i64)
    {
        return Ok(());
    }
    table.set(room, &[("epoch", Value::Int(epoch)), ("head", Value::Int(position.offset as i64))])
}

/// Where a fresh page starts: [`HISTORY_ON_JOIN`] before the room's latest
/// recorded offset, or nowhere for a room nobody spoke in yet.
fn fresh_start(ctx: &Ctx, room: &str) -> Option<Position> {
    let row = rooms(ctx)?.get(room).ok()??;
    let (epoch, head) = (row.int("epoch")? as u64, row.int("head")? as u64);
    Some(Position { epoch, offset: head.saturating_sub(HISTORY_ON_JOIN) })
}

/// Deletes the rows of connections that are not open. A row is normally
/// deleted in `on_close`; one whose client left between an accepted
/// handshake and the open gets no Close, so a full table is swept before
/// anyone is refused, rather than filling for good. A handshake being
/// accepted by another worker at that moment may lose its row too; its
/// page then gets "not in a room" answers: rare (a full table) and visible.
async fn sweep(ctx: &Ctx, table: &Table) {
    let Ok(open) = ctx.connections().await else { return };
    for (key, _) in table.iter() {
        let open = key.parse::<u64>().is_ok_and(|conn| open.binary_search(&conn).is_ok());
        if !open {
            let _ = table.delete(&key);
        }
    }
}

fn error(ctx: &Ctx, conn: u64, why: &str) {
    ctx.push(conn, json!({"kind": "error", "error": why}).to_string());
}

impl App for Chat {
    const HANDLES_HANDSHAKE: bool = true;
    const CHANNEL_EVENTS: bool = true;

    async fn on_handshake(&self, ctx: &Ctx, handshake: Handshake) -> Decision {
        let join = match params::Join::parse(&handshake.request) {
            Ok(join) => join,
            Err(why) => return Decision::reject(400, format!("{why}\n")),
        };
        let Some(table) = chatters(ctx) else { return Decision::reject(500, "no chatters table\n") };
        let row = [("nick", Value::Str(join.nick.clone())), ("room", Value::Str(join.room.clone()))];
        let key = handshake.conn.to_string();
        let mut stored = table.set(&key, &row);
        if let Err(TableError::TableFull { .. }) = stored {
            sweep(ctx, table).await;
            stored = table.set(&key, &row);
        }
        match stored {
            Ok(()) => {}
            Err(TableError::TableFull { .. }) => return Decision::reject(503, "the chat is full, retry later\n"),
            Err(error) => return Decision::reject(500, format!("{error}\n")),
        }
        let (conn, channel) = (handshake.conn, channel(&join.room));
        // Subscribed during the handshake, so the replay is queued before
        // anything the connection could see live: nothing missed between.
        let subscribed = match join.since.or_else(|| fresh_start(ctx, &join.room)) {
            // A position the server refuses (ahead of the head: a made-up
            // URL) just means a plain join.
            Some(from) => match ctx.subscribe_from(conn, &channel, from).await {
                Err(hotsock_worker::Error::Channel(hotsock_worker::ChannelError::AheadOfHead { .. })) => {
                    ctx.subscribe(conn, &channel).await
                }
                other => other,
            },
            None => ctx.subscribe(conn, &channel).await,
        };
        let subscribed = match subscribed {
            Ok(subscribed) => subscribed,
            Err(error) => {
                let _ = table.delete(&key);
                return Decision::reject(503, format!("cannot join {}: {error}\n", join.room));
            }
        };
        // Recorded before the accept, so before this member's join notice:
        // a newcomer who saw that notice finds the room's epoch here (the
        // publisher's own record may lag its delivery).
        let head = Position { epoch: subscribed.epoch, offset: subscribed.offset };
        if let Err(error) = record_head(ctx, &join.room, head) {
            eprintln!("chat: recording the head of {}: {error}", join.room);
        }
        Decision::accept()
    }

    async fn on_join(&self, ctx: &Ctx, join: Join) {
        let Some(room) = join.channel.strip_prefix(ROOM_PREFIX) else { return };
        let Some(nick) = nick_of(ctx, join.conn) else { return };
        let members = presence(ctx, &join.channel, None).await;
        publish(ctx, room, json!({"kind": "join", "nick": nick, "members": members}), None).await;
    }

    async fn on_leave(&self, ctx: &Ctx, leave: Leave) {
        let Some(room) = leave.channel.strip_prefix(ROOM_PREFIX) else { return };
        let Some(nick) = nick_of(ctx, leave.conn) else { return };
        let members = presence(ctx, &leave.channel, Some(leave.conn)).await;
        publish(ctx, room, json!({"kind": "leave", "nick": nick, "members": members}), None).await;
    }

    async fn on_message(&self, ctx: &Ctx, message: Message) {
        let conn = message.conn;
        let Some(request) = message.text().and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) else {
            return error(ctx, conn, "send JSON: {\"kind\":\"chat\",\"text\":\"...\"} or {\"kind\":\"typing\"}");
        };
        let Some(row) = chatters(ctx).and_then(|t| t.get(&conn.to_string()).ok().flatten()) else {
            return error(ctx, conn, "not in a room");
        };
        let (Some(nick), Some(room)) = (row.str("nick"), row.str("room")) else { return };
        match request["kind"].as_str() {
            Some("chat") => {
                let text = match params::check_text(request["text"].as_str().unwrap_or("")) {
                    Ok(text) => text,
                    Err(why) => return error(ctx, conn, &why),
                };
                let line = json!({"kind": "chat", "from": nick, "text": text, "at": now_ms()});
                publish(ctx, room, line, None).await;
            }
            // Ephemeral: the page throttles it and ignores old ones (the
            // history replays them too), so the timestamp matters.
            Some("typing") => {
                publish(ctx, room, json!({"kind": "typing", "from": nick, "at": now_ms()}), Some(conn)).await
            }
            _ => error(ctx, conn, "unknown kind: use chat or typing"),
        }
    }

    async fn on_close(&self, ctx: &Ctx, close: Close) {
        // The Leave events (and their notices, which read the nick) came
        // first; the row is no longer needed.
        if let Some(table) = chatters(ctx)
            && let Err(error) = table.delete(&close.conn.to_string())
        {
            eprintln!("chat: forgetting connection {}: {error}", close.conn);
        }
    }
}

fn main() {
    if let Err(error) = hotsock_worker::run(Chat) {
        eprintln!("chat worker: {error}");
        std::process::exit(1);
    }
}
