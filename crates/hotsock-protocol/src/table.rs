//! Bodies of the table frames (`TableGet` .. `TableIterate`, kinds
//! 0x60-0x67): shared-table operations a worker asks the server to run on
//! its own mapping of the segment, for SDKs that cannot map it safely (PHP
//! has no atomic compare-and-swap). The server answers each with a `Reply`
//! to its request id: the result, or `NOT_FOUND` with a [`TableFailure`].
//!
//! Layouts (after the header; `id` is the request id):
//!
//! ```text
//!   every request   table u16 (its place in Hello's list), then
//!   Get, Delete     key string
//!   Set, Insert     key string, values
//!   Incr            key string, column string, delta i64
//!   IncrFloat       key string, column string, delta f64 (its bits, u64)
//!   CompareAndSet   key string, column string, expected value, new value
//!   Iterate         nothing more
//!   value           tag u8 (1 i64, 2 f64, 3 string), then 8 bytes or a string
//!   values          count u16, then per column: name string, value
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::{FieldReader, put_bytes};
use crate::{Kind, ProtocolError};

/// A value in a table column, as it travels.
#[derive(Debug, Clone, PartialEq)]
pub enum TableValue {
    /// For `i64` columns.
    Int(i64),
    /// For `f64` columns.
    Float(f64),
    /// For `str:N` columns.
    Str(String),
}

const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_STR: u8 = 3;

/// Column names with their values: a row, or the columns a write sets.
pub type TableValues = Vec<(String, TableValue)>;

/// One table operation, as the worker asks for it.
#[derive(Debug, Clone, PartialEq)]
pub enum TableOp {
    /// Read a row. Reply: `found u8`, then the row's values if found.
    Get {
        /// The row's key.
        key: String,
    },
    /// Set columns, creating the row if new. Reply: empty.
    Set {
        /// The row's key.
        key: String,
        /// The columns to set.
        values: TableValues,
    },
    /// Create the row if the key is new. Reply: `inserted u8`.
    Insert {
        /// The row's key.
        key: String,
        /// The new row's columns.
        values: TableValues,
    },
    /// Add to an `i64` column. Reply: the new value, `i64`.
    Incr {
        /// The row's key.
        key: String,
        /// The column.
        column: String,
        /// What to add.
        delta: i64,
    },
    /// Add to an `f64` column. Reply: the new value, `f64`.
    IncrFloat {
        /// The row's key.
        key: String,
        /// The column.
        column: String,
        /// What to add.
        delta: f64,
    },
    /// Set a column if it holds `expected`. Reply: `set u8`.
    CompareAndSet {
        /// The row's key.
        key: String,
        /// The column.
        column: String,
        /// What it must hold.
        expected: TableValue,
        /// What it gets.
        new: TableValue,
    },
    /// Delete a row. Reply: `existed u8`.
    Delete {
        /// The row's key.
        key: String,
    },
    /// Every live row. Reply: `count u32`, then per row: key string, values.
    Iterate,
}

impl TableOp {
    /// The frame kind that carries this operation.
    pub fn kind(&self) -> Kind {
        match self {
            TableOp::Get { .. } => Kind::TableGet,
            TableOp::Set { .. } => Kind::TableSet,
            TableOp::Insert { .. } => Kind::TableInsert,
            TableOp::Incr { .. } => Kind::TableIncr,
            TableOp::IncrFloat { .. } => Kind::TableIncrFloat,
            TableOp::CompareAndSet { .. } => Kind::TableCompareAndSet,
            TableOp::Delete { .. } => Kind::TableDelete,
            TableOp::Iterate => Kind::TableIterate,
        }
    }

    pub(crate) fn encode_body(&self, table: u16, dst: &mut BytesMut) {
        dst.put_u16_le(table);
        match self {
            TableOp::Get { key } | TableOp::Delete { key } => put_bytes(dst, key.as_bytes()),
            TableOp::Set { key, values } | TableOp::Insert { key, values } => {
                put_bytes(dst, key.as_bytes());
                put_values(dst, values);
            }
            TableOp::Incr { key, column, delta } => {
                put_bytes(dst, key.as_bytes());
                put_bytes(dst, column.as_bytes());
                dst.put_i64_le(*delta);
            }
            TableOp::IncrFloat { key, column, delta } => {
                put_bytes(dst, key.as_bytes());
                put_bytes(dst, column.as_bytes());
                dst.put_u64_le(delta.to_bits());
            }
            TableOp::CompareAndSet { key, column, expected, new } => {
                put_bytes(dst, key.as_bytes());
                put_bytes(dst, column.as_bytes());
                put_value(dst, expected);
                put_value(dst, new);
            }
            TableOp::Iterate => {}
        }
    }

    /// Decodes the body of a table frame of `kind` into (table, op).
    pub(crate) fn decode_body(kind: Kind, payload: &[u8]) -> Result<(u16, TableOp), ProtocolError> {
        let mut r = FieldReader::new(kind, payload);
        let table = r.u16()?;
        let op = match kind {
            Kind::TableGet => TableOp::Get { key: r.string()? },
            Kind::TableDelete => TableOp::Delete { key: r.string()? },
            Kind::TableSet => TableOp::Set { key: r.string()?, values: read_values(&mut r)? },
            Kind::TableInsert => TableOp::Insert { key: r.string()?, values: read_values(&mut r)? },
            Kind::TableIncr => TableOp::Incr { key: r.string()?, column: r.string()?, delta: r.u64()? as i64 },
            Kind::TableIncrFloat => {
                TableOp::IncrFloat { key: r.string()?, column: r.string()?, delta: f64::from_bits(r.u64()?) }
            }
            Kind::TableCompareAndSet => TableOp::CompareAndSet {
                key: r.string()?,
                column: r.string()?,
                expected: read_value(&mut r)?,
                new: read_value(&mut r)?,
            },
            Kind::TableIterate => TableOp::Iterate,
            _ => return Err(ProtocolError::BadBody { kind, reason: "not a table frame" }),
        };
        r.finish()?;
        Ok((table, op))
    }
}

fn put_value(dst: &mut BytesMut, value: &TableValue) {
    match value {
        TableValue::Int(v) => {
            dst.put_u8(TAG_INT);
            dst.put_i64_le(*v);
        }
        TableValue::Float(v) => {
            dst.put_u8(TAG_FLOAT);
            dst.put_u64_le(v.to_bits());
        }
        TableValue::Str(s) => {
            dst.put_u8(TAG_STR);
            put_bytes(dst, s.as_bytes());
        }
    }
}

fn put_values(dst: &mut BytesMut, values: &[(String, TableValue)]) {
    // A row has at most u16::MAX columns (Hello counts them in a u16).
    dst.put_u16_le(u16::try_from(values.len()).unwrap_or(u16::MAX));
    for (column, value) in values.iter().take(usize::from(u16::MAX)) {
        put_bytes(dst, column.as_bytes());
        put_value(dst, value);
    }
}

fn read_value(r: &mut FieldReader<'_>) -> Result<TableValue, ProtocolError> {
    Ok(match r.u8()? {
        TAG_INT => TableValue::Int(r.u64()? as i64),
        TAG_FLOAT => TableValue::Float(f64::from_bits(r.u64()?)),
        TAG_STR => TableValue::Str(r.string()?),
        _ => return Err(r.bad("unknown table value tag")),
    })
}

fn read_values(r: &mut FieldReader<'_>) -> Result<TableValues, ProtocolError> {
    let count = r.u16()?;
    // No capacity from the count: a forged count must not allocate.
    let mut values = Vec::new();
    for _ in 0..count {
        values.push((r.string()?, read_value(r)?));
    }
    Ok(values)
}

/// The body of a `Reply` to `TableGet`: `found u8`, then the row.
pub fn encode_table_row(row: Option<&[(String, TableValue)]>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(u8::from(row.is_some()));
    if let Some(values) = row {
        put_values(&mut buf, values);
    }
    buf.freeze()
}

/// Decodes the body of a `Reply` to `TableGet`.
pub fn decode_table_row(body: &[u8]) -> Result<Option<TableValues>, ProtocolError> {
    let mut r = FieldReader::new(Kind::Reply, body);
    let row = if r.u8()? != 0 { Some(read_values(&mut r)?) } else { None };
    r.finish()?;
    Ok(row)
}

/// The body of a `Reply` to `TableIterate`: `count u32`, then per row its
/// key and values.
pub fn encode_table_rows(rows: &[(String, TableValues)]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u32_le(u32::try_from(rows.len()).unwrap_or(u32::MAX));
    for (key, values) in rows {
        put_bytes(&mut buf, key.as_bytes());
        put_values(&mut buf, values);
    }
    buf.freeze()
}

/// Decodes the body of a `Reply` to `TableIterate`.
pub fn decode_table_rows(body: &[u8]) -> Result<Vec<(String, TableValues)>, ProtocolError> {
    let mut r = FieldReader::new(Kind::Reply, body);
    let count = r.u32()?;
    let mut rows = Vec::new();
    for _ in 0..count {
        rows.push((r.string()?, read_values(&mut r)?));
    }
    r.finish()?;
    Ok(rows)
}

/// What a column holds, as [`TableFailure::WrongType`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `i64`.
    Int,
    /// `f64`.
    Float,
    /// `str:N`.
    Str,
}

impl ColumnKind {
    fn code(self) -> u64 {
        match self {
            ColumnKind::Int => 1,
            ColumnKind::Float => 2,
            ColumnKind::Str => 3,
        }
    }

    /// What the column holds, as the Rust SDK's `TableError` says it.
    pub fn describe(self) -> &'static str {
        match self {
            ColumnKind::Int => "i64 values",
            ColumnKind::Float => "f64 values",
            ColumnKind::Str => "strings",
        }
    }
}

/// Why a table operation failed: the Rust SDK's `TableError`, plus the
/// one error only a request by index can meet (no such table). Travels in
/// a `Reply` with `NOT_FOUND`: `code u16`, `a u64`, `b u64`,
/// `column string` (for code 9: what went wrong), then the message
/// (UTF-8, rest of the body: the text below, for people and logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableFailure {
    /// The request named a table Hello did not list (code 1; a: its index).
    #[error("no table number {table}: Hello lists the tables")]
    NoSuchTable {
        /// The index asked for.
        table: u16,
    },
    /// Every row is in use (code 2; a: the capacity).
    #[error("table full: all {capacity} rows are in use")]
    TableFull {
        /// The declared row count.
        capacity: u64,
    },
    /// A key that is empty or too long (code 3; a: its length, b: the limit).
    #[error("key of {len} bytes; keys are 1 to {max} bytes")]
    BadKey {
        /// The key's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// No such column (code 4).
    #[error("no column named {column:?}")]
    UnknownColumn {
        /// The column asked for.
        column: String,
    },
    /// The value does not fit the column's type (code 5; a: 1 i64, 2 f64,
    /// 3 string, what the column holds).
    #[error("column {column:?} holds {}", expected.describe())]
    WrongType {
        /// The column.
        column: String,
        /// What it holds.
        expected: ColumnKind,
    },
    /// A string longer than its column (code 6; a: its length, b: the
    /// column's size).
    #[error("column {column:?} holds at most {max} bytes; got {len}")]
    StringTooLong {
        /// The column.
        column: String,
        /// The string's length.
        len: u64,
        /// The column's size.
        max: u64,
    },
    /// An increment would overflow an i64 (code 7).
    #[error("incrementing column {column:?} would overflow")]
    Overflow {
        /// The column.
        column: String,
    },
    /// A live process held a row lock longer than any write takes (code 8;
    /// a: its pid).
    #[error("row locked by pid {pid} for too long")]
    Locked {
        /// The holder.
        pid: u64,
    },
    /// Anything else: the server's side (code 9).
    #[error("table error in the server: {0}")]
    Internal(String),
}

impl TableFailure {
    fn code(&self) -> u16 {
        match self {
            TableFailure::NoSuchTable { .. } => 1,
            TableFailure::TableFull { .. } => 2,
            TableFailure::BadKey { .. } => 3,
            TableFailure::UnknownColumn { .. } => 4,
            TableFailure::WrongType { .. } => 5,
            TableFailure::StringTooLong { .. } => 6,
            TableFailure::Overflow { .. } => 7,
            TableFailure::Locked { .. } => 8,
            TableFailure::Internal(_) => 9,
        }
    }

    /// Encodes this as the body of a refusing `Reply`.
    pub fn to_bytes(&self) -> Bytes {
        let none = String::new();
        let (a, b, column) = match self {
            TableFailure::NoSuchTable { table } => (u64::from(*table), 0, &none),
            TableFailure::TableFull { capacity } => (*capacity, 0, &none),
            TableFailure::BadKey { len, max } => (*len, *max, &none),
            TableFailure::UnknownColumn { column } | TableFailure::Overflow { column } => (0, 0, column),
            TableFailure::WrongType { column, expected } => (expected.code(), 0, column),
            TableFailure::StringTooLong { column, len, max } => (*len, *max, column),
            TableFailure::Locked { pid } => (*pid, 0, &none),
            TableFailure::Internal(what) => (0, 0, what),
        };
        let message = self.to_string();
        let mut buf = BytesMut::with_capacity(26 + column.len() + message.len());
        buf.put_u16_le(self.code());
        buf.put_u64_le(a);
        buf.put_u64_le(b);
        put_bytes(&mut buf, column.as_bytes());
        buf.extend_from_slice(message.as_bytes());
        buf.freeze()
    }

    /// Decodes the body of a refusing `Reply` to a table request.
    pub fn decode(body: &[u8]) -> Result<TableFailure, ProtocolError> {
        let mut r = FieldReader::new(Kind::Reply, body);
        let (code, a, b, column) = (r.u16()?, r.u64()?, r.u64()?, r.string()?);
        if std::str::from_utf8(r.rest()).is_err() {
            return Err(ProtocolError::BadBody { kind: Kind::Reply, reason: "table error message is not UTF-8" });
        }
        let bad = ProtocolError::BadBody { kind: Kind::Reply, reason: "malformed table error" };
        Ok(match code {
            1 => TableFailure::NoSuchTable { table: u16::try_from(a).map_err(|_| bad)? },
            2 => TableFailure::TableFull { capacity: a },
            3 => TableFailure::BadKey { len: a, max: b },
            4 => TableFailure::UnknownColumn { column },
            5 => TableFailure::WrongType {
                column,
                expected: match a {
                    1 => ColumnKind::Int,
                    2 => ColumnKind::Float,
                    3 => ColumnKind::Str,
                    _ => return Err(bad),
                },
            },
            6 => TableFailure::StringTooLong { column, len: a, max: b },
            7 => TableFailure::Overflow { column },
            8 => TableFailure::Locked { pid: a },
            9 => TableFailure::Internal(column),
            _ => return Err(ProtocolError::BadBody { kind: Kind::Reply, reason: "unknown table error code" }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_round_trip() {
        let failures = [
            TableFailure::NoSuchTable { table: 7 },
            TableFailure::TableFull { capacity: 8192 },
            TableFailure::BadKey { len: 0, max: 64 },
            TableFailure::UnknownColumn { column: "nope".into() },
            TableFailure::WrongType { column: "n".into(), expected: ColumnKind::Float },
            TableFailure::StringTooLong { column: "name".into(), len: 40, max: 32 },
            TableFailure::Overflow { column: "n".into() },
            TableFailure::Locked { pid: 4242 },
            TableFailure::Internal("segment gone".into()),
        ];
        for failure in failures {
            assert_eq!(TableFailure::decode(&failure.to_bytes()), Ok(failure));
        }
        assert!(TableFailure::decode(&[99, 0]).is_err());
        let mut unknown = TableFailure::Overflow { column: "n".into() }.to_bytes().to_vec();
        unknown[0] = 42;
        assert!(TableFailure::decode(&unknown).is_err());
    }

    #[test]
    fn the_message_is_the_rust_sdks() {
        let failure = TableFailure::StringTooLong { column: "name".into(), len: 40, max: 32 };
        assert_eq!(failure.to_string(), "column \"name\" holds at most 32 bytes; got 40");
        let body = failure.to_bytes();
        assert!(body.ends_with(failure.to_string().as_bytes()));
    }

    #[test]
    fn rows_round_trip() {
        let row: TableValues = vec![
            ("n".into(), TableValue::Int(-3)),
            ("x".into(), TableValue::Float(0.5)),
            ("s".into(), TableValue::Str("héllo".into())),
        ];
        assert_eq!(decode_table_row(&encode_table_row(Some(&row))).expect("row"), Some(row.clone()));
        assert_eq!(decode_table_row(&encode_table_row(None)).expect("none"), None);
        let rows = vec![("a".to_owned(), row.clone()), ("b".to_owned(), Vec::new())];
        assert_eq!(decode_table_rows(&encode_table_rows(&rows)).expect("rows"), rows);
        assert!(decode_table_rows(&[5, 0, 0, 0]).is_err(), "a count with no rows behind it");
        assert!(decode_table_row(&[1, 1, 0, 1, 0, 0, 0, b'n', 9]).is_err(), "an unknown value tag");
    }
}
