//! The `cluster` section of BENCHMARKS.md and its JSON: every figure next
//! to the single node's, measured in the same run.

use std::collections::BTreeMap;

use super::{AIM_RATIO, FANOUT_CASES, Memory, Params, Tally, Trip, TripSet};
use crate::report::{machine, today};

/// What was found about the cross-node round trip; measured by hand (the
/// commands are in the text) and kept with the table it explains.
const ROUND_TRIP_FINDINGS: &str = "\nWhere a cross-node hop's time goes (measured 2026-12-02 on this machine while it was quiet, load \
average below 1). In a run at 10:13 UTC with nothing else running (`--rounds 5`), p99 followed p50: 1 pair 3.53x (p50 3.47x), \
10 pairs 3.74x (p50 3.56x). Earlier runs on a loaded host that met the aim for 10 pairs did so because the \
baseline's own p99 was inflated, so the gap is not noise. With 1 pair, each crossing `send_to_uid` adds \
about 165 µs to the round trip over both clients on one cluster node (513 against 184 µs). Redis's share, \
measured with `redis-benchmark -c 1` running the same routing script (Redis 7.0.15): a round trip of 63-71 \
µs, against 31 µs for PING. `INFO commandstats` gave 28.5 µs per `EVALSHA` for the 12 commands the script ran \
then. Since 2026-12-03 a log is one hash and its TTLs are pushed back once per tenth of them, so the script runs \
6 (HGETALL, GET, HMGET, HINCRBY, XADD, PUBLISH; a TIME was added since, after a review): 25.5 µs per `EVALSHA` on a slower day, where by pieces a script \
that only returns costs 2.2 µs (3.3 with the 10 arguments, 5.1 with the script's function definitions), an \
`XADD` inside one 5.8 µs more, a GET 0.7: Lua's own work, not the commands, is most of it. Paired runs of that \
change (2 each, a noisy host): Redis CPU per 10-pair round trip 83 and 81 µs before, 68 and 58 after, the nodes' \
184 and 192 before, 149 and 134 after, p50 1824 and 1772 µs before, 1599 and 1386 after; 1 pair unchanged. The \
rest is wake-ups: one hop wakes Redis and the other node's process, each waiting for a core on this 2-core \
machine, and inside a node a few tasks (the cluster task, redis-rs's driver for each connection). \
`TOKIO_WORKER_THREADS=1` for every process did not help: 3.42x and 4.13x, so the tasks are not the cost. The \
cluster task sends a batch without waiting for the answers to the ones before (at most 8 in flight), with \
TCP_NODELAY: with Redis made remote (`--redis-rtt-us 1000`, a relay adding 1 ms to each round trip), 10 pairs' \
cross-node p50 went from 4251 and 4467 µs to 3721 and 3657, p99 from 6191 and 6251 to 4663 and 4767 (paired, \
2 runs each; pipelining without NODELAY changed nothing: Nagle held each pipeline until Redis acknowledged \
the one before). What the aim leaves room for: the single-node round trip takes 145-156 µs at p50 on a quiet \
host (and p99 follows p50), so 2x allows about 150 µs more, about 75 µs for each of the two crossings. One \
crossing is one trip through Redis (the sending node's `EVALSHA`, whose `PUBLISH` the other node's \
subscription receives), and that trip alone, measured above from a client, takes 63-71 µs. So on this machine \
2x leaves under 10 µs per crossing for both nodes' own work: the aim holds for the fan-out, where Redis is \
crossed once per publication and not once per member, but not for a `send_to_uid` round trip, which crosses \
twice. A profile of the cross-node case on 2026-12-04 (`perf record -a -g`, 1 pair for 6 s, that run 3.18x): of all \
samples on both cores, the two nodes' server threads took 24.2%, their workers 4.5%, Redis 11.2%; inside the \
nodes' threads 12.2 points were the kernel finishing wake-ups (`_raw_spin_unlock_irqrestore` under \
`sock_def_readable` for the TCP sends to Redis and to clients, and under futex wakes: on this virtual machine \
waking a process on the other core is an interrupt through the hypervisor), the binary's user-space code (hotsock, \
tokio, redis-rs) 9.7 points \
with no symbol above 0.35. So the cost is the number of processes a message wakes, not work done per crossing: \
a cross-node round trip wakes Redis twice and each node's server more often than one node does.\n";

/// Calls per operation, largest first: `evalsha 1.00, publish 1.00`, and
/// their sum.
fn per_op(commands: &BTreeMap<String, f64>, ops: f64) -> (f64, String) {
    let mut calls: Vec<(&String, f64)> = commands.iter().map(|(n, c)| (n, c / ops.max(1e-9))).collect();
    calls.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown: Vec<String> = calls.iter().filter(|(_, c)| *c >= 0.005).map(|(n, c)| format!("{n} {c:.2}")).collect();
    (calls.iter().map(|(_, c)| c).sum(), if shown.is_empty() { "none".into() } else { shown.join(", ") })
}

fn verdict(ratio: f64) -> &'static str {
    if ratio <= AIM_RATIO { "**met**" } else { "**not met**" }
}

pub(super) fn text(
    p: &Params,
    load_average: &str,
    background: &BTreeMap<String, f64>,
    memories: &[Memory],
    trips: &[TripSet],
    fanouts: &[(Tally, u64, u64)],
) -> String {
    let mut text = format!(
        "## cluster: `send_to_uid` and channel fan-out across 2 nodes vs one node\n\n\
         - Machine: {} (shared with other jobs: load average {load_average} when the run started; p99 is the \
         figure such noise moves most)\n- Date: {}\n\
         - Command: `target/release/hotsock-bench cluster --pairs {} --members {} --rate {} --seconds {} --rounds {} \
         --size {} --idle {}{}`\n\
         - One run starts a redis-server of its own (Debian's, `--save '' --appendonly no`, on a free port), a \
         single node without `[cluster]` (the baseline) and a 2-node cluster (c0, c1) on that Redis, each node \
         with one test-worker process (`crates/hotsock-testkit`), all on 127.0.0.1. The cases take turns in {} \
         rounds of {} s and each figure covers all its rounds. CPU is the nodes' (servers and workers; both \
         nodes for a cluster case) and Redis's, over the same spans. On this shared 2-core machine one run's \
         p99 ratios move between runs by more than the aim's margin (a stall of another job lands in one case \
         or another): read them next to the p50 ratios and the CPU per operation, which move less, and run \
         again before concluding.{}\n\n",
        machine(),
        today(),
        p.pairs.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(","),
        p.members,
        p.rate,
        p.seconds,
        p.rounds,
        p.size,
        p.idle,
        if p.redis_rtt_us > 0 { format!(" --redis-rtt-us {}", p.redis_rtt_us) } else { String::new() },
        p.rounds,
        p.seconds,
        if p.redis_rtt_us > 0 {
            format!(
                " The nodes reach Redis through a relay that adds {} µs to every round trip (`cluster/delay.rs`: \
                 a Redis on another host); the single node does not use Redis.",
                p.redis_rtt_us
            )
        } else {
            String::new()
        },
    );
    text.push_str(&format!(
        "### `send_to_uid` round trip, pairs ping-ponging\n\n\
         Client A sends `to_uid:B:to_uid:A:SEQ:PAD` ({} B of padding); A's worker sends `to_uid:A:SEQ:PAD` to \
         uid B; B's client sends it back as it came; B's worker sends `SEQ:PAD` to uid A. Two `send_to_uid` per \
         round trip, both crossing nodes in the last case of each set. Each pair waits for its round trip \
         before the next; the ratios compare each case with the single node at the same number of pairs.\n\n\
         | pairs | case | round trips | round trips/s | p50 | p99 | p99 / baseline p99 | nodes' CPU µs per round trip | Redis CPU µs per round trip |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        p.size
    ));
    for set in trips {
        let base_p99 = set.tallies.first().map_or(1, |t| t.quantile(0.99)).max(1) as f64;
        for (case, t) in Trip::ALL.iter().zip(&set.tallies) {
            let ops = t.ops.max(1) as f64;
            text.push_str(&format!(
                "| {} | {} | {} | {:.0} | {} µs | {} µs | {:.2}x | {:.1} | {:.1} |\n",
                set.pairs,
                case.name(),
                t.ops,
                t.ops as f64 / t.seconds.max(1e-9),
                t.quantile(0.5),
                t.quantile(0.99),
                t.quantile(0.99) as f64 / base_p99,
                t.node_cpu_s * 1e6 / ops,
                t.redis_cpu_s * 1e6 / ops,
            ));
        }
    }
    text.push('\n');
    for set in trips {
        if let [single, local, cross] = &set.tallies[..] {
            let base_p99 = single.quantile(0.99).max(1) as f64;
            let ratio = cross.quantile(0.99) as f64 / base_p99;
            text.push_str(&format!(
                "- {} pairs: cross-node round trip p99 / single-node p99: **{ratio:.2}x** (aim: at most {AIM_RATIO}x): \
                 {}; p50 {:.2}x. Both clients on one cluster node: p99 {:.2}x.\n",
                set.pairs,
                verdict(ratio),
                cross.quantile(0.5) as f64 / single.quantile(0.5).max(1) as f64,
                local.quantile(0.99) as f64 / base_p99,
            ));
        }
    }
    if let Some(set) = trips.last() {
        for (case, t) in Trip::ALL.iter().zip(&set.tallies) {
            text.push_str(&t.client.markdown(&format!("the round trips, {} pairs, {}", set.pairs, case.name())));
        }
    }
    text.push_str(ROUND_TRIP_FINDINGS);
    text.push_str(&format!(
        "\n### Channel fan-out: {} members, {} publications/s of {} B padding, published from one node\n\n\
         Latency is from the publisher's send to a member's receipt (one clock, one process), per delivery.\n\n\
         | case | publications | deliveries (of expected) | p50 | p99 | p99 / baseline p99 | nodes' CPU µs per delivery | deliveries per nodes'-CPU-second | with Redis's CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        p.members, p.rate, p.size
    ));
    let base_p99 = fanouts.first().map_or(1, |f| f.0.quantile(0.99)).max(1) as f64;
    for (name, (t, received, expected)) in FANOUT_CASES.iter().zip(fanouts) {
        let deliveries = (*received).max(1) as f64;
        text.push_str(&format!(
            "| {name} | {} | {received} ({:.1}%) | {} µs | {} µs | {:.2}x | {:.2} | {:.0} | {:.0} |\n",
            t.ops,
            100.0 * *received as f64 / (*expected).max(1) as f64,
            t.quantile(0.5),
            t.quantile(0.99),
            t.quantile(0.99) as f64 / base_p99,
            t.node_cpu_s * 1e6 / deliveries,
            deliveries / t.node_cpu_s.max(1e-9),
            deliveries / (t.node_cpu_s + t.redis_cpu_s).max(1e-9),
        ));
    }
    if let [single, cluster] = fanouts {
        let ratio = cluster.0.quantile(0.99) as f64 / base_p99;
        text.push_str(&format!(
            "\n- 2-node fan-out p99 / single-node p99: **{ratio:.2}x** (aim: at most {AIM_RATIO}x): {}. Deliveries \
             per nodes'-CPU-second: {:.2}x the single node's.\n",
            verdict(ratio),
            (cluster.1 as f64 / cluster.0.node_cpu_s.max(1e-9)) / (single.1 as f64 / single.0.node_cpu_s.max(1e-9)),
        ));
    }
    for (name, (t, _, _)) in FANOUT_CASES.iter().zip(fanouts) {
        text.push_str(&t.client.markdown(&format!("the fan-out, {name}")));
    }
    text.push_str(&format!(
        "\n### Memory per idle connection, {} connections each bound to its own uid\n\n\
         | node | RSS with 0 | RSS with {} | KiB per connection | Redis RSS growth per connection |\n\
         |---|---:|---:|---:|---:|\n",
        p.idle, p.idle
    ));
    for m in memories {
        let per = |kib: u64| kib as f64 / p.idle.max(1) as f64;
        text.push_str(&format!(
            "| {} | {} KiB | {} KiB | {:.1} | {} |\n",
            m.name,
            m.rss0_kib,
            m.rss_kib,
            per(m.rss_kib.saturating_sub(m.rss0_kib)),
            m.redis_growth_kib.map_or("-".into(), |k| format!("{:.2} KiB", per(k))),
        ));
    }
    text.push_str(
        "\n### Redis commands per operation\n\n\
         From `INFO commandstats` before and after each span, less the idle cluster's rate (measured first, \
         over 2 s). Commands a Lua script runs count under their own names, so `evalsha` is the number of \
         requests to Redis and the rest is what each script does inside.\n\n\
         | operation | commands | by command |\n|---|---:|---|\n",
    );
    let mut rows: Vec<(String, f64, String)> = Vec::new();
    // Over every set of pairs: two sends per round trip.
    for (c, what) in
        [(2, "`send_to_uid` to a uid on the other node"), (1, "`send_to_uid` to a uid on the same node (cluster mode)")]
    {
        let mut commands = BTreeMap::new();
        let mut sends = 0.0;
        for t in trips.iter().filter_map(|set| set.tallies.get(c)) {
            sends += 2.0 * t.ops as f64;
            for (name, n) in &t.commands {
                *commands.entry(name.clone()).or_insert(0.0) += n;
            }
        }
        let (n, by) = per_op(&commands, sends);
        rows.push((what.into(), n, by));
    }
    if let [_, (cluster, _, _)] = fanouts {
        let (n, by) = per_op(&cluster.commands, cluster.ops as f64);
        rows.push(("publication (members on both nodes)".into(), n, by));
    }
    if let Some(m) = memories.iter().find(|m| m.commands.is_some()) {
        let (n, by) = per_op(m.commands.as_ref().unwrap_or(&BTreeMap::new()), p.idle as f64);
        rows.push(("connection opened with a uid (presence)".into(), n, by));
    }
    let (n, by) = per_op(background, 1.0);
    rows.push(("idle 2-node cluster, per second (heartbeats)".into(), n, by));
    for (what, n, by) in rows {
        text.push_str(&format!("| {what} | {n:.2} | {by} |\n"));
    }
    text.push('\n');
    text
}

pub(super) fn json(memories: &[Memory], trips: &[TripSet], fanouts: &[(Tally, u64, u64)]) -> serde_json::Value {
    let tally = |t: &Tally| {
        serde_json::json!({
            "ops": t.ops, "seconds": t.seconds, "p50_us": t.quantile(0.5), "p99_us": t.quantile(0.99),
            "node_cpu_s": t.node_cpu_s, "redis_cpu_s": t.redis_cpu_s, "redis_commands": t.commands,
        })
    };
    serde_json::json!({
        "round_trip": trips.iter().flat_map(|set| Trip::ALL.iter().zip(&set.tallies).map(|(c, t)| {
            serde_json::json!({"pairs": set.pairs, "case": c.name(), "figures": tally(t)})
        })).collect::<Vec<_>>(),
        "fanout": FANOUT_CASES.iter().zip(fanouts).map(|(c, (t, received, expected))| serde_json::json!({
            "case": c, "figures": tally(t), "deliveries": received, "expected": expected,
        })).collect::<Vec<_>>(),
        "memory": memories.iter().map(|m| serde_json::json!({
            "node": m.name, "rss0_kib": m.rss0_kib, "rss_kib": m.rss_kib, "redis_growth_kib": m.redis_growth_kib,
        })).collect::<Vec<_>>(),
    })
}
