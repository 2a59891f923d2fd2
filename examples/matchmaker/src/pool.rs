//! The waiting pool, in the shared table `players` (key: the uid), so a
//! reload or a worker crash loses no waiting player. `index.rs` keeps the
//! pool's index beside it, in the shared table `pool`.
//!
//! Every change of a player's state, and of the index, happens under the
//! pool lock: a table row (`~lock`) whose `result` column names the holder
//! (`node|pid|since_ms`), taken with compare-and-set and taken over if that
//! process died (same node, no such pid) or, in a cluster-wide table, if
//! it held the lock longer than `LOCK_LEASE_MS` (a node that died with
//! it cannot be asked). So an arriving player sees every waiting one, and no player
//! is claimed twice. A holder may die in the middle of an update: whoever
//! takes the lock over rebuilds the index from the player rows
//! (`index::rebuild`), which are the truth; the index is only a way to find
//! them fast.

use std::time::Duration;

use hotsock_worker::{Row, Scope, Table, TableError, Value};

use crate::index;

/// A player's state in the pool.
pub(crate) const RESERVED: i64 = 0; // handshake accepted, connection not open yet
pub(crate) const WAITING: i64 = 1;
pub(crate) const MATCHED: i64 = 2;
pub(crate) const DONE: i64 = 3; // timed out or left

/// The lock row's key; player keys are uids, so never start with `~`.
pub(crate) const LOCK_KEY: &str = "~lock";

/// How long a worker waits before trying a held lock again.
const LOCK_RETRY: Duration = Duration::from_micros(200);
/// Cluster-wide pool only: a holder seen longer than this is presumed dead
/// (its node cannot be asked). A hold is a few Redis round trips, so this
/// is thousands of times longer than any live one.
const LOCK_LEASE_MS: i64 = 10_000;

/// A row of the pool.
#[derive(Debug, Clone)]
pub(crate) struct Player {
    pub(crate) uid: String,
    pub(crate) state: i64,
    pub(crate) conn: u64,
    /// The server the connection is on (`conn` ids are per server): see
    /// `this_node`.
    pub(crate) node: String,
    pub(crate) since: i64,
    pub(crate) rating: i64,
    pub(crate) gender: String,
    pub(crate) game: String,
    pub(crate) name: String,
    /// The message sent when it finished (matched or timeout).
    pub(crate) result: String,
    /// When the state last changed, or the result was last sent.
    pub(crate) changed: i64,
    /// Neighbours (uids, 0 for none) in the player's arrival-ordered list:
    /// its (game, gender) queue while waiting, the settled list after.
    pub(crate) prev: i64,
    pub(crate) next: i64,
    /// Neighbours in its (game, rating band) queue while waiting.
    pub(crate) rprev: i64,
    pub(crate) rnext: i64,
}

impl Player {
    pub(crate) fn from_row(uid: &str, row: &Row) -> Player {
        Player {
            uid: uid.to_owned(),
            state: row.int("state").unwrap_or(DONE),
            conn: row.int("conn").unwrap_or(0) as u64,
            node: row.str("node").unwrap_or_default().to_owned(),
            since: row.int("since").unwrap_or(0),
            rating: row.int("rating").unwrap_or(0),
            gender: row.str("gender").unwrap_or_default().to_owned(),
            game: row.str("game").unwrap_or_default().to_owned(),
            name: row.str("name").unwrap_or_default().to_owned(),
            result: row.str("result").unwrap_or_default().to_owned(),
            changed: row.int("changed").unwrap_or(0),
            prev: row.int("prev").unwrap_or(0),
            next: row.int("next").unwrap_or(0),
            rprev: row.int("rprev").unwrap_or(0),
            rnext: row.int("rnext").unwrap_or(0),
        }
    }

    /// The uid as the index stores it (player keys are positive integers).
    pub(crate) fn id(&self) -> i64 {
        self.uid.parse().unwrap_or(0)
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "uid": self.uid.parse::<u64>().unwrap_or(0),
            "name": self.name,
            "gender": self.gender,
            "game": self.game,
            "rating": self.rating,
        })
    }
}

/// Reads player `uid` (an index pointer), if its row exists.
pub(crate) fn player(table: &Table, uid: i64) -> Result<Option<Player>, TableError> {
    let key = uid.to_string();
    Ok(table.get(&key)?.map(|row| Player::from_row(&key, &row)))
}

/// Holds the pool lock until dropped. `players` and `index` are the two
/// tables it guards.
pub(crate) struct PoolLock<'a> {
    pub(crate) players: &'a Table,
    pub(crate) index: &'a Table,
    /// What the lock row says while this worker holds it, and when it
    /// last said so (renewed during long holds on a cluster-wide pool).
    holder: std::sync::Mutex<(Value, std::time::Instant)>,
}

impl Drop for PoolLock<'_> {
    fn drop(&mut self) {
        let (holder, _) = &*self.holder.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.players.compare_and_set(LOCK_KEY, "result", holder, &Value::Str(String::new()));
    }
}

impl PoolLock<'_> {
    fn new<'a>(players: &'a Table, index: &'a Table, holder: Value) -> PoolLock<'a> {
        PoolLock { players, index, holder: std::sync::Mutex::new((holder, std::time::Instant::now())) }
    }

    /// Long holds call this between steps: on a cluster-wide pool the
    /// lease is renewed every quarter of it, and a holder that finds it
    /// taken over (it stalled past the lease) stops before writing more.
    pub(crate) fn keep(&self) -> Result<(), TableError> {
        if self.players.scope() != Scope::Cluster {
            return Ok(());
        }
        let mut held = self.holder.lock().unwrap_or_else(|p| p.into_inner());
        if held.1.elapsed() < std::time::Duration::from_millis((LOCK_LEASE_MS / 4) as u64) {
            return Ok(());
        }
        let renewed = Value::Str(format!("{}|{}|{}", this_node(), std::process::id(), crate::now_ms()));
        if !self.players.compare_and_set(LOCK_KEY, "result", &held.0, &renewed)? {
            return Err(TableError::Unavailable("the pool lock was taken over (held past its lease)".into()));
        }
        *held = (renewed, std::time::Instant::now());
        Ok(())
    }
}

/// Creates the lock row (every worker tries; one succeeds).
pub(crate) fn init(table: &Table) -> Result<(), TableError> {
    table.insert(LOCK_KEY, &[("state", Value::Int(DONE)), ("result", Value::Str(String::new()))]).map(|_| ())
}

static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this worker's server: its `cluster.node_id` (`ctx.node()`), or on
/// a single server the host and the server's pid. Called at worker start.
pub(crate) fn set_node(node: Option<&str>) {
    let node = node.map(str::to_owned).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let server = std::env::var(hotsock_worker::ENV_SERVER_PID).unwrap_or_default();
        format!("{}:{server}", host.trim())
    });
    let _ = NODE.set(node);
}

/// Where this worker's connections are (connection ids are numbered per
/// server, so on a cluster-wide pool a connection is named by both), and
/// where a lock holder's pid means something (its server's children).
pub(crate) fn this_node() -> String {
    NODE.get().cloned().unwrap_or_default()
}

/// Whether the holder `node|pid|since_ms` is gone.
fn holder_is_gone(holder: &str, cluster: bool, now_ms: i64) -> bool {
    let mut parts = holder.split('|');
    let (Some(node), Some(pid), Some(since)) = (parts.next(), parts.next(), parts.next()) else {
        return true;
    };
    let dead_here = node == this_node() && !std::path::Path::new(&format!("/proc/{pid}")).exists();
    let expired = cluster && since.parse::<i64>().is_ok_and(|since| now_ms - since > LOCK_LEASE_MS);
    dead_here || expired
}

/// Takes the pool lock, taking it over from a holder that died; after a
/// takeover the index is rebuilt before anything reads it, since the dead
/// holder may have left it half-updated.
pub(crate) async fn lock<'a>(players: &'a Table, index: &'a Table) -> Result<PoolLock<'a>, TableError> {
    let cluster = players.scope() == Scope::Cluster;
    let free = Value::Str(String::new());
    loop {
        let now = crate::now_ms();
        let me = Value::Str(format!("{}|{}|{now}", this_node(), std::process::id()));
        if players.compare_and_set(LOCK_KEY, "result", &free, &me)? {
            return Ok(PoolLock::new(players, index, me));
        }
        let holder = players.get(LOCK_KEY)?.and_then(|row| row.str("result").map(str::to_owned)).unwrap_or_default();
        if !holder.is_empty()
            && holder_is_gone(&holder, cluster, now)
            && players.compare_and_set(LOCK_KEY, "result", &Value::Str(holder.clone()), &me)?
        {
            let lock = PoolLock::new(players, index, me);
            let repaired = index::rebuild(&lock)?;
            eprintln!("matchmaker: took the pool lock over from {holder}, gone; index rebuilt ({repaired} players)");
            return Ok(lock);
        }
        tokio::time::sleep(LOCK_RETRY).await;
    }
}

/// Every player row, skipping the lock row (a full scan: only for rare
/// paths, never per arrival). A cluster-wide table that cannot be read is
/// an error, never an empty pool: the index rebuild trusts this list.
pub(crate) fn players(table: &Table) -> Result<Vec<Player>, TableError> {
    Ok(table
        .try_iter()?
        .into_iter()
        .filter(|(key, _)| !key.starts_with('~'))
        .map(|(key, row)| Player::from_row(&key, &row))
        .collect())
}
