//! BENCHMARKS.md: the machine, the date, the command, the figures, and the
//! ratios that are the point.

use crate::load::{Memory, Params, Throughput};

pub(crate) struct TargetResult {
    pub(crate) name: &'static str,
    pub(crate) throughput: Throughput,
    pub(crate) memory: Memory,
}

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!("{cores} cores, {:.0} GiB RAM", mem_kib as f64 / (1024.0 * 1024.0))
}

pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown date".into())
}

const HEADER: &str = "# Benchmarks\n\nEvery figure below comes from one run of the command shown under it, on a \
shared machine; absolute numbers move from run to run, the ratios measured side by side in the same run are \
what to read. Each section is rewritten by its own scenario (`hotsock-bench <scenario>`).\n";

/// Replaces (or appends) one scenario's section of the report file,
/// leaving the others as they are.
pub(crate) fn write_section(path: &std::path::Path, scenario: &str, body: &str) -> std::io::Result<()> {
    let begin = format!("<!-- scenario:{scenario} -->");
    let end = format!("<!-- /scenario:{scenario} -->");
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}\n");
    let text = match (existing.find(&begin), existing.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &existing[..a], existing[b + end.len()..].trim_start_matches('\n'))
        }
        _ if existing.starts_with("# Benchmarks") && existing.contains("<!-- scenario:") => {
            format!("{}\n{section}", existing.trim_end())
        }
        _ => format!("{HEADER}\n{section}"),
    };
    std::fs::write(path, text)
}

pub(crate) fn markdown(params: &Params, results: &[TargetResult]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "- Machine: {}\n- Date: {}\n- Command: `cargo build --release -p hotsock -p echo -p hotsock-bench && target/release/hotsock-bench echo --connections {} --seconds {} --size {} --idle {}`\n- Load generator, servers and workers share the machine's cores; all traffic on 127.0.0.1.\n\n",
        machine(),
        today(),
        params.connections,
        params.seconds,
        params.size,
        results.first().map(|r| r.memory.connections).unwrap_or(0),
    ));
    out.insert_str(
        0,
        &format!(
            "## echo: {} connections ping-pong, {} B text messages, {} s measured\n\n",
            params.connections, params.size, params.seconds
        ),
    );
    out.push_str(
        "| target | msg/s | p50 µs | p99 µs | server CPU (cores) | load generator CPU (cores) | idle KiB/conn |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        let t = &r.throughput;
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.1} |\n",
            r.name, t.msgs_per_s, t.p50_us, t.p99_us, t.server_cores, t.client_cores, r.memory.kib_per_conn
        ));
    }
    if let [_, hotsock, peer] = results {
        let over_peer = hotsock.throughput.msgs_per_s / peer.throughput.msgs_per_s.max(1.0);
        out.push_str(&format!(
            "\n**hotsock / Node.js ws throughput: {over_peer:.2}** (target: above 1). Idle memory: {:.1} KiB per connection \
             in hotsock, {:.1} KiB in Node.js ws.\n",
            hotsock.memory.kib_per_conn, peer.memory.kib_per_conn
        ));
    }
    if let [ceiling, hotsock, ..] = results {
        let ratio = hotsock.throughput.msgs_per_s / ceiling.throughput.msgs_per_s.max(1.0);
        out.push_str(&format!(
            "\n**hotsock / ceiling throughput: {ratio:.2}** (target: at least 0.6 at 100 connections). \
             The ceiling has no worker hop: each message crosses one process; through hotsock it crosses \
             the server, a Unix socket, a worker and back.\n"
        ));
        if hotsock.throughput.client_cores > 0.9 {
            out.push_str("\nThe load generator used most of a core: it may have limited both targets.\n");
        }
        out.push_str(&format!(
            "\n**Idle memory**: {:.1} KiB per connection in hotsock (server + workers RSS growth over {} idle \
             connections; WebSocket read buffer {} KiB) vs {:.1} KiB in the ceiling.\n",
            hotsock.memory.kib_per_conn, hotsock.memory.connections, 4, ceiling.memory.kib_per_conn
        ));
    }
    out
}
