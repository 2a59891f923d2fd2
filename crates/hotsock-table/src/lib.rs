//! A shared-memory table, like Swoole's `Table`: a fixed number of rows with
//! typed columns, in one memory segment every worker process maps. It
//! survives reloads and crashes of any worker; it lives as long as the
//! process that created it (the server) keeps its file.
//!
//! Theory of operation.
//! - The segment is an array of 64-bit atomic words (`segment.rs` says why;
//!   it, `fdpass.rs`, which receives segments from another process,
//!   `activation.rs`, which adopts systemd's listening socket,
//!   `sched.rs`, which sets threads' scheduling policy, and `link.rs`,
//!   which registers the server–worker socket's halves with tokio and
//!   reads into a buffer's uninitialized room, hold
//!   the crate's only `unsafe`): a header, then `slots` rows.
//! - Rows are found by open addressing: FNV-1a of the key, then linear
//!   probing. There are at least twice as many slots as rows, so probes stay
//!   short; the capacity is exact (`TableFull` after `rows` live keys).
//! - Reads take no lock: each row has a sequence counter, odd while a write
//!   is under way; a reader copies the row and retries if the counter moved.
//! - Writes take the row's lock word, which holds the writer's [`Owner`]
//!   (pid, slot, generation). Inserts and deletes also take a table-wide
//!   lock word. A lock whose owner died is taken over by the next writer
//!   that waits on it (and fixed by the server's [`Table::repair`]), so no
//!   row stays locked forever; a row a writer died in the middle of is
//!   readable again, holding some of the old and some of the new values.
//! - Every error is typed: a full table, a key or string too long, an
//!   unknown column, a wrong type. Nothing is truncated; nothing panics.

pub mod activation;
mod fdpass;
pub mod link;
pub mod sched;
mod schema;
mod segment;

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

pub use fdpass::{FILES_MAX, receive_files, send_descriptors, send_files};
pub use schema::{Column, ColumnType, KEY_MAX_BYTES, ROWS_MAX, STRING_MAX_BYTES, Schema};
use schema::{Fnv, KEY, KEY_WORDS, LOCK, Layout, SEQ, STATE};
use segment::Segment;

/// Format identifier in the header ("HSTABLE1").
const MAGIC: u64 = 0x3145_4c42_4154_5348;
const HEADER_WORDS: usize = 8;
const H_MAGIC: usize = 0;
const H_HASH: usize = 1;
const H_LEN: usize = 2;
const H_LOCK: usize = 3;

const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMBSTONE: u64 = 2;

/// How long a writer waits for a lock held by a live owner before it gives
/// up with `Locked`: far longer than any write takes, short enough that a
/// stuck owner is reported instead of hanging the caller.
const LOCK_WAIT_MAX: Duration = Duration::from_secs(2);
/// Spins between checks of whether a lock's owner is still alive.
const SPINS_PER_OWNER_CHECK: u32 = 2_000;

/// Everything that can go wrong, by side: the caller's input, the table's
/// state, the system.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The table holds `capacity` rows already.
    #[error("table full: all {capacity} rows are in use")]
    TableFull {
        /// The declared row count.
        capacity: u32,
    },
    /// Keys are 1 to `KEY_MAX_BYTES` bytes.
    #[error("key of {len} bytes; keys are 1 to {max} bytes")]
    BadKey {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No such column.
    #[error("no column named {0:?}")]
    UnknownColumn(String),
    /// The value does not fit the column's type.
    #[error("column {column:?} holds {expected}")]
    WrongType {
        /// The column.
        column: String,
        /// What it holds.
        expected: &'static str,
    },
    /// A string longer than its column.
    #[error("column {column:?} holds at most {max} bytes; got {len}")]
    StringTooLong {
        /// The column.
        column: String,
        /// The string's length.
        len: usize,
        /// The column's size.
        max: usize,
    },
    /// An increment would overflow an i64.
    #[error("incrementing column {0:?} would overflow")]
    Overflow(String),
    /// A live process held a lock for longer than any write should take.
    #[error("row locked by pid {pid} for over {LOCK_WAIT_MAX:?}")]
    Locked {
        /// The holder.
        pid: u32,
    },
    /// The declaration is invalid.
    #[error("bad table schema: {0}")]
    BadSchema(String),
    /// The segment was made for another schema.
    #[error("the table segment does not match the schema: {0}")]
    SchemaMismatch(String),
    /// Creating or mapping the segment failed.
    #[error("table segment: {0}")]
    Io(#[from] std::io::Error),
    /// A cluster-wide table (`scope = "cluster"`): its Redis could not be
    /// reached or answered unexpectedly. After a timeout the operation may
    /// still have been applied (as with any request whose answer was
    /// lost): read the row again before acting on the failure.
    #[error("cluster table: {0}")]
    Unavailable(String),
}

/// Who holds a lock: recorded in the lock word so a dead holder can be
/// recognised and its locks released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// The process.
    pub pid: u32,
    /// Its worker slot (`u16::MAX` for the server).
    pub slot: u16,
    /// Its generation, modulo 2^16.
    pub generation: u16,
}

impl Owner {
    /// This process, outside any worker slot.
    pub fn this_process() -> Owner {
        Owner { pid: std::process::id(), slot: u16::MAX, generation: 0 }
    }

    fn encode(self) -> u64 {
        u64::from(self.pid) | (u64::from(self.slot) << 32) | (u64::from(self.generation) << 48)
    }

    fn pid_of(word: u64) -> u32 {
        word as u32
    }
}

/// A value in a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// For `i64` columns.
    Int(i64),
    /// For `f64` columns.
    Float(f64),
    /// For `str:N` columns.
    Str(String),
}

/// A copy of one row's values, in column order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Shared with the table: a read copies values, not column names.
    names: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// A row of `values`, one per name in `names` (for tables kept
    /// elsewhere than a segment: the SDK's cluster-wide tables).
    pub fn from_parts(names: Arc<[String]>, values: Vec<Value>) -> Row {
        Row { names, values }
    }

    /// The value of a column.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.names.iter().position(|n| n == column).map(|i| &self.values[i])
    }

    /// The value of an `i64` column.
    pub fn int(&self, column: &str) -> Option<i64> {
        match self.get(column)? {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The value of a `str:N` column.
    pub fn str(&self, column: &str) -> Option<&str> {
        match self.get(column)? {
            Value::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The value of an `f64` column.
    pub fn float(&self, column: &str) -> Option<f64> {
        match self.get(column)? {
            Value::Float(v) => Some(*v),
            _ => None,
        }
    }
}

/// A key packed into words, zero padded.
struct Key {
    len: usize,
    words: [u64; KEY_WORDS],
    hash: u64,
}

impl Key {
    fn new(key: &str) -> Result<Key, TableError> {
        let bytes = key.as_bytes();
        if bytes.is_empty() || bytes.len() > KEY_MAX_BYTES {
            return Err(TableError::BadKey { len: bytes.len(), max: KEY_MAX_BYTES });
        }
        let mut words = [0u64; KEY_WORDS];
        pack(bytes, &mut words);
        let mut hash = Fnv::new();
        hash.write(bytes);
        Ok(Key { len: bytes.len(), words, hash: hash.finish() })
    }
}

fn pack(bytes: &[u8], words: &mut [u64]) {
    for (word, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut buf = [0u8; 8];
        buf[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(buf);
    }
}

fn unpack(words: &[AtomicU64], len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for word in words {
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A mapped table. Cheap to share between threads (`&Table` is `Sync`).
#[derive(Debug)]
pub struct Table {
    name: String,
    file: File,
    segment: Segment,
    layout: Layout,
    names: Arc<[String]>,
    owner: u64,
}

impl Table {
    /// Creates a table in a new memory segment (a memfd), owned by this
    /// process. Hand `file()` to other processes and `open` it there.
    pub fn create(name: &str, schema: &Schema) -> Result<Table, TableError> {
        let layout = Layout::new(schema)?;
        let words = HEADER_WORDS + layout.slots * layout.row_words;
        let fd = nix::sys::memfd::memfd_create(
            format!("hotsock-table-{name}").as_str(),
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let file = File::from(fd);
        file.set_len((words * 8) as u64)?;
        let segment = Segment::map(&file, words)?;
        let header = segment.words();
        header[H_HASH].store(layout.hash, Ordering::Relaxed);
        header[H_MAGIC].store(MAGIC, Ordering::Release);
        let names = layout.columns.iter().map(|(c, _)| c.name.clone()).collect();
        Ok(Table { name: name.to_owned(), file, segment, layout, names, owner: Owner::this_process().encode() })
    }

    /// Maps a table another process created, checking it was made for the
    /// same schema. Locks taken through it record `owner`.
    pub fn open(name: &str, file: File, schema: &Schema, owner: Owner) -> Result<Table, TableError> {
        let layout = Layout::new(schema)?;
        let words = HEADER_WORDS + layout.slots * layout.row_words;
        let segment = Segment::map(&file, words)?;
        let header = segment.words();
        if header[H_MAGIC].load(Ordering::Acquire) != MAGIC {
            return Err(TableError::SchemaMismatch("not a hotsock table segment".into()));
        }
        if header[H_HASH].load(Ordering::Relaxed) != layout.hash {
            return Err(TableError::SchemaMismatch(format!("table {name:?} was created with different columns")));
        }
        let names = layout.columns.iter().map(|(c, _)| c.name.clone()).collect();
        Ok(Table { name: name.to_owned(), file, segment, layout, names, owner: owner.encode() })
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The segment's file, to hand to another process.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The declared capacity.
    pub fn capacity(&self) -> u32 {
        self.layout.capacity
    }

    /// Live rows.
    pub fn len(&self) -> usize {
        self.segment.words()[H_LEN].load(Ordering::Acquire) as usize
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn row(&self, index: usize) -> &[AtomicU64] {
        let start = HEADER_WORDS + index * self.layout.row_words;
        &self.segment.words()[start..start + self.layout.row_words]
    }

    /// Runs `read` on a consistent copy of a row (seqlock).
    fn read<T>(&self, row: &[AtomicU64], read: impl Fn(&[AtomicU64]) -> T) -> T {
        let mut spins = 0u32;
        loop {
            let before = row[SEQ].load(Ordering::Acquire);
            if before & 1 == 0 {
                let value = read(row);
                fence(Ordering::Acquire);
                if row[SEQ].load(Ordering::Relaxed) == before {
                    return value;
                }
            }
            spins += 1;
            if spins.is_multiple_of(SPINS_PER_OWNER_CHECK) {
                // A writer may have died mid-write, leaving the counter odd.
                self.repair_if_dead(row);
            }
            backoff(spins);
        }
    }

    /// The slot of `key`'s live row.
    fn find(&self, key: &Key) -> Option<usize> {
        let mask = self.layout.slots - 1;
        let mut index = key.hash as usize & mask;
        for _ in 0..self.layout.slots {
            let row = self.row(index);
            let (state, same) = self.read(row, |r| {
                let word = r[STATE].load(Ordering::Relaxed);
                (word & 0xff, word >> 8 == key.len as u64 && key_matches(r, key))
            });
            match state {
                EMPTY => return None,
                LIVE if same => return Some(index),
                _ => index = (index + 1) & mask,
            }
        }
        None
    }

    /// Reads a row.
    pub fn get(&self, key: &str) -> Result<Option<Row>, TableError> {
        let key = Key::new(key)?;
        loop {
            let Some(index) = self.find(&key) else { return Ok(None) };
            let row = self.row(index);
            // The row may have been deleted and reused between `find` and
            // here: check the key in the same consistent copy.
            let copy = self.read(row, |r| {
                let word = r[STATE].load(Ordering::Relaxed);
                (word & 0xff == LIVE && word >> 8 == key.len as u64 && key_matches(r, &key)).then(|| self.values(r))
            });
            if let Some(values) = copy {
                return Ok(Some(self.row_of(values)));
            }
        }
    }

    fn row_of(&self, values: Vec<Value>) -> Row {
        Row { names: self.names.clone(), values }
    }

    fn values(&self, row: &[AtomicU64]) -> Vec<Value> {
        self.layout
            .columns
            .iter()
            .map(|(column, offset)| match column.ty {
                ColumnType::Int => Value::Int(row[*offset].load(Ordering::Relaxed) as i64),
                ColumnType::Float => Value::Float(f64::from_bits(row[*offset].load(Ordering::Relaxed))),
                ColumnType::Str(max) => {
                    let len = (row[*offset].load(Ordering::Relaxed) as usize).min(max);
                    let bytes = unpack(&row[offset + 1..offset + 1 + max.div_ceil(8)], len);
                    Value::Str(String::from_utf8_lossy(&bytes).into_owned())
                }
            })
            .collect()
    }

    /// Checks a value against its column before anything is written.
    fn check(&self, name: &str, value: &Value) -> Result<(usize, ColumnType), TableError> {
        let (_, column, offset) = self.layout.column(name)?;
        match (column.ty, value) {
            (ColumnType::Int, Value::Int(_)) | (ColumnType::Float, Value::Float(_)) => Ok((offset, column.ty)),
            (ColumnType::Str(max), Value::Str(s)) if s.len() <= max => Ok((offset, column.ty)),
            (ColumnType::Str(max), Value::Str(s)) => {
                Err(TableError::StringTooLong { column: name.to_owned(), len: s.len(), max })
            }
            (ty, _) => Err(TableError::WrongType { column: name.to_owned(), expected: ty.holds() }),
        }
    }

    /// Sets columns of a row, creating it (other columns zero/empty) if the
    /// key is new. All values are checked before anything is written.
    pub fn set(&self, key: &str, values: &[(&str, Value)]) -> Result<(), TableError> {
        let checked: Vec<(usize, ColumnType, &Value)> = values
            .iter()
            .map(|(name, value)| self.check(name, value).map(|(offset, ty)| (offset, ty, value)))
            .collect::<Result<_, _>>()?;
        let key = Key::new(key)?;
        self.with_row(&key, |row| {
            for (offset, ty, value) in &checked {
                write_value(row, *offset, *ty, value);
            }
            Ok(())
        })
    }

    /// Creates a row with these values if `key` is new; returns `false`
    /// (writing nothing) if it exists. Atomic: of two processes inserting
    /// the same key at once, exactly one gets `true`.
    pub fn insert(&self, key: &str, values: &[(&str, Value)]) -> Result<bool, TableError> {
        let checked: Vec<(usize, ColumnType, &Value)> = values
            .iter()
            .map(|(name, value)| self.check(name, value).map(|(offset, ty)| (offset, ty, value)))
            .collect::<Result<_, _>>()?;
        let key = Key::new(key)?;
        let header = self.segment.words();
        self.lock(&header[H_LOCK], None)?;
        let result = if self.find(&key).is_some() {
            Ok(false)
        } else {
            self.insert_locked(&key).and_then(|index| {
                let row = self.row(index);
                self.lock(&row[LOCK], Some(row))?;
                write_begin(row);
                for (offset, ty, value) in &checked {
                    write_value(row, *offset, *ty, value);
                }
                write_end(row);
                self.unlock(&row[LOCK]);
                Ok(true)
            })
        };
        self.unlock(&header[H_LOCK]);
        result
    }

    /// Adds `delta` to an `i64` column (creating the row at 0) and returns
    /// the new value.
    pub fn incr(&self, key: &str, column: &str, delta: i64) -> Result<i64, TableError> {
        let (offset, _) = self.check(column, &Value::Int(0))?;
        let key = Key::new(key)?;
        self.with_row(&key, |row| {
            let now = row[offset].load(Ordering::Relaxed) as i64;
            let next = now.checked_add(delta).ok_or_else(|| TableError::Overflow(column.to_owned()))?;
            row[offset].store(next as u64, Ordering::Relaxed);
            Ok(next)
        })
    }

    /// Adds `delta` to an `f64` column (creating the row at 0.0).
    pub fn incr_float(&self, key: &str, column: &str, delta: f64) -> Result<f64, TableError> {
        let (offset, _) = self.check(column, &Value::Float(0.0))?;
        let key = Key::new(key)?;
        self.with_row(&key, |row| {
            let next = f64::from_bits(row[offset].load(Ordering::Relaxed)) + delta;
            row[offset].store(next.to_bits(), Ordering::Relaxed);
            Ok(next)
        })
    }

    /// Sets `column` to `new` if it holds `expected`; creates no row. Returns
    /// whether it was set. The building block for claiming a row atomically.
    pub fn compare_and_set(&self, key: &str, column: &str, expected: &Value, new: &Value) -> Result<bool, TableError> {
        let (offset, ty) = self.check(column, new)?;
        self.check(column, expected)?;
        let key = Key::new(key)?;
        loop {
            let Some(index) = self.find(&key) else { return Ok(false) };
            let row = self.row(index);
            self.lock(&row[LOCK], Some(row))?;
            if !live_with(row, &key) {
                self.unlock(&row[LOCK]);
                continue;
            }
            let current = self.values(row).swap_remove(self.layout.column(column)?.0);
            let matched = &current == expected;
            if matched {
                write_begin(row);
                write_value(row, offset, ty, new);
                write_end(row);
            }
            self.unlock(&row[LOCK]);
            return Ok(matched);
        }
    }

    /// Deletes a row; returns whether it existed.
    pub fn delete(&self, key: &str) -> Result<bool, TableError> {
        let key = Key::new(key)?;
        let header = self.segment.words();
        self.lock(&header[H_LOCK], None)?;
        let result = match self.find(&key) {
            Some(index) => {
                let row = self.row(index);
                match self.lock(&row[LOCK], Some(row)) {
                    Ok(()) => {
                        write_begin(row);
                        row[STATE].store(TOMBSTONE, Ordering::Relaxed);
                        write_end(row);
                        self.unlock(&row[LOCK]);
                        header[H_LEN].fetch_sub(1, Ordering::AcqRel);
                        Ok(true)
                    }
                    Err(e) => Err(e),
                }
            }
            None => Ok(false),
        };
        self.unlock(&header[H_LOCK]);
        result
    }

    /// A consistent copy of every live row (each row consistent on its own).
    pub fn iter(&self) -> Vec<(String, Row)> {
        let mut rows = Vec::new();
        for index in 0..self.layout.slots {
            let row = self.row(index);
            let copy = self.read(row, |r| {
                let word = r[STATE].load(Ordering::Relaxed);
                (word & 0xff == LIVE).then(|| {
                    let len = (word >> 8) as usize;
                    (unpack(&r[KEY..KEY + KEY_WORDS], len.min(KEY_MAX_BYTES)), self.values(r))
                })
            });
            if let Some((key, values)) = copy {
                rows.push((String::from_utf8_lossy(&key).into_owned(), self.row_of(values)));
            }
        }
        rows
    }

    /// Runs `write` on `key`'s row under its lock, inserting the row first
    /// if it does not exist.
    fn with_row<T>(&self, key: &Key, write: impl Fn(&[AtomicU64]) -> Result<T, TableError>) -> Result<T, TableError> {
        loop {
            let index = match self.find(key) {
                Some(index) => index,
                None => self.insert_empty(key)?,
            };
            let row = self.row(index);
            self.lock(&row[LOCK], Some(row))?;
            if !live_with(row, key) {
                // Deleted (and maybe reused) since `find`: start over.
                self.unlock(&row[LOCK]);
                continue;
            }
            write_begin(row);
            let result = write(row);
            write_end(row);
            self.unlock(&row[LOCK]);
            return result;
        }
    }

    /// Inserts an empty row for `key` under the table lock.
    fn insert_empty(&self, key: &Key) -> Result<usize, TableError> {
        let header = self.segment.words();
        self.lock(&header[H_LOCK], None)?;
        let result = self.insert_locked(key);
        self.unlock(&header[H_LOCK]);
        result
    }

    fn insert_locked(&self, key: &Key) -> Result<usize, TableError> {
        // Another writer may have inserted it while we waited for the lock.
        if let Some(index) = self.find(key) {
            return Ok(index);
        }
        let header = self.segment.words();
        if header[H_LEN].load(Ordering::Acquire) >= u64::from(self.layout.capacity) {
            return Err(TableError::TableFull { capacity: self.layout.capacity });
        }
        let mask = self.layout.slots - 1;
        let mut index = key.hash as usize & mask;
        // Fewer live rows than slots, so a free slot exists.
        while self.row(index)[STATE].load(Ordering::Acquire) & 0xff == LIVE {
            index = (index + 1) & mask;
        }
        let row = self.row(index);
        self.lock(&row[LOCK], Some(row))?;
        write_begin(row);
        for word in &row[KEY..] {
            word.store(0, Ordering::Relaxed);
        }
        for (word, value) in row[KEY..KEY + KEY_WORDS].iter().zip(key.words) {
            word.store(value, Ordering::Relaxed);
        }
        row[STATE].store(LIVE | ((key.len as u64) << 8), Ordering::Relaxed);
        write_end(row);
        self.unlock(&row[LOCK]);
        header[H_LEN].fetch_add(1, Ordering::AcqRel);
        Ok(index)
    }

    /// Takes a lock word. A holder that died is replaced (and, for a row,
    /// the half-written state repaired); a live holder that keeps it past
    /// `LOCK_WAIT_MAX` is an error, never a hang.
    fn lock(&self, word: &AtomicU64, row: Option<&[AtomicU64]>) -> Result<(), TableError> {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let holder = match word.compare_exchange_weak(0, self.owner, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(holder) => holder,
            };
            spins += 1;
            if holder != 0 && spins.is_multiple_of(SPINS_PER_OWNER_CHECK) {
                if !alive(Owner::pid_of(holder)) {
                    if word.compare_exchange(holder, self.owner, Ordering::Acquire, Ordering::Relaxed).is_ok() {
                        if let Some(row) = row {
                            finish_interrupted_write(row);
                        }
                        return Ok(());
                    }
                } else if started.elapsed() > LOCK_WAIT_MAX {
                    return Err(TableError::Locked { pid: Owner::pid_of(holder) });
                }
            }
            backoff(spins);
        }
    }

    fn unlock(&self, word: &AtomicU64) {
        word.store(0, Ordering::Release);
    }

    /// Called by readers that keep finding a row mid-write: if its writer
    /// died, take its lock and finish the write.
    fn repair_if_dead(&self, row: &[AtomicU64]) {
        let holder = row[LOCK].load(Ordering::Acquire);
        if holder != 0
            && !alive(Owner::pid_of(holder))
            && row[LOCK].compare_exchange(holder, self.owner, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            finish_interrupted_write(row);
            self.unlock(&row[LOCK]);
        }
    }

    /// Releases every lock held by `pid` (a worker that died), finishing
    /// the rows it was writing. Returns how many locks it released. The
    /// server calls this when a worker exits; writers and readers also do it
    /// lazily when they meet such a lock.
    pub fn repair(&self, pid: u32) -> usize {
        let header = self.segment.words();
        let mut released = 0;
        let mut release = |word: &AtomicU64, row: Option<&[AtomicU64]>| {
            let holder = word.load(Ordering::Acquire);
            if holder != 0
                && Owner::pid_of(holder) == pid
                && word.compare_exchange(holder, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                if let Some(row) = row {
                    finish_interrupted_write(row);
                }
                released += 1;
            }
        };
        release(&header[H_LOCK], None);
        for index in 0..self.layout.slots {
            let row = self.row(index);
            release(&row[LOCK], Some(row));
        }
        released
    }
}

fn key_matches(row: &[AtomicU64], key: &Key) -> bool {
    row[KEY..KEY + KEY_WORDS].iter().zip(key.words).all(|(word, expected)| word.load(Ordering::Relaxed) == expected)
}

/// Whether `row` is live with `key`; only called with the row's lock held,
/// so no writer can change it meanwhile.
fn live_with(row: &[AtomicU64], key: &Key) -> bool {
    let word = row[STATE].load(Ordering::Acquire);
    word & 0xff == LIVE && word >> 8 == key.len as u64 && key_matches(row, key)
}

fn write_value(row: &[AtomicU64], offset: usize, ty: ColumnType, value: &Value) {
    match (ty, value) {
        (ColumnType::Int, Value::Int(v)) => row[offset].store(*v as u64, Ordering::Relaxed),
        (ColumnType::Float, Value::Float(v)) => row[offset].store(v.to_bits(), Ordering::Relaxed),
        (ColumnType::Str(max), Value::Str(s)) => {
            let mut words = vec![0u64; max.div_ceil(8)];
            pack(s.as_bytes(), &mut words);
            row[offset].store(s.len() as u64, Ordering::Relaxed);
            for (word, value) in row[offset + 1..].iter().zip(words) {
                word.store(value, Ordering::Relaxed);
            }
        }
        // `check` ran first; a mismatch cannot reach here.
        _ => {}
    }
}

/// Makes the sequence counter odd: readers now retry.
fn write_begin(row: &[AtomicU64]) {
    let seq = row[SEQ].load(Ordering::Relaxed);
    row[SEQ].store(seq | 1, Ordering::Relaxed);
    fence(Ordering::Release);
}

/// Makes the counter even again, publishing the write.
fn write_end(row: &[AtomicU64]) {
    let seq = row[SEQ].load(Ordering::Relaxed);
    row[SEQ].store((seq | 1) + 1, Ordering::Release);
}

/// A writer died inside `write_begin`/`write_end`: end its write so readers
/// stop retrying. The row keeps whatever values it had reached.
fn finish_interrupted_write(row: &[AtomicU64]) {
    if row[SEQ].load(Ordering::Acquire) & 1 == 1 {
        write_end(row);
    }
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => !zombie(pid),
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

/// A process that exited but was not reaped still answers `kill(pid, 0)`.
fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(false)
}

fn backoff(spins: u32) {
    if spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
