//! `echo` and `pipelined`: throughput and latency through hotsock (server +
//! echo worker processes), next to the in-process ceiling (same WebSocket
//! library and settings, no worker hop) and the Node.js `ws` peer, all
//! started and measured in the same invocation.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::chart::{self, Axes, Series};
use crate::load::{self, Throughput};
use crate::{Target, pin, report, start_baseline, start_hotsock, start_hotsock_php, start_node_peer};

/// The connection count the targets in the issue are stated at.
const HEADLINE_CONNECTIONS: usize = 100;

/// The targets, in report order: ceiling, hotsock, peer, hotsock with the
/// PHP worker (the last is compared with hotsock's Rust worker).
const TARGETS: [fn() -> Result<Target>; 4] = [start_baseline, start_hotsock, start_node_peer, start_hotsock_php];

struct Row {
    target: &'static str,
    label: &'static str,
    connections: usize,
    result: Throughput,
}

pub(crate) struct Params {
    pub(crate) connections: Vec<usize>,
    /// Measured seconds of each run.
    pub(crate) seconds: u64,
    pub(crate) size: usize,
    /// Rounds over all targets and counts; each figure is the median round.
    pub(crate) rounds: usize,
}

/// Ping-pong at each connection count through each target. The targets
/// take turns, round after round, and each figure is the median round: a
/// burst of noise from elsewhere on a shared machine then hits one round of
/// one target, not all of one target's runs.
pub(crate) fn run(params: &Params, out: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let targets = TARGETS.iter().map(|start| start()).collect::<Result<Vec<_>>>()?;
    let mut runs: Vec<Vec<Throughput>> = Vec::new();
    for round in 0..params.rounds {
        for (index, &connections) in params.connections.iter().enumerate() {
            for (t, target) in targets.iter().enumerate() {
                let load = load::Params { connections, seconds: params.seconds, size: params.size };
                let result = runtime.block_on(load::ping_pong(target.port, &load, target.child.id()))?;
                pin::verify(&target.pids())?;
                eprintln!(
                    "== echo round {round}: {} at {connections} connections: {:.0} msg/s, p50 {} us, p99 {} us",
                    target.name, result.msgs_per_s, result.p50_us, result.p99_us
                );
                let key = t * params.connections.len() + index;
                if runs.len() <= key {
                    runs.resize_with(key + 1, Vec::new);
                }
                runs[key].push(result);
                // Let the kernel tear the sockets down before the next run.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let mut rows = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        for (index, &connections) in params.connections.iter().enumerate() {
            let mut results = std::mem::take(&mut runs[t * params.connections.len() + index]);
            results.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
            let result = results.swap_remove(results.len() / 2);
            rows.push(Row { target: target.name, label: target.label, connections, result });
        }
    }
    drop(targets);
    let counts = params.connections.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let mut text = format!(
        "## echo{}: ping-pong at {counts} connections, {} B text messages\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench echo{} --connections {counts} --seconds {} --size {} --rounds {}`\n\
         - Each figure is the median of {} rounds of {} s measured (after a warm-up) in which the three targets take turns; \
         {}; all traffic on 127.0.0.1.\n\n",
        section_suffix(),
        params.size,
        report::machine(),
        report::today(),
        pin_flag(),
        params.seconds,
        params.size,
        params.rounds,
        params.rounds,
        params.seconds,
        placement(),
    );
    text.push_str(&table(&rows));
    text.push_str(&headline(&rows));
    text.push_str(CPU_PER_MESSAGE);
    text.push_str(
        "\nThe ceiling has no worker hop: each message crosses one process; through hotsock it crosses the server, \
         a Unix socket, a worker and back. hotsock runs one echo worker process here: on 2 cores shared with the \
         load generator a second one only adds context switches (about 5-15% less throughput when measured), and \
         the peer is a single process as well. Server CPU counts the server and its workers.\n\n",
    );
    let scenario = format!("echo{}", section_suffix());
    text.push_str(&charts(out, &scenario, &rows));
    json(&scenario, &rows);
    report::write_section(out, &scenario, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}

/// Many messages in flight per connection through each target.
pub(crate) fn pipelined(connections: usize, depth: usize, seconds: u64, out: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for start in TARGETS {
        let target = start()?;
        let result = runtime.block_on(load::pipelined(target.port, connections, depth, seconds, target.child.id()))?;
        pin::verify(&target.pids())?;
        eprintln!("== pipelined {}: {:.0} msg/s", target.name, result.msgs_per_s);
        rows.push(Row { target: target.name, label: target.label, connections, result });
    }
    let scenario = format!("pipelined{}", section_suffix());
    let mut text = format!(
        "## {scenario}: {connections} connections x {depth} messages in flight, 64 B, {seconds} s\n\n\
         - Machine: {}\n- Date: {}\n- Command: `target/release/hotsock-bench pipelined{} --connections {connections} --depth {depth} --seconds {seconds}`\n\
         - The targets run one after the other; {}.\n\n",
        report::machine(),
        report::today(),
        pin_flag(),
        placement(),
    );
    text.push_str(&table(&rows));
    if let [ceiling, hotsock, peer, rest @ ..] = &rows[..] {
        text.push_str(&format!(
            "\n**hotsock / Node.js ws: {:.2}**, hotsock / ceiling: {:.2}. With many messages in flight every hop \
             writes many frames per syscall (batched writes).{}{}\n\n",
            hotsock.result.msgs_per_s / peer.result.msgs_per_s.max(1.0),
            hotsock.result.msgs_per_s / ceiling.result.msgs_per_s.max(1.0),
            if pin::pinned() { " Aim when pinned: hotsock / ceiling at least 0.5." } else { "" },
            php_line(hotsock, rest.first(), false),
        ));
    }
    text.push_str(CPU_PER_MESSAGE);
    if pin::pinned() {
        text.push_str(PIPELINED_PROFILE);
    }
    let bars: Vec<(String, f64)> = rows.iter().map(|r| (r.label.to_owned(), r.result.msgs_per_s)).collect();
    let title = format!("pipelined: msg/s, {depth} in flight x {connections} connections");
    text.push_str(&chart::save(
        out,
        &format!("{scenario}-throughput"),
        &title,
        &chart::bars(&title, "messages per second", &bars),
    ));
    json(&scenario, &rows);
    report::write_section(out, &scenario, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    Ok(())
}

/// The PHP worker against the Rust worker, both through hotsock; the aim
/// (issue 16) is stated for ping-pong at 100 connections.
fn php_line(rust: &Row, php: Option<&Row>, aim: bool) -> String {
    let Some(php) = php else { return String::new() };
    format!(
        " The PHP worker: **{:.2}x the Rust worker's msg/s**{}, p99 {} µs vs {} µs.",
        php.result.msgs_per_s / rust.result.msgs_per_s.max(1.0),
        if aim { " (aim: at least 0.5)" } else { " (one PHP process runs every handler in turn; no aim here)" },
        php.result.p99_us,
        rust.result.p99_us
    )
}

/// What the CPU-per-message column means.
const CPU_PER_MESSAGE: &str = "\nServer CPU µs/msg is the CPU time of the server (with its workers) during the \
measured span divided by the messages answered in it: what one message costs the target, whatever the load \
generator's share of the machine.\n";

/// What `perf` showed under this load (issue 15, part 2): kept with the
/// section so a re-run does not drop it.
const PIPELINED_PROFILE: &str = "\nWhat the profile showed. `perf record -F 1999 --call-graph dwarf` of the server \
and of the echo worker, 2 s each during the hotsock run of this scenario (pinned, release binaries; \
`perf report --no-children`). **Server**: about 30% of its CPU in the kernel (socket reads and writes, wake-ups), \
15-17% in libc (malloc/free, memmove) and the rest in its own code with no single hot spot: `Slot::ack` (5%), \
dropping and cloning the `Bytes` of each frame (4.5% + 2.6%: the shared read buffer's reference count), tungstenite's \
read (3.4%), wakers and the outbox push (2-4% each); before this change SipHash on the hub's and the slots' u64 maps \
was 7% (an event's lane and entry, its ack and its connection are each looked up per message: now foldhash, gone \
from the profile). **Worker** (examples/echo on the SDK): 66% in the SDK and tokio, 24% in libc: submitting each \
event (`Runner::submit`: a lane map entry and one spawned task per event, 12%), the unbounded channel from handlers \
to the writer (push, pop, waker: 13%), copying frames into the write buffer (memmove 7%), the handler's `format!` \
(4%); malloc was 6.6% before the read buffer stopped being re-allocated for every read (decoded frames keep slices \
of it, so each read's 64 KiB reserve was a fresh allocation whose free made glibc consolidate its heap), 4-6% \
after. Paired runs of the old and new binaries (3 each, alternating): server CPU per message 5.50/5.57/5.64 µs \
before, 5.59/4.97/5.35 after, a few percent on a noisy host. Left: one task per event and the channel per frame in \
the SDK (running a handler that completes at once inline in the read loop would remove both for most events), and \
the per-connection wake-ups on the server side, which the fan-out section's findings describe.\n";

/// The report section's name suffix: pinned runs have their own sections.
fn section_suffix() -> &'static str {
    if pin::pinned() { "-pinned" } else { "" }
}

fn pin_flag() -> &'static str {
    if pin::pinned() { " --pin" } else { "" }
}

/// Where the processes ran, for the report.
fn placement() -> String {
    if pin::pinned() {
        format!(
            "**pinned**: each server and its workers on core {} only, the load generator on core {} only \
             (`taskset`, checked in /proc for every thread after each run)",
            pin::SERVER_CORE,
            pin::LOAD_CORE
        )
    } else {
        "**unpinned**: load generator, servers and workers share the machine's cores".to_owned()
    }
}

/// The msg/s of the ceiling run at the same connection count as `row`.
fn ceiling_of(rows: &[Row], row: &Row) -> f64 {
    rows.first()
        .map(|first| first.target)
        .and_then(|ceiling| rows.iter().find(|r| r.target == ceiling && r.connections == row.connections))
        .map_or(1.0, |r| r.result.msgs_per_s.max(1.0))
}

fn table(rows: &[Row]) -> String {
    let mut text = String::from(
        "| target | connections | msg/s | vs ceiling | server CPU µs/msg | p50 µs | p99 µs | server CPU (cores) | load \
         generator CPU (cores) | busiest load thread | load generator saturated |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let r = &row.result;
        text.push_str(&format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.0}% | {} |\n",
            row.target,
            row.connections,
            r.msgs_per_s,
            r.msgs_per_s / ceiling_of(rows, row),
            r.server_cpu_us_per_msg(),
            r.p50_us,
            r.p99_us,
            r.cpu.server_cores,
            r.cpu.client_cores,
            r.cpu.client_busiest_thread * 100.0,
            if r.cpu.client_saturated() { "**yes**" } else { "no" },
        ));
    }
    text
}

/// The ratios the targets are stated in, at 100 connections (or the
/// nearest count run).
fn headline(rows: &[Row]) -> String {
    let Some(count) = rows.iter().map(|r| r.connections).min_by_key(|c| c.abs_diff(HEADLINE_CONNECTIONS)) else {
        return String::new();
    };
    let at: Vec<&Row> = rows.iter().filter(|r| r.connections == count).collect();
    let [ceiling, hotsock, peer, ref rest @ ..] = at[..] else { return String::new() };
    let mut text = format!(
        "\nAt {count} connections: **hotsock / ceiling: {:.2}** (target: at least {}), **hotsock / Node.js ws: \
         {:.2}** (target: above 1).{}\n",
        hotsock.result.msgs_per_s / ceiling.result.msgs_per_s.max(1.0),
        if pin::pinned() { "0.65 when pinned" } else { "0.6" },
        hotsock.result.msgs_per_s / peer.result.msgs_per_s.max(1.0),
        php_line(hotsock, rest.first().copied(), true),
    );
    text.push_str(&low_concurrency_latency(rows));
    if pin::pinned() {
        text.push_str(
            "\nPinned, each target has one core to itself and the load generator has the other: a server CPU near \
             1.00 core means the target was the limit; a saturated load generator means the figure is a lower \
             bound for that target.\n",
        );
    } else if at.iter().all(|r| r.result.cpu.machine_saturated()) {
        text.push_str(
            "\nIn these runs the load generator and the target together kept the machine's cores busy: \
             throughput is bounded by CPU, so the ratios compare CPU spent per message (the load generator's \
             share is the same handicap for every target).\n",
        );
    }
    if at.iter().any(|r| r.result.cpu.client_saturated()) {
        text.push_str(
            "\nA load-generator thread saturated a core in at least one of these runs (see the table): on a \
             machine this size the client competes with the server for the same cores.\n",
        );
    }
    text
}

/// The connection count issue 15 states the round-trip aim at.
const LATENCY_CONNECTIONS: usize = 10;

/// hotsock's p50 round trip against the ceiling's at 10 connections
/// (unpinned; aim: at most 1.5x), when that count was run.
fn low_concurrency_latency(rows: &[Row]) -> String {
    let at: Vec<&Row> = rows.iter().filter(|r| r.connections == LATENCY_CONNECTIONS).collect();
    let [ceiling, hotsock, ..] = at[..] else { return String::new() };
    format!(
        "\nAt {LATENCY_CONNECTIONS} connections: **hotsock p50 / ceiling p50: {:.2}** ({} µs vs {} µs{}).\n",
        hotsock.result.p50_us as f64 / ceiling.result.p50_us.max(1) as f64,
        hotsock.result.p50_us,
        ceiling.result.p50_us,
        if pin::pinned() { "" } else { "; aim unpinned: at most 1.5" },
    ) + if pin::pinned() { "" } else { LOW_CONCURRENCY }
}

/// What was measured about the round trip at 10 connections (issue 15):
/// kept with the section so a re-run does not drop it.
const LOW_CONCURRENCY: &str = "\nAt low concurrency a round trip is a chain of wake-ups: the ceiling wakes one \
process per message, hotsock three (the server, the worker, the server again), and on this shared 2-core host \
each wake-up of a process that slept waits for a core. `perf trace -s` over 3 s at 10 connections: the server \
makes about 3.3 system calls per message (the send to the client, its reads, and per batch of about 2.5 messages \
one write and one read on the worker socket), the worker one recv and one send per batch; `perf record` puts 62% \
of the server's CPU in the kernel, most of it waking the other side (`sock_def_readable` to `try_to_wake_up`) and \
switching tasks. Paired runs, old and new binaries alternating (4 each, one 3 s round): p50 / ceiling p50 \
1.90, 2.21, 1.79, 1.80 before the read-buffer and hashing changes, 1.68, 1.44, 1.67, 1.70 after. The server's \
runtime on one thread (`TOKIO_WORKER_THREADS=1`) was tried again and not kept: 1.52 and 1.79 against 2.12 and \
2.17 in one pair of runs, 2.19 and 2.29 against 2.00 and 2.11 in the next. The worker SDK now runs a handler \
in its read loop when the handler finishes at its first poll (no task, no lane entry): paired runs (2 each, \
alternating) 2.22 and 2.06 before, 1.88 and 1.73 after, server CPU per message 30.0 and 26.4 µs before, 25.6 \
and 23.5 after. What is left is mostly the kernel's: `perf record` of the server at 10 connections after that \
change, 58% of its CPU in the kernel and a third in `send` (the client's and the worker's socket, each waking the \
process on the other end); its own code has no entry above 2%. `strace -c` of the echo worker (which slows it, so \
batches grow to about 4 messages): one recv and one send per batch and 1.2 `epoll_wait` per recv, so the \
readiness events a Unix socket sends its writer on every read cost at most a fifth of a wake-up per batch. \
Two changes of 2026-12-02 cut CPU per message without moving this ratio: replies to an idle connection are \
written to its socket by the server thread that read them from the worker (no connection task woken; \
`net/plain.rs`), and the worker socket's writer yields once before writing, so the events of every connection \
already runnable go in one write (`perf stat`, pinned, 100 connections: one `sendto` to the worker per message \
before). Paired runs (one 3 s round each, quiet host): at 100 connections unpinned 85-94k -> 112k msg/s, \
pinned 74-78k -> 114-129k msg/s (server CPU per message 12.7-13.4 -> 7.7-8.7 µs); at 10 connections p50 \
142 and 125 µs before, 142 and 137 µs after, against a ceiling of 54-66 µs. On a quiet host the ratio is \
higher than on a loaded one (2.3-2.5 in these runs, 1.7-1.9 in the loaded runs before): the ceiling's one \
process per message gains more from idle cores than hotsock's three. Two changes of 2026-12-04 took out system \
calls and wake-ups that found nothing: a read shorter than its buffer clears a client socket's readiness \
(tokio's own `TcpStream::poll_read` does; the shared socket's `try_read` did not), so the `recv` that followed \
every client message and found nothing is gone (`perf trace -s` of the tasks bench: 13,071 of the server's \
35,042 `recvfrom` calls were that); and the worker socket is registered for writability only while a write finds \
it full (`hotsock-table/src/link.rs`): a Unix socket tells its writer \"writable\" every time the peer reads, \
which woke the echo worker for nothing 0.67 times per batch (`epoll_wait` per batch read: 1.67 before, 1.00 \
after). Paired runs, one 2 s round each, alternating: after the first, server CPU per message unpinned at 10 \
connections 17.25, 13.85, 13.93 µs before and 13.33, 13.19, 13.57 after; after the second, pinned at 10 \
connections 11.80, 11.86, 11.40 before and 11.14, 10.97, 11.09 after (84-86k -> 89-91k msg/s), at 100 \
connections unchanged (7.08, 6.94, 6.91 and 7.12, 6.85, 6.85: there batches already share their wake-ups). \
What those two changes cost: on this machine an idle core halts (cpuidle `haltpoll` with \
`guest_halt_poll_ns` 0), so a wake-up that finds its core halted waits for it, and a wake-up that found nothing \
had kept a core from halting. Paired on 2026-12-04 evening (a fresh machine of the same kind; one 2 s round \
each at 10 connections, alternating): before both, p50 129, 122, 124 µs, 13.84, 13.16, 13.68 µs of server CPU \
per message and 1.02-1.05 cores; after both, 144, 142, 147 µs, 12.77, 12.28, 12.98 µs and 0.86-0.88 cores. With \
halt polling on (200,000 ns, set for the experiment and set back) the same pair went the other way on both \
counts: p50 85 and 85 µs before, 81 and 73 after, 11.17 and 11.02 µs per message before, 10.26 and 9.55 after. \
The changes are kept: less CPU per message everywhere, and lower latency wherever idle cores poll before \
halting (the kernel's default for this driver). Why the aim is out of reach on this machine: with polling off \
the one-connection round trip is 55-67 µs for the ceiling and 59-93 µs for hotsock, 12-17 and 40-55 µs with it \
on, and at 10 connections the p50 ratio was 2.1-4.4 with polling off (this evening's machine at the top) \
and 1.9-2.6 with it on. With one message in flight per connection the mean round trip is the 10 \
connections over the msg/s (Little's law), so the p50 ratio follows the inverse of the throughput ratio: 1.5 asks hotsock, whose three processes take turns on each message, for \
two thirds of the msg/s of a ceiling whose two processes never sleep (0.98 cores each in these runs), more \
than Node's `ws` (one process, no hop) reaches in the table above.\n";

/// Throughput and p99 against connections, one line per target.
fn charts(out: &Path, scenario: &str, rows: &[Row]) -> String {
    let mut labels: Vec<&'static str> = rows.iter().map(|r| r.label).collect();
    labels.dedup();
    let series = |value: fn(&Throughput) -> f64| -> Vec<Series> {
        labels
            .iter()
            .map(|label| Series {
                name: (*label).to_owned(),
                points: rows
                    .iter()
                    .filter(|r| r.label == *label)
                    .map(|r| (r.connections as f64, value(&r.result)))
                    .collect(),
            })
            .collect()
    };
    let axes = |title, y_label, log_y| Axes { log_x: true, log_y, ..Axes::new(title, "connections", y_label) };
    let title = format!("{scenario}: throughput vs connections");
    let mut text = chart::save(
        out,
        &format!("{scenario}-throughput"),
        &title,
        &chart::lines(&axes(&title, "messages per second", false), &series(|t| t.msgs_per_s)),
    );
    let title = format!("{scenario}: p99 latency vs connections");
    text.push_str(&chart::save(
        out,
        &format!("{scenario}-p99"),
        &title,
        &chart::lines(&axes(&title, "p99 round trip (µs, log scale)", true), &series(|t| t.p99_us as f64)),
    ));
    text
}

fn json(scenario: &str, rows: &[Row]) {
    chart::json(
        scenario,
        &serde_json::json!(
            rows.iter()
                .map(|r| serde_json::json!({
                    "target": r.target, "connections": r.connections, "msgs_per_s": r.result.msgs_per_s,
                    "p50_us": r.result.p50_us, "p99_us": r.result.p99_us, "cpu": r.result.cpu,
                    "server_cpu_us_per_msg": r.result.server_cpu_us_per_msg(), "pinned": pin::pinned(),
                }))
                .collect::<Vec<_>>()
        ),
    );
}
