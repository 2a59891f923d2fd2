//! The waiting pool, in the shared table `players` (key: the uid), so a
//! reload or a worker crash loses no waiting player.
//!
//! Every change of a player's state happens under the pool lock: a table
//! row (`~lock`) whose `conn` column holds the pid of the worker holding it,
//! taken with compare-and-set and taken over if that process died. So an
//! arriving player sees every waiting one, and no player is claimed twice.

use std::time::Duration;

use hotsock_worker::{Row, Table, TableError, Value};

use crate::rules::RuleSet;

/// A player's state in the pool.
pub(crate) const RESERVED: i64 = 0; // handshake accepted, connection not open yet
pub(crate) const WAITING: i64 = 1;
pub(crate) const MATCHED: i64 = 2;
pub(crate) const DONE: i64 = 3; // timed out or left

/// The lock row's key; player keys are uids, so never start with `~`.
pub(crate) const LOCK_KEY: &str = "~lock";

/// A row of the pool.
#[derive(Debug, Clone)]
pub(crate) struct Player {
    pub(crate) uid: String,
    pub(crate) state: i64,
    pub(crate) conn: u64,
    pub(crate) since: i64,
    pub(crate) rating: i64,
    pub(crate) gender: String,
    pub(crate) game: String,
    pub(crate) name: String,
    /// The message sent when it finished (matched or timeout).
    pub(crate) result: String,
    /// When the state last changed, or the result was last sent.
    pub(crate) changed: i64,
}

impl Player {
    pub(crate) fn from_row(uid: &str, row: &Row) -> Player {
        Player {
            uid: uid.to_owned(),
            state: row.int("state").unwrap_or(DONE),
            conn: row.int("conn").unwrap_or(0) as u64,
            since: row.int("since").unwrap_or(0),
            rating: row.int("rating").unwrap_or(0),
            gender: row.str("gender").unwrap_or_default().to_owned(),
            game: row.str("game").unwrap_or_default().to_owned(),
            name: row.str("name").unwrap_or_default().to_owned(),
            result: row.str("result").unwrap_or_default().to_owned(),
            changed: row.int("changed").unwrap_or(0),
        }
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

/// Holds the pool lock until dropped.
pub(crate) struct PoolLock<'a> {
    table: &'a Table,
    pid: i64,
}

impl Drop for PoolLock<'_> {
    fn drop(&mut self) {
        let _ = self.table.compare_and_set(LOCK_KEY, "conn", &Value::Int(self.pid), &Value::Int(0));
    }
}

/// Creates the lock row (every worker tries; one succeeds).
pub(crate) fn init(table: &Table) -> Result<(), TableError> {
    table.insert(LOCK_KEY, &[("state", Value::Int(DONE)), ("conn", Value::Int(0))]).map(|_| ())
}

/// Takes the pool lock, taking it over from a holder that died.
pub(crate) async fn lock(table: &Table) -> Result<PoolLock<'_>, TableError> {
    let pid = i64::from(std::process::id());
    loop {
        if table.compare_and_set(LOCK_KEY, "conn", &Value::Int(0), &Value::Int(pid))? {
            return Ok(PoolLock { table, pid });
        }
        let holder = table.get(LOCK_KEY)?.and_then(|row| row.int("conn")).unwrap_or(0);
        if holder != 0
            && !std::path::Path::new(&format!("/proc/{holder}")).exists()
            && table.compare_and_set(LOCK_KEY, "conn", &Value::Int(holder), &Value::Int(pid))?
        {
            return Ok(PoolLock { table, pid });
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Every player row, skipping the lock row.
pub(crate) fn players(table: &Table) -> Vec<Player> {
    table
        .iter()
        .into_iter()
        .filter(|(key, _)| !key.starts_with('~'))
        .map(|(key, row)| Player::from_row(&key, &row))
        .collect()
}

/// With the lock held: the longest-waiting player compatible with `me`.
/// The caller records the match (`settle_pair`) before releasing the lock.
pub(crate) fn claim_partner(
    _lock: &PoolLock<'_>,
    table: &Table,
    rules: RuleSet,
    me: &Player,
    now_ms: i64,
) -> Result<Option<Player>, TableError> {
    // The longest-waiting compatible player first.
    let mut waiting: Vec<Player> =
        players(table).into_iter().filter(|p| p.uid != me.uid && p.state == WAITING).collect();
    waiting.sort_by_key(|p| p.since);
    let partner = waiting.into_iter().find(|p| rules.compatible(me, p, now_ms));
    Ok(partner)
}
