//! Shared-table operations run by the server for a worker (frame kinds
//! 0x60-0x67, `docs/protocol.md`, "Tables through the server"): for SDKs
//! whose language cannot map the segment safely. PHP has no atomic
//! compare-and-swap or fences, and the table's seqlock reads and lock
//! words need both; so a PHP worker asks, and the server runs the
//! operation on its own mapping of the same segment, the one every Rust
//! worker maps too. Both kinds of worker therefore see the same rows with
//! the same atomicity.
//!
//! The worker task calls [`execute`] as it decodes each request, outside
//! the hub's lock: an operation may wait (up to the table's lock wait) for
//! a row a stopped Rust worker holds, and `Iterate` walks every slot, so it
//! must never stall routing. It must never panic on what a worker sent: a
//! bad table index, key or value is a typed [`TableFailure`] in the reply.

use bytes::{BufMut, Bytes, BytesMut};
use hotsock_protocol::{
    ColumnKind, TableFailure, TableOp, TableSpec, TableValue, TableValues, ToWorker, encode_table_row,
    encode_table_rows,
};
use hotsock_table::{Row, Table, TableError, Value};

/// Runs `op` on table number `table` and returns the `Reply` for `request`.
pub(crate) fn execute(tables: &[(TableSpec, Table)], request: u64, table: u16, op: TableOp) -> ToWorker {
    let result = match tables.get(usize::from(table)) {
        Some((spec, found)) => run(spec, found, op).map_err(|error| failure(spec, error)),
        None => Err(TableFailure::NoSuchTable { table }),
    };
    match result {
        Ok(body) => ToWorker::Reply { id: request, not_found: false, body },
        Err(failure) => ToWorker::Reply { id: request, not_found: true, body: failure.to_bytes() },
    }
}

fn run(spec: &TableSpec, table: &Table, op: TableOp) -> Result<Bytes, TableError> {
    Ok(match op {
        TableOp::Get { key } => {
            let row = table.get(&key)?.map(|row| values_of(spec, &row));
            encode_table_row(row.as_deref())
        }
        TableOp::Set { key, values } => {
            table.set(&key, &borrowed(&values))?;
            Bytes::new()
        }
        TableOp::Insert { key, values } => flag(table.insert(&key, &borrowed(&values))?),
        TableOp::Incr { key, column, delta } => {
            Bytes::copy_from_slice(&table.incr(&key, &column, delta)?.to_le_bytes())
        }
        TableOp::IncrFloat { key, column, delta } => {
            Bytes::copy_from_slice(&table.incr_float(&key, &column, delta)?.to_bits().to_le_bytes())
        }
        TableOp::CompareAndSet { key, column, expected, new } => {
            flag(table.compare_and_set(&key, &column, &value(expected), &value(new))?)
        }
        TableOp::Delete { key } => flag(table.delete(&key)?),
        TableOp::Iterate => {
            let rows: Vec<(String, TableValues)> =
                table.iter().into_iter().map(|(key, row)| (key, values_of(spec, &row))).collect();
            encode_table_rows(&rows)
        }
    })
}

fn flag(yes: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(1);
    buf.put_u8(u8::from(yes));
    buf.freeze()
}

fn value(value: TableValue) -> Value {
    match value {
        TableValue::Int(v) => Value::Int(v),
        TableValue::Float(v) => Value::Float(v),
        TableValue::Str(v) => Value::Str(v),
    }
}

fn borrowed(values: &[(String, TableValue)]) -> Vec<(&str, Value)> {
    values.iter().map(|(column, v)| (column.as_str(), value(v.clone()))).collect()
}

/// A row's values in the declared column order.
fn values_of(spec: &TableSpec, row: &Row) -> TableValues {
    spec.columns
        .iter()
        .filter_map(|(name, _)| {
            let v = match row.get(name)? {
                Value::Int(v) => TableValue::Int(*v),
                Value::Float(v) => TableValue::Float(*v),
                Value::Str(v) => TableValue::Str(v.clone()),
            };
            Some((name.clone(), v))
        })
        .collect()
}

/// The table's error as the protocol carries it; the same cases as the
/// Rust SDK's `TableError`.
fn failure(spec: &TableSpec, error: TableError) -> TableFailure {
    match error {
        TableError::TableFull { capacity } => TableFailure::TableFull { capacity: u64::from(capacity) },
        TableError::BadKey { len, max } => TableFailure::BadKey { len: len as u64, max: max as u64 },
        TableError::UnknownColumn(column) => TableFailure::UnknownColumn { column },
        TableError::WrongType { column, .. } => {
            // The declaration says what the column holds, more surely
            // than the error's wording.
            let declared = spec.columns.iter().find(|(name, _)| *name == column).map(|(_, ty)| ty.as_str());
            let expected = match declared {
                Some("i64") => ColumnKind::Int,
                Some("f64") => ColumnKind::Float,
                _ => ColumnKind::Str,
            };
            TableFailure::WrongType { column, expected }
        }
        TableError::StringTooLong { column, len, max } => {
            TableFailure::StringTooLong { column, len: len as u64, max: max as u64 }
        }
        TableError::Overflow(column) => TableFailure::Overflow { column },
        TableError::Locked { pid } => TableFailure::Locked { pid: u64::from(pid) },
        other => TableFailure::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use hotsock_protocol::{decode_table_row, decode_table_rows};
    use hotsock_table::{Column, ColumnType, Schema};

    use super::*;

    fn tables() -> Vec<(TableSpec, Table)> {
        let schema = Schema {
            rows: 8,
            columns: vec![
                Column { name: "n".into(), ty: ColumnType::Int },
                Column { name: "x".into(), ty: ColumnType::Float },
                Column { name: "s".into(), ty: ColumnType::Str(4) },
            ],
        };
        let spec = TableSpec {
            name: "t".into(),
            rows: 8,
            columns: vec![("n".into(), "i64".into()), ("x".into(), "f64".into()), ("s".into(), "str:4".into())],
        };
        vec![(spec, Table::create("t", &schema).expect("table"))]
    }

    fn ok(reply: ToWorker) -> Bytes {
        match reply {
            ToWorker::Reply { id: 5, not_found: false, body } => body,
            other => panic!("expected a success reply to 5, got {other:?}"),
        }
    }

    fn refused(reply: ToWorker) -> TableFailure {
        match reply {
            ToWorker::Reply { id: 5, not_found: true, body } => TableFailure::decode(&body).expect("failure body"),
            other => panic!("expected a refusal of 5, got {other:?}"),
        }
    }

    #[test]
    fn operations_answer_as_the_table_does() {
        let tables = tables();
        let run = |op| execute(&tables, 5, 0, op);
        let values = vec![("n".to_owned(), TableValue::Int(1)), ("s".to_owned(), TableValue::Str("ab".into()))];
        assert_eq!(&ok(run(TableOp::Insert { key: "k".into(), values: values.clone() }))[..], [1]);
        assert_eq!(&ok(run(TableOp::Insert { key: "k".into(), values }))[..], [0], "exists already");
        let incr = ok(run(TableOp::Incr { key: "k".into(), column: "n".into(), delta: 41 }));
        assert_eq!(i64::from_le_bytes(incr[..].try_into().expect("8 bytes")), 42);
        let cas = |expected, new| TableOp::CompareAndSet {
            key: "k".into(),
            column: "n".into(),
            expected: TableValue::Int(expected),
            new: TableValue::Int(new),
        };
        assert_eq!(&ok(run(cas(1, 7)))[..], [0], "it holds 42");
        assert_eq!(&ok(run(cas(42, 7)))[..], [1]);
        let row = decode_table_row(&ok(run(TableOp::Get { key: "k".into() }))).expect("row").expect("found");
        assert_eq!(
            row,
            vec![
                ("n".to_owned(), TableValue::Int(7)),
                ("x".to_owned(), TableValue::Float(0.0)),
                ("s".to_owned(), TableValue::Str("ab".into()))
            ]
        );
        let rows = decode_table_rows(&ok(run(TableOp::Iterate))).expect("rows");
        assert_eq!(rows, vec![("k".to_owned(), row)]);
        assert_eq!(&ok(run(TableOp::Delete { key: "k".into() }))[..], [1]);
        assert_eq!(decode_table_row(&ok(run(TableOp::Get { key: "k".into() }))).expect("row"), None);
    }

    #[test]
    fn errors_are_typed() {
        let tables = tables();
        let run = |op| refused(execute(&tables, 5, 0, op));
        let set = |column: &str, value| TableOp::Set { key: "k".into(), values: vec![(column.to_owned(), value)] };
        assert_eq!(
            run(set("x", TableValue::Int(1))),
            TableFailure::WrongType { column: "x".into(), expected: ColumnKind::Float }
        );
        assert_eq!(
            run(set("s", TableValue::Str("12345".into()))),
            TableFailure::StringTooLong { column: "s".into(), len: 5, max: 4 }
        );
        assert_eq!(run(set("nope", TableValue::Int(1))), TableFailure::UnknownColumn { column: "nope".into() });
        assert_eq!(run(TableOp::Get { key: String::new() }), TableFailure::BadKey { len: 0, max: 64 });
        let incr = |delta| TableOp::Incr { key: "k".into(), column: "n".into(), delta };
        ok(execute(&tables, 5, 0, incr(i64::MAX)));
        assert_eq!(run(incr(1)), TableFailure::Overflow { column: "n".into() });
        for n in 0..7 {
            ok(execute(&tables, 5, 0, TableOp::Set { key: format!("row{n}"), values: Vec::new() }));
        }
        assert_eq!(
            run(TableOp::Set { key: "one more".into(), values: Vec::new() }),
            TableFailure::TableFull { capacity: 8 }
        );
        assert_eq!(refused(execute(&tables, 5, 3, TableOp::Iterate)), TableFailure::NoSuchTable { table: 3 });
    }
}
