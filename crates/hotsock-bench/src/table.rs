//! `table`: shared-table operations per second, from one process and from
//! four (this binary re-executed, the segment as stdin), next to a
//! `Mutex<HashMap>` in one process (one thread, then four threads) measured
//! in the same run.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use hotsock_table::{Column, ColumnType, Owner, Schema, Table, Value};

use crate::{chart, report};

/// Distinct keys the operations spread over.
const KEYS: usize = 1000;

fn schema() -> Schema {
    Schema {
        rows: 2 * KEYS as u32,
        columns: vec![
            Column { name: "n".into(), ty: ColumnType::Int },
            Column { name: "name".into(), ty: ColumnType::Str(32) },
        ],
    }
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|k| format!("player-{k}")).collect()
}

#[derive(Clone, Copy)]
enum Op {
    Get,
    Set,
    Incr,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Incr => "incr",
        }
    }
}

fn run_table(table: &Table, op: Op, ops: usize) -> Result<()> {
    let keys = keys();
    for i in 0..ops {
        let key = &keys[i % KEYS];
        match op {
            Op::Get => {
                table.get(key)?;
            }
            Op::Set => table.set(key, &[("n", Value::Int(i as i64)), ("name", Value::Str("someone".into()))])?,
            Op::Incr => {
                table.incr(key, "n", 1)?;
            }
        }
    }
    Ok(())
}

type Baseline = Mutex<HashMap<String, (i64, String)>>;

fn run_mutex(map: &Baseline, op: Op, ops: usize) {
    let keys = keys();
    for i in 0..ops {
        let key = &keys[i % KEYS];
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        match op {
            Op::Get => {
                std::hint::black_box(map.get(key).cloned());
            }
            Op::Set => {
                map.insert(key.clone(), (i as i64, "someone".into()));
            }
            Op::Incr => map.entry(key.clone()).or_insert((0, String::new())).0 += 1,
        }
    }
}

/// The child side of the 4-process runs: `table-child OP OPS`.
pub(crate) fn child(op: &str, ops: usize) -> Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let table = Table::open("bench", File::from(fd), &schema(), Owner::this_process())?;
    let op = match op {
        "get" => Op::Get,
        "set" => Op::Set,
        _ => Op::Incr,
    };
    run_table(&table, op, ops)
}

fn per_second(ops: usize, started: Instant) -> f64 {
    ops as f64 / started.elapsed().as_secs_f64()
}

pub(crate) fn run(ops: usize, out: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for op in [Op::Get, Op::Set, Op::Incr] {
        let table = Table::create("bench", &schema())?;
        run_table(&table, Op::Set, KEYS)?; // every key exists
        let started = Instant::now();
        run_table(&table, op, ops)?;
        let table_one = per_second(ops, started);

        let map: Arc<Baseline> = Arc::new(Mutex::new(HashMap::new()));
        run_mutex(&map, Op::Set, KEYS);
        let started = Instant::now();
        run_mutex(&map, op, ops);
        let mutex_one = per_second(ops, started);

        let started = Instant::now();
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(std::env::current_exe()?)
                    .args(["table-child", op.name(), &ops.to_string()])
                    .stdin(Stdio::from(table.file().try_clone()?))
                    .spawn()
                    .context("spawn a table child")
            })
            .collect::<Result<_>>()?;
        for mut child in children {
            if !child.wait()?.success() {
                bail!("a table child failed");
            }
        }
        let table_four = per_second(4 * ops, started);

        let started = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let map = map.clone();
                std::thread::spawn(move || run_mutex(&map, op, ops))
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
        let mutex_four = per_second(4 * ops, started);
        eprintln!(
            "   {}: table {table_one:.0}/s (4 procs {table_four:.0}/s), mutex {mutex_one:.0}/s (4 threads {mutex_four:.0}/s)",
            op.name()
        );
        rows.push((op, table_one, mutex_one, table_four, mutex_four));
    }
    chart::json(
        "table",
        &serde_json::json!(
            rows.iter()
                .map(|(op, t1, m1, t4, m4)| serde_json::json!({
                    "op": op.name(), "table_1_process": t1, "mutex_1_thread": m1,
                    "table_4_processes": t4, "mutex_4_threads": m4,
                }))
                .collect::<Vec<_>>()
        ),
    );
    let mut text = format!(
        "## table: shared-table operations per second over {KEYS} keys, {ops} operations per process\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench table --ops {ops}` (4 processes: this binary re-executed, mapping the same segment; baseline: `Mutex<HashMap<String, (i64, String)>>` in one process, 4 threads)\n\n\
         | op | table, 1 process | Mutex<HashMap>, 1 thread | ratio | table, 4 processes | Mutex<HashMap>, 4 threads | ratio |\n|---|---:|---:|---:|---:|---:|---:|\n",
        report::machine(),
        report::today()
    );
    for (op, t1, m1, t4, m4) in rows {
        text.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} |\n",
            op.name(),
            t1,
            m1,
            t1 / m1.max(1.0),
            t4,
            m4,
            t4 / m4.max(1.0)
        ));
    }
    text.push_str(
        "\nThe table works across processes (the mutex cannot); reads take no lock, writes take one row's lock word. \
         Four processes on two cores share them with each other.\n\n",
    );
    report::write_section(out, "table", &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}
