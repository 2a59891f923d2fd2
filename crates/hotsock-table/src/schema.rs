//! Column types, the schema, and where each field of a row lives. Every
//! field is a whole number of 64-bit words, so the segment can be viewed
//! as one array of atomic words (see `segment.rs`).

use crate::TableError;

/// Longest key any table accepts, in bytes (Swoole silently truncates keys
/// over 63 bytes; here a longer key is an error).
pub const KEY_MAX_BYTES: usize = 64;
/// Longest string column, in bytes.
pub const STRING_MAX_BYTES: usize = 4096;
/// Most rows a table may be declared with.
pub const ROWS_MAX: u32 = 1 << 24;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// Signed 64-bit integer.
    Int,
    /// 64-bit float.
    Float,
    /// UTF-8 string of at most this many bytes.
    Str(usize),
}

impl ColumnType {
    /// What a column of this type holds, for `TableError::WrongType`.
    pub fn holds(self) -> &'static str {
        match self {
            ColumnType::Int => "i64 values",
            ColumnType::Float => "f64 values",
            ColumnType::Str(_) => "strings",
        }
    }

    /// Parses the config spelling: `i64`, `f64`, `str:N`.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        match text {
            "i64" => Ok(ColumnType::Int),
            "f64" => Ok(ColumnType::Float),
            _ => {
                let n = text
                    .strip_prefix("str:")
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| format!("unknown column type {text:?}; use i64, f64 or str:N"))?;
                if n == 0 || n > STRING_MAX_BYTES {
                    return Err(format!("str:{n}: the length must be between 1 and {STRING_MAX_BYTES}"));
                }
                Ok(ColumnType::Str(n))
            }
        }
    }

    /// Words this column takes in a row: one for numbers; for strings a
    /// length word plus the bytes rounded up to whole words.
    fn words(self) -> usize {
        match self {
            ColumnType::Int | ColumnType::Float => 1,
            ColumnType::Str(n) => 1 + n.div_ceil(8),
        }
    }

    fn tag(self) -> u64 {
        match self {
            ColumnType::Int => 1,
            ColumnType::Float => 2,
            ColumnType::Str(n) => 3 | ((n as u64) << 8),
        }
    }
}

/// A named, typed column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type.
    pub ty: ColumnType,
}

/// A table's declaration: its exact capacity and its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Rows the table holds; one more is `TableFull`.
    pub rows: u32,
    /// The columns, in order.
    pub columns: Vec<Column>,
}

/// Words of a row's fixed part: seqlock counter, lock word, state and key
/// length, then the key.
pub(crate) const SEQ: usize = 0;
pub(crate) const LOCK: usize = 1;
pub(crate) const STATE: usize = 2;
pub(crate) const KEY: usize = 3;
pub(crate) const KEY_WORDS: usize = KEY_MAX_BYTES / 8;

/// Where things are, computed once from the schema.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) columns: Vec<(Column, usize)>,
    pub(crate) row_words: usize,
    /// Slots in the open-addressing array: a power of two at least twice
    /// the capacity, so probe sequences stay short even when full.
    pub(crate) slots: usize,
    pub(crate) capacity: u32,
    pub(crate) hash: u64,
}

impl Layout {
    pub(crate) fn new(schema: &Schema) -> Result<Layout, TableError> {
        if schema.rows == 0 || schema.rows > ROWS_MAX {
            return Err(TableError::BadSchema(format!("rows must be between 1 and {ROWS_MAX}")));
        }
        if schema.columns.is_empty() {
            return Err(TableError::BadSchema("a table needs at least one column".into()));
        }
        let mut offset = KEY + KEY_WORDS;
        let mut columns = Vec::new();
        let mut hash = Fnv::new();
        hash.write(&schema.rows.to_le_bytes());
        for column in &schema.columns {
            if columns.iter().any(|(c, _): &(Column, usize)| c.name == column.name) {
                return Err(TableError::BadSchema(format!("column {:?} is declared twice", column.name)));
            }
            hash.write(column.name.as_bytes());
            hash.write(&column.ty.tag().to_le_bytes());
            columns.push((column.clone(), offset));
            offset += column.ty.words();
        }
        let slots = (schema.rows as usize * 2).next_power_of_two();
        Ok(Layout { columns, row_words: offset, slots, capacity: schema.rows, hash: hash.finish() })
    }

    pub(crate) fn column(&self, name: &str) -> Result<(usize, &Column, usize), TableError> {
        self.columns
            .iter()
            .enumerate()
            .find(|(_, (c, _))| c.name == name)
            .map(|(i, (c, offset))| (i, c, *offset))
            .ok_or_else(|| TableError::UnknownColumn(name.to_owned()))
    }
}

/// FNV-1a: a hash every process computes identically, whatever Rust
/// version built it (std's hasher makes no such promise).
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}
