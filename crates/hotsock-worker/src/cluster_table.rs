//! A cluster-wide table (`[tables.NAME] scope = "cluster"`): the rows live
//! in the cluster's Redis, one hash per row plus a set of the keys, and
//! every operation is one atomic step there (a command or a Lua script), so
//! workers on every node see one table with the guarantees of the shared
//! one: insert-if-absent has one winner, compare-and-set one success,
//! capacity is exact.
//!
//! Values are checked against the schema here, before Redis sees them, with
//! the same errors as the shared table. The calls are blocking (the same
//! synchronous API as the shared table): each costs the calling handler a
//! Redis round trip.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hotsock_protocol::TableSpec;
use hotsock_table::{ColumnType, KEY_MAX_BYTES, Row, TableError, Value};
use redis::{Connection, RedisError, Script};

/// How long one operation may wait for Redis (connecting included).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failure, operations fail at once for this long instead of each
/// blocking its handler (and the worker's event loop) for a timeout: a
/// Redis outage must not make the worker miss its heartbeats.
const FAIL_FAST: Duration = Duration::from_millis(500);

/// Writes a row: `set` creates it if absent, `insert` only if absent. Every
/// row has the field `~`, so a row with no values set still exists.
/// KEYS: row, keys. ARGV: mode, capacity, key, field, value, ...
/// Returns 1 written, 0 exists (insert), -1 full.
const WRITE: &str = r#"
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists and ARGV[1] == 'insert' then return 0 end
if not exists then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
  redis.call('SADD', KEYS[2], ARGV[3])
end
redis.call('HSET', KEYS[1], '~', '1', unpack(ARGV, 4))
return 1"#;

/// Adds to a column, creating the row. KEYS: row, keys. ARGV: capacity,
/// key, column, delta, `i` or `f`. Returns `{1, new value}` or `{-1, ''}`
/// when full (the value read back as a string: Lua numbers are doubles).
const INCR: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[1]) then return {-1, ''} end
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[1], '~', '1')
end
if ARGV[5] == 'i' then
  redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[3], ARGV[4])
end
return {1, redis.call('HGET', KEYS[1], ARGV[3])}"#;

/// KEYS: row. ARGV: column, `i`/`f`/`s`, expected, new, the column's
/// default. Returns 1 if set.
const CAS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local current = redis.call('HGET', KEYS[1], ARGV[1]) or ARGV[5]
local same
if ARGV[2] == 'f' then same = tonumber(current) == tonumber(ARGV[3]) else same = current == ARGV[3] end
if not same then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1"#;

/// KEYS: row, keys. ARGV: key. Returns whether the row existed.
const DELETE: &str = r#"
local existed = redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return existed"#;

/// The table's connection to Redis.
enum Link {
    Idle,
    Up(Box<Connection>),
    /// The last attempt failed, when and why.
    Failed(Instant, String),
}

/// One cluster-wide table.
pub(crate) struct ClusterTable {
    name: String,
    capacity: u32,
    columns: Vec<(String, ColumnType)>,
    names: Arc<[String]>,
    /// `PREFIX:table:{NAME}:` (the braces keep a table in one Redis Cluster
    /// slot, so its scripts may touch its keys together).
    base: String,
    client: redis::Client,
    conn: Mutex<Link>,
    scripts: [Script; 4],
}

impl std::fmt::Debug for ClusterTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTable").field("name", &self.name).field("base", &self.base).finish()
    }
}

fn unavailable(error: impl std::fmt::Display) -> TableError {
    TableError::Unavailable(error.to_string())
}

impl ClusterTable {
    pub(crate) fn new(redis: &str, prefix: &str, spec: &TableSpec) -> Result<ClusterTable, String> {
        // Nagle's algorithm off: an operation sent while another task's is
        // unanswered must not wait for Redis's acknowledgement of it.
        let client = redis::IntoConnectionInfo::into_connection_info(redis)
            .map(|info| {
                let tcp = info.tcp_settings().clone().set_nodelay(true);
                info.set_tcp_settings(tcp)
            })
            .and_then(redis::Client::open)
            .map_err(|e| format!("table {}: {e}", spec.name))?;
        let columns = spec
            .columns
            .iter()
            .map(|(name, ty)| ColumnType::parse(ty).map(|ty| (name.clone(), ty)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("table {}: {e}", spec.name))?;
        let names: Arc<[String]> = columns.iter().map(|(n, _)| n.clone()).collect();
        Ok(ClusterTable {
            name: spec.name.clone(),
            capacity: spec.rows,
            base: format!("{prefix}:table:{{{}}}:", spec.name),
            columns,
            names,
            client,
            conn: Mutex::new(Link::Idle),
            scripts: [Script::new(WRITE), Script::new(INCR), Script::new(CAS), Script::new(DELETE)],
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn capacity(&self) -> u32 {
        self.capacity
    }

    fn row_key(&self, key: &str) -> Result<String, TableError> {
        if key.is_empty() || key.len() > KEY_MAX_BYTES {
            return Err(TableError::BadKey { len: key.len(), max: KEY_MAX_BYTES });
        }
        Ok(format!("{}row:{key}", self.base))
    }

    fn keys_key(&self) -> String {
        format!("{}keys", self.base)
    }

    /// Runs `op` on the connection, connecting first if needed; a failed
    /// connection is dropped so a later call connects again (after
    /// `FAIL_FAST`).
    fn with_conn<T>(&self, op: impl FnOnce(&mut Connection) -> Result<T, RedisError>) -> Result<T, TableError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Link::Failed(at, why) = &*guard {
            if at.elapsed() < FAIL_FAST {
                return Err(unavailable(format!("{why} (retrying within {} ms)", FAIL_FAST.as_millis())));
            }
            *guard = Link::Idle;
        }
        if let Link::Idle = &*guard {
            let connected = self.client.get_connection_with_timeout(REDIS_TIMEOUT).and_then(|conn| {
                conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
                conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
                Ok(conn)
            });
            match connected {
                Ok(conn) => *guard = Link::Up(Box::new(conn)),
                Err(error) => {
                    *guard = Link::Failed(Instant::now(), error.to_string());
                    return Err(unavailable(error));
                }
            }
        }
        let Link::Up(conn) = &mut *guard else { return Err(unavailable("not connected")) };
        match op(conn) {
            Ok(value) => Ok(value),
            Err(error) => {
                if error.is_io_error() || error.is_timeout() || error.is_connection_dropped() {
                    *guard = Link::Failed(Instant::now(), error.to_string());
                }
                Err(unavailable(error))
            }
        }
    }

    /// Checks a value against its column; its Redis form and kind letter.
    fn check(&self, column: &str, value: &Value) -> Result<(String, &'static str), TableError> {
        let Some((_, ty)) = self.columns.iter().find(|(name, _)| name == column) else {
            return Err(TableError::UnknownColumn(column.to_owned()));
        };
        match (ty, value) {
            (ColumnType::Int, Value::Int(v)) => Ok((v.to_string(), "i")),
            (ColumnType::Float, Value::Float(v)) => Ok((format!("{v:?}"), "f")),
            (ColumnType::Str(max), Value::Str(s)) if s.len() <= *max => Ok((s.clone(), "s")),
            (ColumnType::Str(max), Value::Str(s)) => {
                Err(TableError::StringTooLong { column: column.to_owned(), len: s.len(), max: *max })
            }
            (ty, _) => Err(TableError::WrongType { column: column.to_owned(), expected: ty.holds() }),
        }
    }

    pub(crate) fn len(&self) -> Result<usize, TableError> {
        let keys = self.keys_key();
        self.with_conn(|c| redis::cmd("SCARD").arg(&keys).query(c))
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Row>, TableError> {
        let row = self.row_key(key)?;
        let fields: Vec<(String, Vec<u8>)> = self.with_conn(|c| redis::cmd("HGETALL").arg(&row).query(c))?;
        Ok(self.row_of(fields))
    }

    fn row_of(&self, fields: Vec<(String, Vec<u8>)>) -> Option<Row> {
        if fields.is_empty() {
            return None;
        }
        let values = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let raw = fields.iter().find(|(field, _)| field == name).map(|(_, v)| String::from_utf8_lossy(v));
                match ty {
                    ColumnType::Int => Value::Int(raw.and_then(|v| v.parse().ok()).unwrap_or(0)),
                    ColumnType::Float => Value::Float(raw.and_then(|v| v.parse().ok()).unwrap_or(0.0)),
                    ColumnType::Str(_) => Value::Str(raw.map(|v| v.into_owned()).unwrap_or_default()),
                }
            })
            .collect();
        Some(Row::from_parts(self.names.clone(), values))
    }

    fn write(&self, mode: &str, key: &str, values: &[(&str, Value)]) -> Result<bool, TableError> {
        let checked =
            values.iter().map(|(c, v)| self.check(c, v).map(|(v, _)| (*c, v))).collect::<Result<Vec<_>, _>>()?;
        let row = self.row_key(key)?;
        let mut invocation = self.scripts[0].key(&row);
        invocation.key(self.keys_key()).arg(mode).arg(self.capacity).arg(key);
        for (column, value) in &checked {
            invocation.arg(*column).arg(value);
        }
        let written: i64 = self.with_conn(|c| invocation.invoke(c))?;
        match written {
            -1 => Err(TableError::TableFull { capacity: self.capacity }),
            n => Ok(n == 1),
        }
    }

    pub(crate) fn set(&self, key: &str, values: &[(&str, Value)]) -> Result<(), TableError> {
        self.write("set", key, values).map(|_| ())
    }

    pub(crate) fn insert(&self, key: &str, values: &[(&str, Value)]) -> Result<bool, TableError> {
        self.write("insert", key, values)
    }

    fn add(&self, key: &str, column: &str, delta: Value) -> Result<String, TableError> {
        let (delta, kind) = self.check(column, &delta)?;
        let row = self.row_key(key)?;
        let mut invocation = self.scripts[1].key(&row);
        invocation.key(self.keys_key()).arg(self.capacity).arg(key).arg(column).arg(delta).arg(kind);
        let result: Result<(i64, String), TableError> = self.with_conn(|c| invocation.invoke(c));
        match result {
            Ok((-1, _)) => Err(TableError::TableFull { capacity: self.capacity }),
            Ok((_, value)) => Ok(value),
            Err(TableError::Unavailable(why)) if why.contains("overflow") => {
                Err(TableError::Overflow(column.to_owned()))
            }
            Err(error) => Err(error),
        }
    }

    pub(crate) fn incr(&self, key: &str, column: &str, delta: i64) -> Result<i64, TableError> {
        let value = self.add(key, column, Value::Int(delta))?;
        value.parse().map_err(|_| unavailable(format!("Redis returned {value:?} for an i64 column")))
    }

    pub(crate) fn incr_float(&self, key: &str, column: &str, delta: f64) -> Result<f64, TableError> {
        let value = self.add(key, column, Value::Float(delta))?;
        value.parse().map_err(|_| unavailable(format!("Redis returned {value:?} for an f64 column")))
    }

    pub(crate) fn compare_and_set(
        &self,
        key: &str,
        column: &str,
        expected: &Value,
        new: &Value,
    ) -> Result<bool, TableError> {
        let (new, kind) = self.check(column, new)?;
        let (expected, _) = self.check(column, expected)?;
        let default = match kind {
            "s" => "",
            _ => "0",
        };
        let row = self.row_key(key)?;
        let mut invocation = self.scripts[2].key(&row);
        invocation.arg(column).arg(kind).arg(expected).arg(new).arg(default);
        let set: i64 = self.with_conn(|c| invocation.invoke(c))?;
        Ok(set == 1)
    }

    pub(crate) fn delete(&self, key: &str) -> Result<bool, TableError> {
        let row = self.row_key(key)?;
        let mut invocation = self.scripts[3].key(&row);
        invocation.key(self.keys_key()).arg(key);
        let existed: i64 = self.with_conn(|c| invocation.invoke(c))?;
        Ok(existed == 1)
    }

    /// Every row: the key set, then every row in one pipeline (a row deleted
    /// in between is skipped).
    pub(crate) fn iter(&self) -> Result<Vec<(String, Row)>, TableError> {
        let keys_key = self.keys_key();
        let keys: Vec<String> = self.with_conn(|c| redis::cmd("SMEMBERS").arg(&keys_key).query(c))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(format!("{}row:{key}", self.base));
        }
        let rows: Vec<Vec<(String, Vec<u8>)>> = self.with_conn(|c| pipe.query(c))?;
        Ok(keys.into_iter().zip(rows).filter_map(|(key, fields)| self.row_of(fields).map(|row| (key, row))).collect())
    }
}
