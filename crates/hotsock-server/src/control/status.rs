//! What `hotsock status` reports, read from the parts that know it: the
//! hub (slots, counters, connections), the supervisor's published view
//! (generations, reloads) and the tables. The types are in `wire.rs`.

use std::sync::atomic::Ordering;

use crate::route::hub::SlotReport;
use crate::route::slot::WorkerId;
use crate::shared::Shared;
use crate::supervise::view::SlotView;
use crate::wire::{ServerStatus, SlotStatus, TableStatus, WorkerStart, WorkerStatus};

/// Reads a process's resident set size from `/proc`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// What `hotsock status` reports, read now.
pub(crate) fn server_status(shared: &Shared) -> ServerStatus {
    let view = shared.supervision.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let reports = shared.hub.slot_reports();
    let workers =
        view.slots.iter().zip(reports).enumerate().map(|(slot, (view, hub))| slot_status(slot, view, hub)).collect();
    ServerStatus {
        pid: std::process::id(),
        generation: view.serving,
        previous_generation: view.previous,
        reloading: view.reloading,
        reloads_queued: view.queued,
        last_reload: view.last_reload,
        watch: shared.watch_status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        tasks: shared.hub.task_counters(),
        channels: shared.hub.channel_counters(),
        cluster: shared.hub.cluster().map(crate::cluster::status),
        tables: shared
            .tables
            .iter()
            .map(|(spec, table)| TableStatus { name: spec.name.clone(), rows: table.len(), capacity: table.capacity() })
            .collect(),
        listen: shared.listen.to_string(),
        uptime_s: shared.started.elapsed().as_secs(),
        runtime_threads: tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_workers()),
        worker_start: match (shared.config().workers.start_idle_ms, shared.spawner.idle_start()) {
            (0, _) => WorkerStart::Normal { why: "workers.start_idle_ms = 0".into() },
            (max_ms, Ok(())) => WorkerStart::Idle { max_ms },
            (_, Err(why)) => WorkerStart::Normal { why: why.to_string() },
        },
        connections: shared.hub.connection_count(),
        accepted_total: shared.accepted_total.load(Ordering::Relaxed),
        rejected_total: shared.metrics.refused_total(),
        messages_in_total: shared.metrics.received.messages(),
        messages_out_total: shared.metrics.sent.messages(),
        stopping: shared.is_stopping(),
        server_version: crate::version().to_owned(),
        upgrade: shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        workers,
    }
}

/// One slot: the supervisor's view of its workers, the hub's counts.
fn slot_status(slot: usize, view: &SlotView, hub: SlotReport) -> SlotStatus {
    let held = |worker: WorkerId| hub.held.iter().find(|(w, _)| *w == worker).map_or(0, |(_, n)| *n);
    let primary = view.primary.as_ref();
    let pid = primary.and_then(|w| w.pid).or_else(|| view.exits.last().and_then(|e| e.pid));
    SlotStatus {
        slot,
        role: view.role.to_owned(),
        phase: view.phase,
        pid,
        generation: primary.map_or(view.target, |w| w.generation),
        inflight: primary.map_or(0, |w| held(w.worker)),
        queued: hub.queued,
        others: view
            .others
            .iter()
            .map(|w| WorkerStatus { pid: w.pid, generation: w.generation, inflight: held(w.worker), phase: w.phase })
            .collect(),
        dispatched: hub.counters.dispatched,
        acked: hub.counters.acked,
        redelivered: hub.counters.redelivered,
        dropped: hub.counters.dropped,
        crashes: view.crashes,
        panics: hub.panics,
        recycled: view.recycled,
        crash_loop: view.crash_loop,
        rss_kib: primary.and_then(|w| w.pid).and_then(rss_kib),
        heartbeat_age_ms: hub.heartbeat_age_ms.filter(|_| hub.current.is_some()),
        last_exit: view.exits.last().map(|e| e.detail.clone()),
        exits: view.exits.clone(),
        exit_counts: view.exit_counts.clone(),
    }
}
