//! The table's behaviour, its limits at their edges, and what several real
//! processes (this test binary re-executed, the segment as their stdin) do
//! to it: exact counters under contention, and a writer SIGKILLed mid-write.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hotsock_table::{Column, ColumnType, KEY_MAX_BYTES, Owner, Schema, Table, TableError, Value};

fn schema(rows: u32) -> Schema {
    Schema {
        rows,
        columns: vec![
            Column { name: "n".into(), ty: ColumnType::Int },
            Column { name: "x".into(), ty: ColumnType::Float },
            Column { name: "name".into(), ty: ColumnType::Str(16) },
        ],
    }
}

#[test]
fn set_get_incr_cas_delete_iterate() {
    let table = Table::create("t", &schema(8)).expect("create");
    assert!(table.get("a").expect("get").is_none());
    table.set("a", &[("n", Value::Int(5)), ("name", Value::Str("alice".into()))]).expect("set");
    let row = table.get("a").expect("get").expect("row");
    assert_eq!(row.int("n"), Some(5));
    assert_eq!(row.str("name"), Some("alice"));
    assert_eq!(row.float("x"), Some(0.0));
    assert_eq!(table.incr("a", "n", 3).expect("incr"), 8);
    assert_eq!(table.incr("b", "n", -2).expect("incr creates"), -2);
    assert_eq!(table.incr_float("a", "x", 1.5).expect("incr f64"), 1.5);
    assert!(table.compare_and_set("a", "name", &Value::Str("alice".into()), &Value::Str("bob".into())).expect("cas"));
    assert!(!table.compare_and_set("a", "name", &Value::Str("alice".into()), &Value::Str("eve".into())).expect("cas"));
    assert!(!table.compare_and_set("missing", "n", &Value::Int(0), &Value::Int(1)).expect("cas"));
    assert_eq!(table.get("a").expect("get").expect("row").str("name"), Some("bob"));
    assert_eq!(table.len(), 2);
    let mut keys: Vec<String> = table.iter().into_iter().map(|(k, _)| k).collect();
    keys.sort();
    assert_eq!(keys, ["a", "b"]);
    assert!(!table.insert("b", &[("n", Value::Int(100))]).expect("insert existing"));
    assert_eq!(table.get("b").expect("get").expect("row").int("n"), Some(-2), "an existing row is left alone");
    assert!(table.insert("c", &[("n", Value::Int(3))]).expect("insert new"));
    assert!(table.delete("c").expect("delete"));
    assert!(table.delete("a").expect("delete"));
    assert!(!table.delete("a").expect("delete again"));
    assert!(table.get("a").expect("get").is_none());
    assert_eq!(table.len(), 1);
}

#[test]
fn capacity_is_exact_and_a_full_table_is_an_error() {
    let table = Table::create("full", &schema(3)).expect("create");
    for key in ["k1", "k2", "k3"] {
        table.incr(key, "n", 1).expect("fits");
    }
    assert!(matches!(table.incr("k4", "n", 1), Err(TableError::TableFull { capacity: 3 })));
    // Updating existing rows still works when full.
    assert_eq!(table.incr("k1", "n", 1).expect("update"), 2);
    assert!(table.delete("k2").expect("delete"));
    table.incr("k4", "n", 1).expect("room again after a delete");
    assert!(matches!(table.incr("k5", "n", 1), Err(TableError::TableFull { .. })));
    assert!(table.delete("k4").expect("delete"));
    // Many deletes and inserts reuse slots (and their tombstones) without
    // losing capacity.
    for round in 0..200 {
        let key = format!("r{round}");
        table.incr(&key, "n", 1).expect("insert");
        assert!(table.delete(&key).expect("delete"));
    }
    assert_eq!(table.len(), 2);
    table.incr("k6", "n", 1).expect("the third row fits again");
}

#[test]
fn keys_strings_columns_and_types_are_checked_never_truncated() {
    let table = Table::create("limits", &schema(4)).expect("create");
    let longest = "k".repeat(KEY_MAX_BYTES);
    table.incr(&longest, "n", 1).expect("a key at the limit");
    assert_eq!(table.get(&longest).expect("get").expect("row").int("n"), Some(1));
    let too_long = "k".repeat(KEY_MAX_BYTES + 1);
    assert!(matches!(table.incr(&too_long, "n", 1), Err(TableError::BadKey { len: 65, max: 64 })));
    assert!(matches!(table.get(""), Err(TableError::BadKey { len: 0, .. })));
    table.set("s", &[("name", Value::Str("0123456789abcdef".into()))]).expect("16 bytes fit");
    let error = table.set("s", &[("n", Value::Int(1)), ("name", Value::Str("0123456789abcdefg".into()))]);
    assert!(matches!(error, Err(TableError::StringTooLong { len: 17, max: 16, .. })));
    assert_eq!(table.get("s").expect("get").expect("row").int("n"), Some(0), "nothing written on error");
    assert!(matches!(table.incr("s", "nope", 1), Err(TableError::UnknownColumn(_))));
    assert!(matches!(table.incr("s", "name", 1), Err(TableError::WrongType { .. })));
    assert!(matches!(table.set("s", &[("n", Value::Float(1.0))]), Err(TableError::WrongType { .. })));
    table.set("big", &[("n", Value::Int(i64::MAX))]).expect("set");
    assert!(matches!(table.incr("big", "n", 1), Err(TableError::Overflow(_))));
}

#[test]
fn opening_with_another_schema_is_refused() {
    let table = Table::create("a", &schema(4)).expect("create");
    let file = table.file().try_clone().expect("clone");
    let mut other = schema(4);
    other.columns[0].name = "m".into();
    let error = Table::open("a", file, &other, Owner::this_process()).expect_err("mismatch");
    assert!(error.to_string().contains("different columns"), "{error}");
    assert!(matches!(Table::create("bad", &Schema { rows: 0, columns: vec![] }), Err(TableError::BadSchema(_))));
    assert!(ColumnType::parse("str:0").is_err() && ColumnType::parse("i32").is_err());
    assert_eq!(ColumnType::parse("str:8"), Ok(ColumnType::Str(8)));
}

/// Which child role this process plays, if any.
const ROLE: &str = "HOTSOCK_TABLE_TEST_ROLE";
const COUNTERS: usize = 100;
const INCREMENTS: i64 = 100_000;

/// Starts this test binary again as a child running `entry` with `role`,
/// the table's segment as its stdin.
fn child(table: &Table, entry: &str, role: &str) -> std::process::Child {
    let file = table.file().try_clone().expect("clone fd");
    Command::new(std::env::current_exe().expect("exe"))
        .args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdin(Stdio::from(file))
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child")
}

/// The child side: open the segment from stdin.
fn child_table(rows: u32) -> Table {
    let fd = std::io::stdin().as_fd().try_clone_to_owned().expect("stdin fd");
    Table::open("t", File::from(fd), &schema(rows), Owner { pid: std::process::id(), slot: 0, generation: 1 })
        .expect("open in child")
}

#[test]
fn child_entry() {
    match std::env::var(ROLE).as_deref() {
        Ok("incr") => {
            let table = child_table(128);
            for round in 0..INCREMENTS {
                for counter in 0..COUNTERS {
                    // Alternate directions through the keys so processes
                    // collide on rows in different orders.
                    let counter = if round % 2 == 0 { counter } else { COUNTERS - 1 - counter };
                    table.incr(&format!("counter-{counter}"), "n", 1).expect("incr in child");
                }
            }
        }
        Ok("writer") => {
            let table = child_table(64);
            let mut n = 0i64;
            loop {
                n += 1;
                let key = format!("w{}", n % 50);
                let name = format!("v{}", n % 1000);
                table
                    .set(&key, &[("n", Value::Int(n)), ("x", Value::Float(n as f64)), ("name", Value::Str(name))])
                    .expect("set");
            }
        }
        // Run as a normal test: nothing to do.
        _ => {}
    }
}

#[test]
fn four_processes_incrementing_the_same_counters_get_exact_totals() {
    let table = Table::create("t", &schema(128)).expect("create");
    let children: Vec<_> = (0..4).map(|_| child(&table, "child_entry", "incr")).collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success(), "a child failed");
    }
    for counter in 0..COUNTERS {
        let row = table.get(&format!("counter-{counter}")).expect("get").expect("row");
        assert_eq!(row.int("n"), Some(4 * INCREMENTS), "counter {counter}");
    }
    assert_eq!(table.len(), COUNTERS);
}

#[test]
fn a_writer_killed_mid_write_leaves_every_row_readable_and_unlocked() {
    let table = Table::create("t", &schema(64)).expect("create");
    for attempt in 0..5 {
        let mut writer = child(&table, "child_entry", "writer");
        // Let it get going, then kill it wherever it is.
        let started = Instant::now();
        while table.len() < 50 && started.elapsed() < Duration::from_secs(20) {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(20 + attempt * 7));
        writer.kill().expect("SIGKILL");
        writer.wait().expect("reap");
        let pid = writer.id();
        // Every row reads back (no reader spins forever on a half write).
        let read_started = Instant::now();
        assert_eq!(table.iter().len(), 50);
        for n in 0..50 {
            let row = table.get(&format!("w{n}")).expect("get").expect("row");
            assert!(row.int("n").is_some() && row.str("name").is_some());
        }
        assert!(read_started.elapsed() < Duration::from_secs(5));
        // Whatever lock the writer held is released (repair is idempotent
        // with the lazy takeover writers do).
        assert!(table.repair(pid) <= 2);
        // And writing goes on.
        for n in 0..50 {
            table.set(&format!("w{n}"), &[("n", Value::Int(-1))]).expect("write after the kill");
        }
    }
}

#[test]
fn segments_pass_over_a_unix_socket() {
    let a = Table::create("a", &schema(4)).expect("create");
    let b = Table::create("b", &schema(8)).expect("create");
    a.incr("k", "n", 7).expect("incr");
    let (server, worker) = std::os::unix::net::UnixStream::pair().expect("pair");
    hotsock_table::send_files(&server, &[a.file(), b.file()]).expect("send");
    let files = hotsock_table::receive_files(&worker).expect("receive");
    assert_eq!(files.len(), 2);
    let mut files = files.into_iter();
    let seen = Table::open("a", files.next().expect("a"), &schema(4), Owner::this_process()).expect("open a");
    assert_eq!(seen.get("k").expect("get").expect("row").int("n"), Some(7));
    assert!(Table::open("b", files.next().expect("b"), &schema(4), Owner::this_process()).is_err(), "b has 8 rows");
    hotsock_table::send_files(&server, &[]).expect("send none");
    assert!(hotsock_table::receive_files(&worker).expect("receive none").is_empty());
}
