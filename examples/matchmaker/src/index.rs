//! The pool's index, so that finding a partner costs O(1) for
//! `opposite-gender` and a bounded number of steps for `rating-window`,
//! whatever the pool's size (a scan of every row under the pool lock made
//! pairing quadratic in the pool).
//!
//! Theory of operation. Doubly linked lists threaded through the player
//! rows (the `prev`/`next` and `rprev`/`rnext` columns hold uids, 0 for
//! none), their ends kept in the shared table `pool` (`head`, `tail`):
//!
//! ```text
//!   pool["g:chess:m"]  head ─▶ 17 ⇄ 4 ⇄ 230 ◀─ tail     a (game, gender) queue
//!   pool["r:chess:24"] head ─▶ 4 ⇄ 230 ◀─ tail         a (game, rating band) queue
//!   pool["settled"]    head ─▶ 9 ⇄ 12 ◀─ tail          matched or timed out, still connected
//! ```
//!
//! Every waiting player is in both its (game, gender) queue and its
//! (game, rating band) queue, each ordered by `(since, uid)`, whatever rule
//! is active, so a reload that switches the rule finds its index ready. A
//! finished player whose connection is still open is in the settled list,
//! in the order of its `changed` time, so the janitor re-sends results
//! without scanning the table. A list that becomes empty loses its row.
//!
//! The one rule: the player rows' `state` is the truth and the index only
//! follows it. Everything here runs under the pool lock; a holder that dies
//! half-way leaves the lists inconsistent, and the next holder rebuilds
//! them from the states (`rebuild`) before reading them.

use std::collections::HashMap;

use hotsock_worker::{TableError, Value};

use crate::fault;
use crate::pool::{self, MATCHED, Player, PoolLock, WAITING};
use crate::rules::{RuleSet, Search};

/// The genders players have (the handshake accepts no others).
pub(crate) const GENDERS: [&str; 2] = ["m", "f"];
/// Width of a rating band: the window's own step (it widens by 50 points a
/// second), so a band is crossed by one step of widening.
const BAND_POINTS: i64 = 50;
/// A rating search spanning more bands than this (a window grown past
/// 12,800 points, 4 minutes of waiting) walks the game's gender queues
/// instead, which is exact too and then cheaper.
const BANDS_SCAN_MAX: i64 = 256;
/// The settled list's key in `pool`.
const SETTLED: &str = "settled";

/// The two pointer columns of one kind of list.
#[derive(Clone, Copy)]
struct Links {
    prev: &'static str,
    next: &'static str,
}

/// (game, gender) queues and the settled list.
const ARRIVAL: Links = Links { prev: "prev", next: "next" };
/// (game, rating band) queues.
const RATING: Links = Links { prev: "rprev", next: "rnext" };

impl Links {
    fn of(self, player: &Player) -> (i64, i64) {
        if self.prev == "prev" { (player.prev, player.next) } else { (player.rprev, player.rnext) }
    }
}

fn gender_key(game: &str, gender: &str) -> String {
    format!("g:{game}:{gender}")
}

fn band_key(game: &str, band: i64) -> String {
    format!("r:{game}:{band}")
}

fn band(rating: i64) -> i64 {
    rating.div_euclid(BAND_POINTS)
}

/// A list's (head, tail); (0, 0) when it is empty.
fn ends(lock: &PoolLock<'_>, key: &str) -> Result<(i64, i64), TableError> {
    Ok(lock.index.get(key)?.map_or((0, 0), |row| (row.int("head").unwrap_or(0), row.int("tail").unwrap_or(0))))
}

fn set_ends(lock: &PoolLock<'_>, key: &str, head: i64, tail: i64) -> Result<(), TableError> {
    if head == 0 {
        lock.index.delete(key).map(|_| ())
    } else {
        lock.index.set(key, &[("head", Value::Int(head)), ("tail", Value::Int(tail))])
    }
}

fn set_link(lock: &PoolLock<'_>, uid: i64, column: &'static str, to: i64) -> Result<(), TableError> {
    lock.players.set(&uid.to_string(), &[(column, Value::Int(to))])
}

/// Puts `me` into list `key` in `(since, uid)` order. Arrivals come almost
/// in that order, so the walk back from the tail is nearly always empty.
fn insert_by_since(lock: &PoolLock<'_>, key: &str, links: Links, me: &Player) -> Result<(), TableError> {
    let (head, tail) = ends(lock, key)?;
    let mine = (me.since, me.id());
    let (mut after, mut before) = (tail, 0);
    while after != 0 {
        let Some(player) = pool::player(lock.players, after)? else { break };
        if (player.since, player.id()) <= mine {
            break;
        }
        before = after;
        after = links.of(&player).0;
    }
    lock.players.set(&me.uid, &[(links.prev, Value::Int(after)), (links.next, Value::Int(before))])?;
    if after != 0 {
        set_link(lock, after, links.next, me.id())?;
    }
    fault::point("link", me.id());
    if before != 0 {
        set_link(lock, before, links.prev, me.id())?;
    }
    set_ends(lock, key, if after == 0 { me.id() } else { head }, if before == 0 { me.id() } else { tail })
}

/// Appends player `uid` to list `key`.
fn append(lock: &PoolLock<'_>, key: &str, links: Links, uid: i64) -> Result<(), TableError> {
    let (head, tail) = ends(lock, key)?;
    lock.players.set(&uid.to_string(), &[(links.prev, Value::Int(tail)), (links.next, Value::Int(0))])?;
    if tail != 0 {
        set_link(lock, tail, links.next, uid)?;
    }
    set_ends(lock, key, if head == 0 { uid } else { head }, uid)
}

/// Takes player `uid` out of list `key`, reading its pointers fresh (an
/// earlier unlink may have changed them).
fn unlink(lock: &PoolLock<'_>, key: &str, links: Links, uid: i64) -> Result<(), TableError> {
    let Some(player) = pool::player(lock.players, uid)? else { return Ok(()) };
    let (prev, next) = links.of(&player);
    let (head, tail) = ends(lock, key)?;
    if prev != 0 {
        set_link(lock, prev, links.next, next)?;
    }
    if next != 0 {
        set_link(lock, next, links.prev, prev)?;
    }
    set_ends(lock, key, if head == uid { next } else { head }, if tail == uid { prev } else { tail })
}

/// A player who became `WAITING` joins its queues.
pub(crate) fn enter(lock: &PoolLock<'_>, me: &Player) -> Result<(), TableError> {
    insert_by_since(lock, &gender_key(&me.game, &me.gender), ARRIVAL, me)?;
    insert_by_since(lock, &band_key(&me.game, band(me.rating)), RATING, me)
}

/// A waiting player leaves its queues (matched, timed out or gone).
pub(crate) fn leave_queues(lock: &PoolLock<'_>, player: &Player) -> Result<(), TableError> {
    unlink(lock, &gender_key(&player.game, &player.gender), ARRIVAL, player.id())?;
    unlink(lock, &band_key(&player.game, band(player.rating)), RATING, player.id())
}

/// A finished player (matched or timed out) joins the settled list's end.
pub(crate) fn settle(lock: &PoolLock<'_>, uid: i64) -> Result<(), TableError> {
    append(lock, SETTLED, ARRIVAL, uid)
}

/// A finished player leaves the settled list.
pub(crate) fn unsettle(lock: &PoolLock<'_>, uid: i64) -> Result<(), TableError> {
    unlink(lock, SETTLED, ARRIVAL, uid)
}

/// The settled player whose result was sent longest ago.
pub(crate) fn oldest_settled(lock: &PoolLock<'_>) -> Result<Option<Player>, TableError> {
    let (head, _) = ends(lock, SETTLED)?;
    if head == 0 { Ok(None) } else { pool::player(lock.players, head) }
}

/// Every (game, gender) queue's longest-waiting player.
pub(crate) fn queue_heads(lock: &PoolLock<'_>) -> Result<Vec<Player>, TableError> {
    let mut heads = Vec::new();
    for (key, row) in lock.index.try_iter()? {
        if key.starts_with("g:")
            && let Some(player) = pool::player(lock.players, row.int("head").unwrap_or(0))?
        {
            heads.push(player);
        }
    }
    Ok(heads)
}

/// Every waiting player's uid, by walking the gender queues.
pub(crate) fn waiting_uids(lock: &PoolLock<'_>) -> Result<Vec<i64>, TableError> {
    let mut uids = Vec::new();
    for head in queue_heads(lock)? {
        let mut next = Some(head);
        while let Some(player) = next {
            lock.keep()?;
            uids.push(player.id());
            next = if player.next == 0 { None } else { pool::player(lock.players, player.next)? };
        }
    }
    Ok(uids)
}

/// The first player of list `key` that `accept` takes, walking from the
/// head (longest waiting) until `stop` says no later one can do better.
fn first(
    lock: &PoolLock<'_>,
    key: &str,
    links: Links,
    stop: impl Fn(&Player) -> bool,
    accept: impl Fn(&Player) -> bool,
) -> Result<Option<Player>, TableError> {
    let (mut uid, _) = ends(lock, key)?;
    while uid != 0 {
        lock.keep()?;
        let Some(player) = pool::player(lock.players, uid)? else { return Ok(None) };
        if stop(&player) {
            return Ok(None);
        }
        if accept(&player) {
            return Ok(Some(player));
        }
        uid = links.of(&player).1;
    }
    Ok(None)
}

/// With the lock held: the longest-waiting player compatible with `me`
/// (ties broken by the smaller uid). The caller records the match
/// (`settle_pair`) before releasing the lock.
pub(crate) fn claim_partner(
    lock: &PoolLock<'_>,
    rules: RuleSet,
    me: &Player,
    now_ms: i64,
) -> Result<Option<Player>, TableError> {
    let accept = |p: &Player| p.uid != me.uid && p.state == WAITING && rules.compatible(me, p, now_ms);
    let older = |a: &Player, b: &Player| (a.since, a.id()) <= (b.since, b.id());
    match rules.search(me) {
        Search::Gender(gender) => first(lock, &gender_key(&me.game, gender), ARRIVAL, |_| false, accept),
        Search::Rating => {
            // The widest window any partner can offer is that of the
            // game's longest-waiting player: bands beyond it hold nobody.
            let mut oldest = me.since;
            for gender in GENDERS {
                let (head, _) = ends(lock, &gender_key(&me.game, gender))?;
                if let Some(player) = pool::player(lock.players, head)? {
                    oldest = oldest.min(player.since);
                }
            }
            let reach = RuleSet::window(me.since, oldest, now_ms);
            let (low, high) = (band(me.rating.saturating_sub(reach)), band(me.rating.saturating_add(reach)));
            let mut best: Option<Player> = None;
            if high - low > BANDS_SCAN_MAX {
                for gender in GENDERS {
                    let stop = |p: &Player| best.as_ref().is_some_and(|b| older(b, p));
                    if let Some(found) = first(lock, &gender_key(&me.game, gender), ARRIVAL, stop, accept)? {
                        best = Some(found);
                    }
                }
                return Ok(best);
            }
            for band in low..=high {
                let (first_rating, last_rating) = (band * BAND_POINTS, band * BAND_POINTS + BAND_POINTS - 1);
                let gap = (first_rating - me.rating).max(me.rating - last_rating).max(0);
                // A band is ordered by waiting time and the window only
                // shrinks along it: once it no longer reaches the band, or
                // a player is younger than the best so far, stop.
                let stop = |p: &Player| {
                    best.as_ref().is_some_and(|b| older(b, p)) || RuleSet::window(me.since, p.since, now_ms) < gap
                };
                if let Some(found) = first(lock, &band_key(&me.game, band), RATING, stop, accept)? {
                    best = Some(found);
                }
            }
            Ok(best)
        }
    }
}

/// The peer named in a `matched` result.
fn peer_of(result: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(result).ok()?["peer"]["uid"].as_i64()
}

/// Rebuilds the index from the player rows, after taking the lock over
/// from a worker that died holding it. A pair the dead worker had half
/// settled (one row `MATCHED`, its peer's result already naming it, the
/// peer's state not yet written) is completed, and both results are marked
/// for re-sending. Returns how many players the index holds again.
pub(crate) fn rebuild(lock: &PoolLock<'_>) -> Result<usize, TableError> {
    for (key, _) in lock.index.try_iter()? {
        lock.index.delete(&key)?;
    }
    let mut players = pool::players(lock.players)?;
    let position: HashMap<i64, usize> = players.iter().enumerate().map(|(n, p)| (p.id(), n)).collect();
    for n in 0..players.len() {
        if players[n].state != MATCHED {
            continue;
        }
        let me = players[n].id();
        let Some(&m) = peer_of(&players[n].result).and_then(|peer| position.get(&peer)) else { continue };
        if players[m].state != MATCHED && peer_of(&players[m].result) == Some(me) {
            for k in [n, m] {
                let uid = players[k].uid.clone();
                lock.players.set(&uid, &[("changed", Value::Int(0)), ("state", Value::Int(MATCHED))])?;
                players[k].state = MATCHED;
                players[k].changed = 0;
            }
        }
    }
    let mut waiting: Vec<&Player> = players.iter().filter(|p| p.state == WAITING).collect();
    waiting.sort_by_key(|p| (p.since, p.id()));
    for player in &waiting {
        append(lock, &gender_key(&player.game, &player.gender), ARRIVAL, player.id())?;
        append(lock, &band_key(&player.game, band(player.rating)), RATING, player.id())?;
    }
    let mut settled: Vec<&Player> = players.iter().filter(|p| p.state == MATCHED || p.state == pool::DONE).collect();
    settled.sort_by_key(|p| (p.changed, p.id()));
    for player in &settled {
        settle(lock, player.id())?;
    }
    Ok(waiting.len() + settled.len())
}
