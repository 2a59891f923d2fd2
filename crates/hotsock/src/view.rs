//! How `hotsock status` and `hotsock clients` read on a terminal: one
//! summary line, one table, then one section per subsystem. Pure text from
//! the admin socket's status types, so the layout is unit-tested here and
//! the binary's tests check it against a real server.

use hotsock_server::{ClientStatus, ServerStatus, UpgradePhase, WorkerPhase, WorkerStart};

/// `1 connection`, `2 connections`.
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 { format!("{n} {noun}") } else { format!("{n} {noun}s") }
}

/// The text of `hotsock status`: the summary, the worker table (with the
/// draining workers under their slot), then tasks, tables, watch and the
/// last reload.
/// The binary upgrade under way, done, or failed (`hotsock upgrade`).
fn upgrade_line(upgrade: &hotsock_server::UpgradeStatus) -> String {
    let to = upgrade.to_version.as_deref().unwrap_or("?");
    let pids = match upgrade.to_pid {
        Some(pid) => format!("pid {} -> {pid}", upgrade.from_pid),
        None => format!("pid {}", upgrade.from_pid),
    };
    let phase = match upgrade.phase {
        UpgradePhase::Starting => "starting the new binary".to_owned(),
        UpgradePhase::Parking => "parking connections".to_owned(),
        UpgradePhase::HandingOver => "handing over".to_owned(),
        UpgradePhase::Done => format!(
            "done in {} ms, {} connections moved, paused {} ms",
            upgrade.duration_ms, upgrade.connections, upgrade.pause_ms
        ),
        UpgradePhase::Failed => format!(
            "failed after {} ms, this server serves on: {}",
            upgrade.duration_ms,
            upgrade.detail.as_deref().unwrap_or("no reason given")
        ),
    };
    format!("upgrade {} -> {to} ({pids}): {phase}", upgrade.from_version)
}

pub(crate) fn status(status: &ServerStatus) -> Vec<String> {
    let mut out = vec![format!(
        "hotsock pid {} ({}, {}) listening on {}, up {}s{}; generation {}{}; {} (accepted {}, refused {})",
        status.pid,
        status.server_version,
        count(status.runtime_threads as u64, "thread"),
        status.listen,
        status.uptime_s,
        if status.stopping { ", STOPPING" } else { "" },
        status.generation,
        status.reloading.as_ref().map(|r| format!(" (reloading: {r})")).unwrap_or_default(),
        count(status.connections as u64, "connection"),
        status.accepted_total,
        status.rejected_total
    )];
    out.push(String::new());
    out.push(format!(
        "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8} {:>11} {:>11} {:>11} {:>7} {:>6} {:>7} {:>9} {:>9}  LAST EXIT",
        "SLOT",
        "ROLE",
        "PID",
        "GEN",
        "STATE",
        "INFLIGHT",
        "DISPATCHED",
        "ACKED",
        "REDELIVERED",
        "DROPPED",
        "PANICS",
        "CRASHES",
        "RSS KiB",
        "HEARTBEAT"
    ));
    for w in &status.workers {
        out.push(format!(
            "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8} {:>11} {:>11} {:>11} {:>7} {:>6} {:>7} {:>9} {:>9}  {}{}",
            w.slot,
            w.role,
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            w.generation,
            w.phase.name(),
            w.inflight,
            w.dispatched,
            w.acked,
            w.redelivered,
            w.dropped,
            w.panics,
            w.crashes,
            w.rss_kib.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            w.heartbeat_age_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into()),
            w.last_exit.as_deref().unwrap_or("-"),
            if w.crash_loop { " (CRASH LOOP)" } else { "" }
        ));
        for d in &w.others {
            let deadline = match d.phase {
                WorkerPhase::Draining { deadline_in_ms } => format!("  killed in {deadline_in_ms} ms unless done"),
                _ => String::new(),
            };
            out.push(format!(
                "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8}{deadline}",
                "",
                "",
                d.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                d.generation,
                d.phase.name(),
                d.inflight
            ));
        }
    }
    let mut sections = Vec::new();
    let tasks = &status.tasks;
    if tasks.queued as u64 + tasks.completed + tasks.failed + tasks.refused > 0
        || status.workers.iter().any(|w| w.role == "task")
    {
        sections.push(format!(
            "tasks: {} queued or running, {} completed, {} failed, {} refused",
            tasks.queued, tasks.completed, tasks.failed, tasks.refused
        ));
    }
    let channels = &status.channels;
    if channels.channels > 0 || channels.publications > 0 {
        sections.push(format!(
            "channels: {} held, {} memberships, {} publications ({} deliveries), recoveries {} ok / {} lost, {} refused",
            channels.channels,
            channels.memberships,
            channels.publications,
            channels.deliveries,
            channels.recovered,
            channels.unrecovered,
            channels.refused
        ));
    }
    if let Some(cluster) = &status.cluster {
        let redis = match (&cluster.last_error, cluster.redis_connected) {
            (_, true) => "redis connected".to_owned(),
            (Some(why), false) => format!("redis unreachable ({why})"),
            (None, false) => "redis unreachable".to_owned(),
        };
        sections.push(format!(
            "cluster: node {} of {} live, {redis}; {} routed out, {} received, {} read back, {} dropped, {} lost, {} outages",
            cluster.node,
            cluster.nodes,
            cluster.routed,
            cluster.received,
            cluster.refetched,
            cluster.dropped,
            cluster.lost,
            cluster.outages
        ));
    }
    if let Some(upgrade) = &status.upgrade {
        sections.push(upgrade_line(upgrade));
    }
    for table in &status.tables {
        sections.push(format!("table {}: {} of {} rows in use", table.name, table.rows, table.capacity));
    }
    if let Some(watch) = &status.watch {
        sections.push(format!(
            "watching {} ({}{}): {}, {}, {} failed{}",
            watch.paths.join(", "),
            watch.backend,
            watch.fallback_reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default(),
            count(watch.changes, "change"),
            count(watch.builds, "build"),
            watch.builds_failed,
            if watch.building { ", building now" } else { "" }
        ));
        if let Some(build) = &watch.last_build {
            sections.push(format!(
                "last build: {} ({}) in {} ms after a change to {}",
                if build.ok { "ok" } else { "FAILED" },
                build.exit,
                build.duration_ms,
                build.trigger
            ));
            if !build.ok {
                sections.extend(build.output_tail.iter().map(|line| format!("  | {line}")));
            }
        }
    }
    match &status.worker_start {
        WorkerStart::Idle { max_ms } => {
            sections.push(format!("workers start at the idle CPU policy until Ready (at most {max_ms} ms)"));
        }
        // Empty: a server from before `worker_start` existed.
        WorkerStart::Normal { why } if why.is_empty() => {}
        WorkerStart::Normal { why } => sections.push(format!("workers start at the normal CPU policy: {why}")),
    }
    sections.extend(recent_exits(status));
    if let Some(last) = &status.last_reload {
        sections.push(format!(
            "last reload: {} {} -> {} in {} ms: {}",
            if last.ok { "ok" } else { "FAILED" },
            last.from_generation,
            last.generation,
            last.duration_ms,
            last.message
        ));
    }
    if !sections.is_empty() {
        out.push(String::new());
        out.extend(sections);
    }
    out
}

/// Exits shown under the table, newest last.
const EXITS_SHOWN: usize = 8;
/// Longest exit detail shown (a worker's stderr tail can be long; `--json`
/// has all of it).
const EXIT_DETAIL_CHARS: usize = 160;

/// The last worker exits of every slot, with their causes, newest last.
fn recent_exits(status: &ServerStatus) -> Vec<String> {
    let mut exits: Vec<(usize, &hotsock_server::ExitRecord)> =
        status.workers.iter().flat_map(|w| w.exits.iter().map(move |e| (w.slot, e))).collect();
    if exits.is_empty() {
        return Vec::new();
    }
    exits.sort_by_key(|(_, e)| e.at_unix_ms);
    let skip = exits.len().saturating_sub(EXITS_SHOWN);
    let mut out = vec!["recent exits:".to_owned()];
    for (slot, exit) in &exits[skip..] {
        let mut detail: String = exit.detail.chars().take(EXIT_DETAIL_CHARS).collect();
        if detail.len() < exit.detail.len() {
            detail.push('…');
        }
        out.push(format!(
            "  slot {slot} pid {} gen {}: {}",
            exit.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            exit.generation,
            detail
        ));
    }
    out
}

/// The text of `hotsock clients`, one row per connection and a count.
pub(crate) fn clients(clients: &[ClientStatus], now_ms: u64) -> Vec<String> {
    let mut out = vec![format!(
        "{:<8} {:<22} {:<6} {:<10} {:>8} {:>7}  PATH",
        "CONN", "PEER", "SLOT", "UID", "INFLIGHT", "AGE s"
    )];
    for c in clients {
        out.push(format!(
            "{:<8} {:<22} {:<6} {:<10} {:>8} {:>7}  {}",
            c.conn,
            c.peer,
            c.slot,
            c.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            c.inflight,
            now_ms.saturating_sub(c.connected_at_unix_ms) / 1000,
            c.path
        ));
    }
    out.push(count(clients.len() as u64, "connection"));
    out
}

/// A request target with each query value replaced by `…`, names kept:
/// query strings carry credentials (the matchmaker's `token=`), and
/// `hotsock clients` output ends up on screens and in pasted logs.
pub(crate) fn redact_query(path: &str) -> String {
    let Some((route, query)) = path.split_once('?') else { return path.to_owned() };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) => format!("{name}=…"),
            None => pair.to_owned(),
        })
        .collect();
    format!("{route}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::{count, redact_query};

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(count(0u64, "build"), "0 builds");
        assert_eq!(count(1u64, "build"), "1 build");
        assert_eq!(count(2u64, "connection"), "2 connections");
    }

    #[test]
    fn query_values_are_redacted_names_kept() {
        assert_eq!(redact_query("/match?uid=42&token=abc&flag"), "/match?uid=…&token=…&flag");
        assert_eq!(redact_query("/plain"), "/plain");
        assert_eq!(redact_query("/empty?"), "/empty?");
        assert_eq!(redact_query("/x?a=1=2"), "/x?a=…");
    }
}
