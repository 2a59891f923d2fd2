//! hotsock's flagship example: the game-matching service from the seed
//! documents. Players connect to `/match` with a token their game backend
//! issued; the handshake authenticates them; they wait in a pool kept in the
//! shared table `players` (so reloads and worker crashes lose nobody); when
//! a compatible player is there (the rule lives in `rules.rs`, the code to
//! hot-update), both get `{"type":"matched",...}` and are closed with 1000.
//! A player waiting longer than `MATCH_TIMEOUT_MS` gets `{"type":"timeout"}`.
//!
//! Environment: `MATCH_SECRET` (the HMAC key shared with the game backend;
//! unset, a development secret is used with a warning), `MATCH_TIMEOUT_MS` (default 30000), `MATCH_RULES_FILE`
//! (optional: `opposite-gender` or `rating-window`, read at worker start).

mod auth;
mod pool;
mod rules;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hotsock_worker::{App, Bytes, Close, Ctx, Decision, Handshake, Open, Table, TableError, Value};
use serde_json::json;

use crate::pool::{DONE, MATCHED, Player, RESERVED, WAITING};
use crate::rules::RuleSet;

/// The secret used when `MATCH_SECRET` is unset, so the example runs on its
/// defaults; the page's default matches it. Never for production.
const DEV_SECRET: &str = "dev-secret";
/// How often each worker looks for timed-out players and for pairs a
/// time-widening rule now allows.
const JANITOR_EVERY: Duration = Duration::from_millis(200);
/// A handshake that never became an open connection is forgotten after this.
const RESERVED_MAX_MS: i64 = 10_000;

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

impl Matchmaker {
    /// Pushes the result to both players and closes both connections.
    fn announce(&self, ctx: &Ctx, a: &Player, b: &Player) {
        let (low, high) = if a.uid <= b.uid { (a, b) } else { (b, a) };
        let room = format!("room-{}-{}", low.uid, high.uid);
        for (me, peer) in [(a, b), (b, a)] {
            let message = json!({"type": "matched", "peer": peer.to_json(), "room": room, "rules": self.rules.name()});
            ctx.push(me.conn, message.to_string());
            ctx.close(me.conn, 1000, "matched");
        }
    }

    async fn arrive(&self, ctx: &Ctx, table: &Table, uid: &str, conn: u64) -> Result<(), TableError> {
        let lock = pool::lock(table).await?;
        let Some(row) = table.get(uid)? else { return Ok(()) };
        let mut me = Player::from_row(uid, &row);
        me.conn = conn;
        if me.state != RESERVED {
            return Ok(()); // a redelivered Open: already in the pool
        }
        table.set(uid, &[("conn", Value::Int(conn as i64)), ("state", Value::Int(WAITING))])?;
        me.state = WAITING;
        if let Some(partner) = pool::claim_partner(&lock, table, self.rules, &me, now_ms())? {
            drop(lock);
            self.announce(ctx, &me, &partner);
            let _ = table.delete(&me.uid);
            let _ = table.delete(&partner.uid);
        }
        Ok(())
    }

    /// Times players out and retries pairs (for rules that widen with
    /// waiting time). Any worker's janitor serves every player, so a
    /// crashed worker's players are still looked after.
    async fn janitor(&self, ctx: &Ctx, table: &Table) -> Result<(), TableError> {
        let lock = pool::lock(table).await?;
        let now = now_ms();
        let mut pairs = Vec::new();
        let mut expired = Vec::new();
        for player in pool::players(table) {
            let waited = now - player.since;
            match player.state {
                WAITING if waited >= self.timeout_ms => {
                    table.set(&player.uid, &[("state", Value::Int(DONE))])?;
                    expired.push(player);
                }
                WAITING if self.rules == RuleSet::RatingWindow => {
                    if let Some(partner) = pool::claim_partner(&lock, table, self.rules, &player, now)? {
                        pairs.push((player, partner));
                    }
                }
                RESERVED if waited >= RESERVED_MAX_MS => {
                    table.delete(&player.uid)?;
                }
                _ => {}
            }
        }
        drop(lock);
        for player in expired {
            ctx.push(player.conn, json!({"type": "timeout", "waited_ms": now - player.since}).to_string());
            ctx.close(player.conn, 1000, "no match in time");
            let _ = table.delete(&player.uid);
        }
        for (a, b) in pairs {
            self.announce(ctx, &a, &b);
            let _ = table.delete(&a.uid);
            let _ = table.delete(&b.uid);
        }
        Ok(())
    }
}

impl App for Matchmaker {
    const HANDLES_HANDSHAKE: bool = true;

    async fn on_worker_start(&self, ctx: &Ctx, _handoff: Option<Bytes>) {
        let table = players(ctx).expect("the config declares [tables.players]");
        pool::init(table).expect("the players table has room for the lock row");
        let ctx = ctx.clone();
        let app = Matchmaker { uids: Mutex::new(HashMap::new()), ..self.clone_settings() };
        tokio::spawn(async move {
            let Some(table) = players(&ctx) else { return };
            loop {
                tokio::time::sleep(JANITOR_EVERY).await;
                if let Err(error) = app.janitor(&ctx, table).await {
                    eprintln!("matchmaker janitor: {error}");
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
            ("since", Value::Int(now_ms())),
            ("rating", Value::Int(params.rating)),
            ("gender", Value::Str(params.gender)),
            ("game", Value::Str(params.game)),
            ("name", Value::Str(params.name)),
        ];
        match table.insert(&uid, &row) {
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
        let Some(table) = players(ctx) else { return };
        if let Err(error) = self.arrive(ctx, table, &uid, open.conn).await {
            ctx.push(open.conn, json!({"type": "error", "message": error.to_string()}).to_string());
            ctx.close(open.conn, 1011, "matchmaking error");
        }
    }

    async fn on_close(&self, ctx: &Ctx, close: Close) {
        let Some(table) = players(ctx) else { return };
        let uid = self.uids.lock().unwrap_or_else(|p| p.into_inner()).remove(&close.conn);
        // Another worker (before a reload) may have seen the open: find the
        // player by connection then.
        let uid = uid.or_else(|| pool::players(table).into_iter().find(|p| p.conn == close.conn).map(|p| p.uid));
        let Some(uid) = uid else { return };
        let Ok(lock) = pool::lock(table).await else { return };
        // A player who leaves while waiting leaves the pool at once; a
        // matched one was already removed.
        if let Ok(Some(row)) = table.get(&uid)
            && row.int("state") != Some(MATCHED)
            && row.int("conn") == Some(close.conn as i64)
        {
            let _ = table.delete(&uid);
        }
        drop(lock);
    }
}

impl Matchmaker {
    fn clone_settings(&self) -> Matchmaker {
        Matchmaker {
            secret: self.secret.clone(),
            timeout_ms: self.timeout_ms,
            rules: self.rules,
            uids: Mutex::new(HashMap::new()),
        }
    }
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
