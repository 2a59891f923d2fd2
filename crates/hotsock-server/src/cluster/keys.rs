//! Redis key names, the Lua scripts, and the bytes of a cross-node message.
//! No I/O.
//!
//! Everything a node sends another goes through a *log*: one hash
//! (`:meta`: the sequence number, the epoch, which is a fresh one when the
//! log's keys were lost or the Redis that holds them is another run, and
//! that run's id), a stream of the last entries (`:stream`, entry id
//! `SEQ-0`) and a Pub/Sub channel of the log's own name. A Redis restarted
//! from a snapshot, or a replica promoted behind its primary, has older
//! sequence numbers than the nodes delivered: reusing them would make nodes
//! drop new entries as seen, so a log written under another Redis run
//! starts a new epoch instead. One script appends an entry to all three at
//! once, so every reader sees one order, notices a missed Pub/Sub message
//! by the gap in the sequence, and reads it back from the stream.
//! The logs: one inbox per node (uid sends routed to it), one for
//! broadcasts, one per channel.

use bytes::{BufMut, Bytes, BytesMut};

/// Key and channel names under `cluster.prefix`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_owned() }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A node's inbox log.
    pub(crate) fn inbox(&self, node: &str) -> String {
        format!("{}:log:inbox:{node}", self.prefix)
    }

    /// The broadcast log.
    pub(crate) fn broadcast(&self) -> String {
        format!("{}:log:bcast", self.prefix)
    }

    /// A channel's log.
    pub(crate) fn channel(&self, name: &str) -> String {
        format!("{}:log:ch:{name}", self.prefix)
    }

    /// The channel a log name (as Pub/Sub reports it) belongs to.
    pub(crate) fn channel_of<'a>(&self, log: &'a str) -> Option<&'a str> {
        log.strip_prefix(&self.prefix)?.strip_prefix(":log:ch:")
    }

    pub(crate) fn stream(log: &str) -> String {
        format!("{log}:stream")
    }

    /// A uid's presence hash: node id → `EPOCH|conn,conn`.
    pub(crate) fn presence(&self, uid: u64) -> String {
        format!("{}:presence:{uid}", self.prefix)
    }

    /// The uids a node has put in presence.
    pub(crate) fn node_uids(&self, node: &str) -> String {
        format!("{}:node:{node}:uids", self.prefix)
    }
}

/// How long a log's epoch and sequence outlive its last entry: far longer
/// than its stream (`ttl` below), so a quiet channel keeps its epoch and a
/// client that missed nothing recovers with nothing to replay.
pub(crate) const LOG_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;

/// Shared by the scripts that append to or read the head of a log (Lua).
/// A log's state is one hash, `LOG:meta`: `epoch`, `seq`, `run` (Redis's
/// `run_id` as the caller saw it at connect) and `exp` (when, by Redis's
/// clock, the shorter-lived of the hash and the stream expires as last
/// pushed back). `current` starts a new run of the log when the hash is
/// gone or was written under another Redis run. An append is five calls
/// (HMGET, HINCRBY, XADD, TIME, PUBLISH): each `redis.call` costs about as
/// much as a small command, so the TTLs are pushed back (three calls more)
/// only when the entry being added would otherwise expire before its own
/// TTL is up: about once per tenth of the TTL (`refresh`), at once when the
/// TTL was raised. Redis's clock decides, so the nodes' clocks (skewed or
/// not) cannot shorten a stream's life: every entry lives at least its TTL,
/// at most a tenth longer.
const APPEND: &str = r#"
local function current(log, run, fresh_epoch, keep)
  local mk = log .. ':meta'
  local m = redis.call('HMGET', mk, 'epoch', 'seq', 'run', 'exp')
  if not m[1] or m[3] ~= run then
    -- A new run of the log: whatever is left of an older one goes.
    redis.call('DEL', mk, log .. ':stream')
    redis.call('HSET', mk, 'epoch', fresh_epoch, 'seq', 0, 'run', run, 'exp', 0)
    redis.call('PEXPIRE', mk, keep)
    return fresh_epoch, '0', 0
  end
  return m[1], m[2] or '0', tonumber(m[4] or '0')
end
local function append(log, maxlen, ttl, now, payload, fresh_epoch, run, keep)
  local mk, xk = log .. ':meta', log .. ':stream'
  local epoch, _, exp = current(log, run, fresh_epoch, keep)
  local seq = redis.call('HINCRBY', mk, 'seq', 1)
  redis.call('XADD', xk, 'MAXLEN', '~', maxlen, seq .. '-0', 't', now, 'p', payload)
  ttl, keep = tonumber(ttl), tonumber(keep)
  local life = ttl > 0 and math.min(ttl, keep) or keep
  local refresh = math.floor(life / 10)
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if clock + life > exp then
    redis.call('HSET', mk, 'exp', clock + life + refresh)
    redis.call('PEXPIRE', mk, keep + refresh)
    if ttl > 0 then
      redis.call('PEXPIRE', xk, ttl + refresh)
    end
  end
  redis.call('PUBLISH', log, epoch .. ' ' .. seq .. ' ' .. payload)
  return {epoch, seq}
end
local function epoch_of(value)
  return value and string.match(value, '^([^|]*)|')
end
"#;

/// Appends to one log. KEYS: none (the log's name is ARGV[1]).
/// ARGV: log, maxlen, stream ttl_ms, now_ms, payload, fresh epoch, run,
/// keep_ms. Returns `{epoch, seq}`.
pub(crate) fn append_script() -> String {
    format!("{APPEND}\nreturn append(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])")
}

/// Routes a uid send to the inbox of every other live node holding the
/// uid; drops presence entries of dead nodes on the way.
/// ARGV: prefix, uid, this node, maxlen, ttl_ms, now_ms, payload, fresh
/// epoch, run, keep_ms. Returns the number of nodes reached.
pub(crate) fn route_uid_script() -> String {
    format!(
        r#"{APPEND}
local prefix = ARGV[1]
local pkey = prefix .. ':presence:' .. ARGV[2]
local entries = redis.call('HGETALL', pkey)
local routed = 0
for i = 1, #entries, 2 do
  local node, value = entries[i], entries[i + 1]
  if node ~= ARGV[3] then
    local reg = redis.call('GET', prefix .. ':node:' .. node)
    if reg and epoch_of(reg) == epoch_of(value) then
      append(prefix .. ':log:inbox:' .. node, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
      routed = routed + 1
    else
      redis.call('HDEL', pkey, node)
    end
  end
end
return routed"#
    )
}

/// Where a uid is connected: `{node, conns, node, conns, ...}` for live
/// nodes only (entries of dead ones are dropped).
/// ARGV: prefix, uid.
pub(crate) const PRESENCE_SCRIPT: &str = r#"
local function epoch_of(value)
  return value and string.match(value, '^([^|]*)|')
end
local prefix = ARGV[1]
local pkey = prefix .. ':presence:' .. ARGV[2]
local entries = redis.call('HGETALL', pkey)
local out = {}
for i = 1, #entries, 2 do
  local node, value = entries[i], entries[i + 1]
  local reg = redis.call('GET', prefix .. ':node:' .. node)
  if reg and epoch_of(reg) == epoch_of(value) then
    table.insert(out, node)
    table.insert(out, string.sub(value, #epoch_of(value) + 2))
  else
    redis.call('HDEL', pkey, node)
  end
end
return out"#;

/// Registers or renews this node. A node id held by a live node of
/// another epoch (its last beat younger than ARGV[5] ms) is refused:
/// `{'taken', epoch}`. A new boot of the id cleans what an earlier one left
/// (its presence entries, its inbox): `{'registered'}`; a renewal of a
/// registration Redis still had: `{'renewed'}` (`'registered'` then means
/// Redis lost it, and the node must put its presence back).
/// ARGV: prefix, node, epoch, ttl_ms, stale_ms. Also returns the live
/// node count (dead ones are removed from the set).
pub(crate) const REGISTER_SCRIPT: &str = r#"
local function epoch_of(value)
  return value and string.match(value, '^([^|]*)|')
end
local prefix, id, epoch, ttl, stale = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local key = prefix .. ':node:' .. id
local reg = redis.call('GET', key)
if reg and epoch_of(reg) ~= epoch then
  local beat = tonumber(string.match(reg, '|(%d+)$') or '0')
  if now - beat < stale then
    return {'taken', epoch_of(reg), 0}
  end
end
redis.call('SET', key, epoch .. '|' .. now, 'PX', ttl)
redis.call('SADD', prefix .. ':nodes', id)
-- What a node id keeps besides its registration outlives it by a margin,
-- then goes: ids of nodes that never come back (a pod's) leave nothing.
local keep = tonumber(ttl) * 100
redis.call('PEXPIRE', key .. ':uids', keep)
redis.call('PEXPIRE', key .. ':boot', keep)
local outcome = 'renewed'
if not reg or epoch_of(reg) ~= epoch then
  outcome = 'registered'
end
local boot = key .. ':boot'
if redis.call('GET', boot) ~= epoch then
  redis.call('SET', boot, epoch)
  local uids = key .. ':uids'
  for _, uid in ipairs(redis.call('SMEMBERS', uids)) do
    local pkey = prefix .. ':presence:' .. uid
    if epoch_of(redis.call('HGET', pkey, id)) ~= epoch then
      redis.call('HDEL', pkey, id)
    end
  end
  redis.call('DEL', uids)
  local inbox = prefix .. ':log:inbox:' .. id
  redis.call('DEL', inbox .. ':meta', inbox .. ':stream')
end
local live = 0
for _, node in ipairs(redis.call('SMEMBERS', prefix .. ':nodes')) do
  if redis.call('EXISTS', prefix .. ':node:' .. node) == 1 then
    live = live + 1
  else
    redis.call('SREM', prefix .. ':nodes', node)
  end
end
return {outcome, epoch, live}"#;

/// A graceful stop: this node's presence entries, registration and inbox
/// go at once; when a newer boot of the id holds the registration, only
/// this boot's presence entries go (`0`). ARGV: prefix, node, epoch.
pub(crate) const UNREGISTER_SCRIPT: &str = r#"
local prefix, id, epoch = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. ':node:' .. id
local uids = key .. ':uids'
for _, uid in ipairs(redis.call('SMEMBERS', uids)) do
  local pkey = prefix .. ':presence:' .. uid
  local value = redis.call('HGET', pkey, id)
  if value and string.match(value, '^([^|]*)|') == epoch then
    redis.call('HDEL', pkey, id)
  end
end
local reg = redis.call('GET', key)
if reg and string.match(reg, '^([^|]*)|') ~= epoch then
  -- A newer boot of this id holds it (this one was frozen past its TTL):
  -- its uid set, inbox and place among the nodes are its own.
  return 0
end
redis.call('DEL', uids, key .. ':boot', key)
redis.call('SREM', prefix .. ':nodes', id)
local inbox = prefix .. ':log:inbox:' .. id
redis.call('DEL', inbox .. ':meta', inbox .. ':stream')
return 1"#;

/// The head of a log a node starts following or catches up: starts a run
/// if the log has none (or one of another Redis run), so the first append
/// keeps it; returns `{epoch, seq}`. ARGV: log, fresh epoch, run, keep_ms.
pub(crate) fn head_script() -> String {
    format!("{APPEND}\nlocal epoch, seq = current(ARGV[1], ARGV[3], ARGV[2], ARGV[4])\nreturn {{epoch, seq}}")
}

/// What a cross-node message carries (the `payload` of a log entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// To the uid's connections on the receiving node.
    ToUid { uid: u64, binary: bool, data: Bytes },
    /// Close the uid's connections on the receiving node.
    CloseUid { uid: u64, code: u16, reason: String },
    /// To every connection of the receiving node.
    Broadcast { origin: String, binary: bool, data: Bytes },
    /// To the channel's members on the receiving node; `except` is a
    /// connection of `origin`.
    Publication { origin: String, except: Option<u64>, binary: bool, data: Bytes },
}

const TO_UID: u8 = 1;
const BROADCAST: u8 = 2;
const PUBLICATION: u8 = 3;
const CLOSE_UID: u8 = 4;
const BINARY: u8 = 1;
const EXCEPT: u8 = 2;

/// A payload that does not decode: another version's node, or not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message")]
pub(crate) struct Malformed;

impl Entry {
    /// `kind u8, flags u8, origin (u8 length, bytes), [uid | except u64],
    /// data` (a close's data: `code u16`, then the reason).
    pub(crate) fn encode(&self) -> Bytes {
        let close;
        let (kind, origin, binary, number, data) = match self {
            Entry::ToUid { uid, binary, data } => (TO_UID, "", *binary, Some(*uid), &data[..]),
            Entry::CloseUid { uid, code, reason } => {
                close = [&code.to_le_bytes()[..], reason.as_bytes()].concat();
                (CLOSE_UID, "", false, Some(*uid), &close[..])
            }
            Entry::Broadcast { origin, binary, data } => (BROADCAST, origin.as_str(), *binary, None, &data[..]),
            Entry::Publication { origin, except, binary, data } => {
                (PUBLICATION, origin.as_str(), *binary, *except, &data[..])
            }
        };
        let mut buf = BytesMut::with_capacity(19 + origin.len() + data.len());
        buf.put_u8(kind);
        let except = matches!(self, Entry::Publication { except: Some(_), .. });
        buf.put_u8(if binary { BINARY } else { 0 } | if except { EXCEPT } else { 0 });
        // Node ids are at most 64 bytes (`cluster.node_id`).
        buf.put_u8(origin.len() as u8);
        buf.extend_from_slice(origin.as_bytes());
        if let Some(number) = number {
            buf.put_u64_le(number);
        }
        buf.extend_from_slice(data);
        buf.freeze()
    }

    pub(crate) fn decode(payload: &Bytes) -> Result<Entry, Malformed> {
        let [kind, flags, origin_len, ..] = payload[..] else { return Err(Malformed) };
        let origin_end = 3 + origin_len as usize;
        let origin = payload.get(3..origin_end).ok_or(Malformed)?;
        let origin = std::str::from_utf8(origin).map_err(|_| Malformed)?.to_owned();
        let binary = flags & BINARY != 0;
        let number = |at: usize| -> Result<u64, Malformed> {
            let bytes = payload.get(at..at + 8).ok_or(Malformed)?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| Malformed)?))
        };
        Ok(match kind {
            TO_UID => Entry::ToUid { uid: number(origin_end)?, binary, data: payload.slice(origin_end + 8..) },
            CLOSE_UID => {
                let code = payload.get(origin_end + 8..origin_end + 10).ok_or(Malformed)?;
                let reason = std::str::from_utf8(&payload[origin_end + 10..]).map_err(|_| Malformed)?;
                Entry::CloseUid {
                    uid: number(origin_end)?,
                    code: u16::from_le_bytes([code[0], code[1]]),
                    reason: reason.to_owned(),
                }
            }
            BROADCAST => Entry::Broadcast { origin, binary, data: payload.slice(origin_end..) },
            PUBLICATION if flags & EXCEPT != 0 => Entry::Publication {
                origin,
                except: Some(number(origin_end)?),
                binary,
                data: payload.slice(origin_end + 8..),
            },
            PUBLICATION => Entry::Publication { origin, except: None, binary, data: payload.slice(origin_end..) },
            _ => return Err(Malformed),
        })
    }
}

/// A Pub/Sub message of a log: `EPOCH SEQ PAYLOAD`.
pub(crate) fn split_message(message: &Bytes) -> Result<(u64, u64, Bytes), Malformed> {
    let first = message.iter().position(|b| *b == b' ').ok_or(Malformed)?;
    let rest = &message[first + 1..];
    let second = rest.iter().position(|b| *b == b' ').ok_or(Malformed)? + first + 1;
    let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok().and_then(|s| s.parse().ok()).ok_or(Malformed);
    Ok((number(&message[..first])?, number(&message[first + 1..second])?, message.slice(second + 1..)))
}

/// The sequence number in a stream entry id (`SEQ-0`).
pub(crate) fn seq_of_id(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let data = Bytes::from_static(b"he llo");
        for entry in [
            Entry::ToUid { uid: 42, binary: false, data: data.clone() },
            Entry::Broadcast { origin: "a:1".into(), binary: true, data: data.clone() },
            Entry::Publication { origin: "n".into(), except: Some(7), binary: false, data: data.clone() },
            Entry::Publication { origin: "n".into(), except: None, binary: true, data: Bytes::new() },
            Entry::CloseUid { uid: 9, code: 1000, reason: "matched".into() },
        ] {
            assert_eq!(Entry::decode(&entry.encode()), Ok(entry));
        }
        assert_eq!(Entry::decode(&Bytes::from_static(b"\x09\x00\x00")), Err(Malformed));
        assert_eq!(Entry::decode(&Bytes::from_static(b"\x01\x00\x05ab")), Err(Malformed));
        assert_eq!(Entry::decode(&Bytes::from_static(b"\x01\x00\x00abc")), Err(Malformed));
    }

    #[test]
    fn messages_split_at_the_first_two_spaces() {
        let message = Bytes::from_static(b"123 45 pay load");
        let (epoch, seq, payload) = split_message(&message).expect("splits");
        assert_eq!((epoch, seq, &payload[..]), (123, 45, &b"pay load"[..]));
        assert!(split_message(&Bytes::from_static(b"x 1 p")).is_err());
        assert!(split_message(&Bytes::from_static(b"1 2")).is_err());
        assert_eq!(seq_of_id("17-0"), Some(17));
    }

    #[tokio::test]
    async fn a_stale_boot_that_stops_leaves_a_newer_boot_of_its_id_alone() {
        let redis = hotsock_testkit::RedisServer::start();
        let client = redis::Client::open(redis.url()).expect("client");
        let mut con = client.get_multiplexed_async_connection().await.expect("connect");
        let script = redis::Script::new(REGISTER_SCRIPT);
        let register = |epoch: &str| {
            let mut call = script.prepare_invoke();
            call.arg("hs").arg("n").arg(epoch).arg(60_000).arg(200);
            call
        };
        // Boot 1 of id `n` held uid 5; it froze past its TTL, boot 2 took
        // the id over (registered, an inbox entry, uid 6 bound).
        let _: redis::Value = register("1").invoke_async(&mut con).await.expect("register 1");
        let _: () =
            redis::cmd("HSET").arg("hs:presence:5").arg("n").arg("1|10").query_async(&mut con).await.expect("redis");
        let _: () = redis::cmd("SADD").arg("hs:node:n:uids").arg(5).query_async(&mut con).await.expect("redis");
        let _: () = redis::cmd("SET").arg("hs:node:n").arg("1|0").query_async(&mut con).await.expect("redis");
        let (outcome, _, _): (String, String, u64) = register("2").invoke_async(&mut con).await.expect("register 2");
        assert_eq!(outcome, "registered");
        let append = redis::Script::new(&append_script());
        let _: redis::Value = append
            .prepare_invoke()
            .arg("hs:log:inbox:n")
            .arg(100)
            .arg(60_000)
            .arg(1)
            .arg("x")
            .arg(7)
            .arg("run")
            .arg(LOG_KEEP_MS)
            .invoke_async(&mut con)
            .await
            .expect("append");
        let _: () =
            redis::cmd("HSET").arg("hs:presence:6").arg("n").arg("2|20").query_async(&mut con).await.expect("redis");
        let _: () = redis::cmd("SADD").arg("hs:node:n:uids").arg(6).query_async(&mut con).await.expect("redis");
        // Boot 1 wakes up and stops gracefully.
        let gone: i64 = redis::Script::new(UNREGISTER_SCRIPT)
            .prepare_invoke()
            .arg("hs")
            .arg("n")
            .arg("1")
            .invoke_async(&mut con)
            .await
            .expect("unregister");
        assert_eq!(gone, 0, "the id is boot 2's");
        let exists = |key: &str| redis::cmd("EXISTS").arg(key).to_owned();
        for key in ["hs:node:n", "hs:node:n:uids", "hs:log:inbox:n:meta", "hs:log:inbox:n:stream"] {
            let n: i64 = exists(key).query_async(&mut con).await.expect("redis");
            assert_eq!(n, 1, "{key} is boot 2's and stays");
        }
        let member: i64 = redis::cmd("SISMEMBER").arg("hs:nodes").arg("n").query_async(&mut con).await.expect("redis");
        assert_eq!(member, 1, "boot 2 is still among the nodes");
        let six: Option<String> =
            redis::cmd("HGET").arg("hs:presence:6").arg("n").query_async(&mut con).await.expect("redis");
        assert_eq!(six.as_deref(), Some("2|20"), "boot 2's presence stays");
        // Boot 2 stops: everything of the id goes.
        let gone: i64 = redis::Script::new(UNREGISTER_SCRIPT)
            .prepare_invoke()
            .arg("hs")
            .arg("n")
            .arg("2")
            .invoke_async(&mut con)
            .await
            .expect("unregister");
        assert_eq!(gone, 1);
        for key in ["hs:node:n", "hs:node:n:uids", "hs:log:inbox:n:meta", "hs:presence:6"] {
            let n: i64 = exists(key).query_async(&mut con).await.expect("redis");
            assert_eq!(n, 0, "{key} goes with the id's last boot");
        }
    }

    #[test]
    fn channel_logs_name_their_channel() {
        let keys = Keys::new("hs");
        assert_eq!(keys.channel_of(&keys.channel("room:1")), Some("room:1"));
        assert_eq!(keys.channel_of(&keys.inbox("n")), None);
    }
}
