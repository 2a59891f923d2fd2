//! hotsock's flagship example: the game-matching service from the seed
//! documents. Players connect to `/match` with a token their game backend
//! issued; the handshake authenticates them; they wait in a pool kept in the
//! shared table `players` (so reloads and worker crashes lose nobody); when
//! a compatible player is there (the rule lives in `rules.rs`, the code to
//! hot-update), both get `{"type":"matched",...}` and are closed with 1000.
//! A player waiting longer than `MATCH_TIMEOUT_MS` gets `{"type":"timeout"}`;
//! one who enters the pool without a partner first gets `{"type":"waiting"}`.
//!
//! Environment: `MATCH_SECRET` (the HMAC key shared with the game backend;
//! unset, a development secret is used with a warning), `MATCH_TIMEOUT_MS` (default 30000), `MATCH_RULES_FILE`
//! (optional: `opposite-gender` or `rating-window`, read at worker start).

mod auth;
mod fault;
mod index;
mod pool;
mod rules;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hotsock_worker::{App, Bytes, Close, Ctx, Decision, Handshake, Open, Table, TableError, Value};
use serde_json::json;

use crate::pool::{DONE, MATCHED, Player, PoolLock, RESERVED, WAITING};
use crate::rules::RuleSet;

/// The secret used when `MATCH_SECRET` is unset, so the example runs on its
/// defaults; the page's default matches it. Never for production.
const DEV_SECRET: &str = "dev-secret";
/// How often each worker looks for timed-out players and for pairs a
/// time-widening rule now allows.
const JANITOR_EVERY: Duration = Duration::from_millis(200);
/// A result still not followed by its connection's close after this is sent
/// again.
const RESEND_AFTER_MS: i64 = 1_000;
/// A handshake that never became an open connection (the client left during
/// the upgrade) is forgotten after this: far longer than any Open can lag.
const RESERVED_MAX_MS: i64 = 120_000;
/// A player row this much older than its last change, whose uid is
/// connected nowhere (`ctx.presence`), is left over (its node died, or its
/// close was lost) and a new handshake of the uid takes it over instead of
/// getting 409. Far longer than presence takes to follow a handshake.
const LEFTOVER_AFTER_MS: i64 = 10_000;
/// Reservations are looked for by a full scan, without the lock, only
/// every this many janitor passes (every 5 s): the only scan left, and
/// `RESERVED_MAX_MS` makes it rare work.
const RESERVED_SWEEP_EVERY: u32 = 25;

struct Matchmaker {
    secret: Vec<u8>,
    timeout_ms: i64,
    rules: RuleSet,
    /// Connection → uid, for `on_close` (the server forgets the binding
    /// before the Close event).
    uids: Mutex<HashMap<u64, String>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn players(ctx: &Ctx) -> Option<&Table> {
    ctx.table("players")
}

/// The pool's index (`index.rs`).
fn index(ctx: &Ctx) -> Option<&Table> {
    ctx.table("pool")
}

/// A message to send once the pool lock is released: the player's result,
/// then a close. Sent to the player's uid, not its connection: with a
/// cluster-wide pool the partner may be connected to another node (a uid
/// has one connection here: a second handshake is refused with 409).
struct Delivery {
    uid: u64,
    message: String,
    reason: &'static str,
}

impl Delivery {
    fn send(self, ctx: &Ctx) {
        ctx.send_to_uid(self.uid, self.message);
        ctx.close_uid(self.uid, 1000, self.reason);
    }

    fn of(player: &Player) -> Delivery {
        let reason = if player.state == MATCHED { "matched" } else { "no match in time" };
        Delivery { uid: player.id() as u64, message: player.result.clone(), reason }
    }
}

impl Matchmaker {
    /// With the lock held: records the match in both rows (conn, result,
    /// then state) and in the index, and returns what to send. Every result
    /// is written before any state, so a worker dying half-way leaves at
    /// most one `MATCHED` row whose peer's result already names it, which
    /// the index rebuild completes. A row is deleted only when its player's
    /// connection closes, so until then the result can be sent again.
    fn settle_pair(&self, lock: &PoolLock<'_>, a: &Player, b: &Player, now: i64) -> Result<Vec<Delivery>, TableError> {
        let table = lock.players;
        let (low, high) = if a.uid <= b.uid { (a, b) } else { (b, a) };
        let room = format!("room-{}-{}", low.uid, high.uid);
        let mut deliveries = Vec::new();
        for (me, peer) in [(a, b), (b, a)] {
            let message = json!({"type": "matched", "peer": peer.to_json(), "room": room, "rules": self.rules.name()})
                .to_string();
            table.set(
                &me.uid,
                &[
                    ("conn", Value::Int(me.conn as i64)),
                    ("node", Value::Str(me.node.clone())),
                    ("result", Value::Str(message.clone())),
                    ("changed", Value::Int(now)),
                ],
            )?;
            deliveries.push(Delivery { uid: me.id() as u64, message, reason: "matched" });
        }
        for player in [a, b] {
            if player.state == WAITING {
                index::leave_queues(lock, player)?;
            }
        }
        table.set(&a.uid, &[("state", Value::Int(MATCHED))])?;
        fault::point("settle", a.id());
        table.set(&b.uid, &[("state", Value::Int(MATCHED))])?;
        index::settle(lock, a.id())?;
        index::settle(lock, b.id())?;
        Ok(deliveries)
    }

    async fn arrive(&self, ctx: &Ctx, tables: (&Table, &Table), uid: &str, conn: u64) -> Result<(), TableError> {
        let lock = pool::lock(tables.0, tables.1).await?;
        let table = lock.players;
        let Some(row) = table.get(uid)? else {
            // Never silent: a player without a reservation is told so.
            drop(lock);
            let message = json!({"type": "error", "message": "no reservation for this player; reconnect"});
            ctx.push(conn, message.to_string());
            ctx.close(conn, 1011, "no reservation");
            return Ok(());
        };
        let mut me = Player::from_row(uid, &row);
        me.conn = conn;
        me.node = pool::this_node();
        let deliveries = match me.state {
            RESERVED => {
                let now = now_ms();
                match index::claim_partner(&lock, self.rules, &me, now)? {
                    Some(partner) => self.settle_pair(&lock, &me, &partner, now)?,
                    None => {
                        // The state first: if this worker dies while linking,
                        // the rebuild finds a waiting player to put back.
                        let node = Value::Str(me.node.clone());
                        table.set(
                            uid,
                            &[("conn", Value::Int(conn as i64)), ("node", node), ("state", Value::Int(WAITING))],
                        )?;
                        me.state = WAITING;
                        index::enter(&lock, &me)?;
                        // In the pool: tell the player (not a result, so no close).
                        let waiting = json!({"type": "waiting", "rules": self.rules.name()}).to_string();
                        drop(lock);
                        ctx.push(conn, waiting);
                        return Ok(());
                    }
                }
            }
            // A redelivered Open (the worker that first ran it was killed):
            // send the result again; the first may have died with it.
            MATCHED | DONE => vec![Delivery::of(&me)],
            _ => Vec::new(),
        };
        drop(lock);
        for delivery in deliveries {
            delivery.send(ctx);
        }
        Ok(())
    }

    /// Times players out, retries pairs (for rules that widen with waiting
    /// time), and re-sends results whose connection is still open after a
    /// second (the worker that sent them may have been killed first). Any
    /// worker's janitor serves every player. Each part walks the index from
    /// its oldest end and stops at the first player with nothing due, so a
    /// pass costs what it does, not the pool's size (except the retries of
    /// `rating-window`, which must look at every waiting player).
    async fn janitor(&self, tables: (&Table, &Table), pass: u32) -> Result<Vec<Delivery>, TableError> {
        if pass.is_multiple_of(RESERVED_SWEEP_EVERY) {
            self.forget_stale_reservations(tables).await?;
        }
        let lock = pool::lock(tables.0, tables.1).await?;
        let table = lock.players;
        let now = now_ms();
        let mut deliveries = Vec::new();
        for head in index::queue_heads(&lock)? {
            let mut next = Some(head);
            while let Some(player) = next.take() {
                lock.keep()?;
                let waited = now - player.since;
                if player.state != WAITING || waited < self.timeout_ms {
                    break;
                }
                let message = json!({"type": "timeout", "waited_ms": waited}).to_string();
                table.set(&player.uid, &[("result", Value::Str(message.clone())), ("changed", Value::Int(now))])?;
                index::leave_queues(&lock, &player)?;
                table.set(&player.uid, &[("state", Value::Int(DONE))])?;
                index::settle(&lock, player.id())?;
                deliveries.push(Delivery { uid: player.id() as u64, message, reason: "no match in time" });
                next = pool::player(table, player.next)?;
            }
        }
        if self.rules == RuleSet::RatingWindow {
            for uid in index::waiting_uids(&lock)? {
                lock.keep()?;
                // Read again: this pass may have matched it already.
                let Some(player) = pool::player(table, uid)? else { continue };
                if player.state != WAITING {
                    continue;
                }
                if let Some(partner) = index::claim_partner(&lock, self.rules, &player, now)? {
                    deliveries.extend(self.settle_pair(&lock, &player, &partner, now)?);
                }
            }
        }
        while let Some(player) = index::oldest_settled(&lock)? {
            lock.keep()?;
            if now - player.changed < RESEND_AFTER_MS {
                break;
            }
            table.set(&player.uid, &[("changed", Value::Int(now))])?;
            index::unsettle(&lock, player.id())?;
            index::settle(&lock, player.id())?;
            deliveries.push(Delivery::of(&player));
        }
        drop(lock);
        Ok(deliveries)
    }

    /// Deletes reservations whose connection never opened. Found by a scan
    /// without the lock (reads take none), then each checked again under it.
    async fn forget_stale_reservations(&self, tables: (&Table, &Table)) -> Result<(), TableError> {
        let now = now_ms();
        let stale: Vec<String> = pool::players(tables.0)?
            .into_iter()
            .filter(|p| p.state == RESERVED && now - p.since >= RESERVED_MAX_MS)
            .map(|p| p.uid)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let lock = pool::lock(tables.0, tables.1).await?;
        for uid in stale {
            if let Some(row) = lock.players.get(&uid)?
                && row.int("state") == Some(RESERVED)
            {
                lock.players.delete(&uid)?;
            }
        }
        Ok(())
    }
}

impl App for Matchmaker {
    const HANDLES_HANDSHAKE: bool = true;

    async fn on_worker_start(&self, ctx: &Ctx, _handoff: Option<Bytes>) {
        pool::set_node(ctx.node());
        let table = players(ctx).expect("the config declares [tables.players]");
        index(ctx).expect("the config declares [tables.pool]");
        pool::init(table).expect("the players table has room for the lock row");
        let ctx = ctx.clone();
        let app = Matchmaker { uids: Mutex::new(HashMap::new()), ..self.clone_settings() };
        tokio::spawn(async move {
            let (Some(table), Some(index)) = (players(&ctx), index(&ctx)) else { return };
            let mut pass = 0u32;
            loop {
                tokio::time::sleep(JANITOR_EVERY).await;
                pass = pass.wrapping_add(1);
                match app.janitor((table, index), pass).await {
                    Ok(deliveries) => deliveries.into_iter().for_each(|d| d.send(&ctx)),
                    Err(error) => eprintln!("matchmaker janitor: {error}"),
                }
            }
        });
    }

    async fn on_handshake(&self, ctx: &Ctx, handshake: Handshake) -> Decision {
        let request = &handshake.request;
        if request.path.split('?').next() != Some("/match") {
            return Decision::reject(404, "connect to /match?uid=..&gender=m|f&game=..&token=..\n");
        }
        let params = match auth::Params::parse(request) {
            Ok(params) => params,
            Err(why) => return Decision::reject(400, format!("{why}\n")),
        };
        if !auth::valid(&self.secret, params.uid, request.query("token")) {
            return Decision::reject(401, "missing or bad token\n");
        }
        let Some(table) = players(ctx) else { return Decision::reject(500, "no players table\n") };
        let uid = params.uid.to_string();
        let row = [
            ("state", Value::Int(RESERVED)),
            ("conn", Value::Int(handshake.conn as i64)),
            ("node", Value::Str(pool::this_node())),
            ("since", Value::Int(now_ms())),
            ("rating", Value::Int(params.rating)),
            ("gender", Value::Str(params.gender)),
            ("game", Value::Str(params.game)),
            ("name", Value::Str(params.name)),
        ];
        let mut inserted = table.insert(&uid, &row);
        if matches!(inserted, Ok(false)) && !handshake.redelivered && self.forget_leftover(ctx, params.uid).await {
            inserted = table.insert(&uid, &row);
        }
        match inserted {
            Ok(true) => Decision::accept().bind(params.uid),
            // A redelivered handshake finds its own reservation.
            Ok(false) if handshake.redelivered => Decision::accept().bind(params.uid),
            Ok(false) => Decision::reject(409, "this uid is already connected\n"),
            Err(TableError::TableFull { .. }) => Decision::reject(503, "matchmaking is full, retry later\n"),
            Err(error) => Decision::reject(500, format!("{error}\n")),
        }
    }

    async fn on_open(&self, ctx: &Ctx, open: Open) {
        let Ok(Some(info)) = ctx.conn_info(open.conn).await else { return };
        let Some(uid) = info.uid.map(|u| u.to_string()) else { return };
        self.uids.lock().unwrap_or_else(|p| p.into_inner()).insert(open.conn, uid.clone());
        let (Some(table), Some(index)) = (players(ctx), index(ctx)) else { return };
        if let Err(error) = self.arrive(ctx, (table, index), &uid, open.conn).await {
            ctx.push(open.conn, json!({"type": "error", "message": error.to_string()}).to_string());
            ctx.close(open.conn, 1011, "matchmaking error");
        }
    }

    async fn on_close(&self, ctx: &Ctx, close: Close) {
        let (Some(table), Some(index)) = (players(ctx), index(ctx)) else { return };
        let uid = self.uids.lock().unwrap_or_else(|p| p.into_inner()).remove(&close.conn);
        // Another worker (before a reload) may have seen the open: find the
        // player by connection then.
        let node = pool::this_node();
        let uid = uid.or_else(|| {
            let players = pool::players(table).unwrap_or_default();
            players.into_iter().find(|p| p.conn == close.conn && p.node == node).map(|p| p.uid)
        });
        let Some(uid) = uid else { return };
        let Ok(lock) = pool::lock(table, index).await else { return };
        // The connection is gone, whatever the state: a waiting player
        // leaves the pool at once, a finished one's result is no longer
        // needed. This is the only place rows of open players are deleted.
        if let Ok(Some(row)) = table.get(&uid)
            && row.int("conn") == Some(close.conn as i64)
            && row.str("node") == Some(node.as_str())
        {
            let player = Player::from_row(&uid, &row);
            if let Err(error) = remove_player(&lock, &player) {
                eprintln!("matchmaker: removing player {uid}: {error}");
            }
        }
        drop(lock);
    }
}

impl Matchmaker {
    /// Removes `uid`'s row if it is left over: old, and the uid connected
    /// nowhere in the cluster. Whether it did.
    async fn forget_leftover(&self, ctx: &Ctx, uid: u64) -> bool {
        let (Some(table), Some(index)) = (players(ctx), index(ctx)) else { return false };
        let key = uid.to_string();
        let old = |player: &Player| now_ms() - player.changed.max(player.since) >= LEFTOVER_AFTER_MS;
        match table.get(&key) {
            Ok(Some(row)) if old(&Player::from_row(&key, &row)) => {}
            _ => return false,
        }
        // Unknown (the cluster is unreachable) is not "nowhere".
        match ctx.presence(uid).await {
            Ok(entries) if entries.iter().all(|e| e.conns.is_empty()) => {}
            _ => return false,
        }
        let Ok(lock) = pool::lock(table, index).await else { return false };
        let Ok(Some(row)) = table.get(&key) else { return false };
        let player = Player::from_row(&key, &row);
        if !old(&player) {
            return false;
        }
        eprintln!("matchmaker: player {uid}'s row is left over (connected nowhere); a new handshake takes it over");
        remove_player(&lock, &player).is_ok()
    }

    fn clone_settings(&self) -> Matchmaker {
        Matchmaker {
            secret: self.secret.clone(),
            timeout_ms: self.timeout_ms,
            rules: self.rules,
            uids: Mutex::new(HashMap::new()),
        }
    }
}

/// With the lock held: takes a player out of the index and deletes its row.
fn remove_player(lock: &PoolLock<'_>, player: &Player) -> Result<(), TableError> {
    match player.state {
        WAITING => index::leave_queues(lock, player)?,
        MATCHED | DONE => index::unsettle(lock, player.id())?,
        _ => {}
    }
    lock.players.delete(&player.uid).map(|_| ())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `matchmaker token UID`: what a game backend would issue for UID.
    if args.get(1).map(String::as_str) == Some("token") {
        let Some(uid) = args.get(2).and_then(|u| u.parse().ok()) else {
            eprintln!("usage: [MATCH_SECRET=...] matchmaker token UID");
            std::process::exit(2);
        };
        let secret = std::env::var("MATCH_SECRET").unwrap_or_else(|_| DEV_SECRET.to_owned());
        println!("{}", auth::token(secret.as_bytes(), uid));
        return;
    }
    let secret = std::env::var("MATCH_SECRET").unwrap_or_else(|_| {
        eprintln!(
            "matchmaker: MATCH_SECRET is not set; using the development secret \"{DEV_SECRET}\". \
             Anyone can sign tokens with it: set MATCH_SECRET in production."
        );
        DEV_SECRET.to_owned()
    });
    let timeout_ms = std::env::var("MATCH_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    let app = Matchmaker {
        secret: secret.into_bytes(),
        timeout_ms,
        rules: RuleSet::active(),
        uids: Mutex::new(HashMap::new()),
    };
    if let Err(error) = hotsock_worker::run(app) {
        eprintln!("matchmaker worker: {error}");
        std::process::exit(1);
    }
}
