//! What the supervisor publishes for `status`: generations, the reload under
//! way, and each slot's workers with their phases. Built from the core after
//! every decision; read by `control/status.rs`.

use std::time::Instant;

use crate::route::slot::WorkerId;
use crate::supervise::core::Core;
use crate::wire::{ExitRecord, ReloadOutcome, WorkerPhase};

/// The supervisor's side of `status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SupervisionView {
    pub(crate) serving: u64,
    pub(crate) previous: Option<u64>,
    pub(crate) reloading: Option<String>,
    pub(crate) queued: usize,
    pub(crate) last_reload: Option<ReloadOutcome>,
    pub(crate) slots: Vec<SlotView>,
}

/// One slot.
#[derive(Debug, Clone)]
pub(crate) struct SlotView {
    pub(crate) role: &'static str,
    /// The phase of its current worker (or the one starting for it, or how
    /// the last one ended).
    pub(crate) phase: WorkerPhase,
    /// That worker.
    pub(crate) primary: Option<WorkerView>,
    /// Its other live workers.
    pub(crate) others: Vec<WorkerView>,
    /// The generation a restart of it uses.
    pub(crate) target: u64,
    pub(crate) crashes: u64,
    pub(crate) recycled: u64,
    pub(crate) crash_loop: bool,
    pub(crate) exits: Vec<ExitRecord>,
    pub(crate) exit_counts: std::collections::BTreeMap<String, u64>,
}

/// One live worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerView {
    pub(crate) worker: WorkerId,
    pub(crate) pid: Option<u32>,
    pub(crate) generation: u64,
    pub(crate) phase: WorkerPhase,
}

impl SupervisionView {
    /// What is true before the supervisor's first step: every slot's first
    /// worker is starting (so `status` never shows a server without slots).
    pub(crate) fn starting(event_slots: usize, task_slots: usize) -> SupervisionView {
        let slots = (0..event_slots + task_slots)
            .map(|slot| SlotView {
                role: if slot < event_slots { "event" } else { "task" },
                phase: WorkerPhase::Starting,
                primary: None,
                others: Vec::new(),
                target: 1,
                crashes: 0,
                recycled: 0,
                crash_loop: false,
                exits: Vec::new(),
                exit_counts: Default::default(),
            })
            .collect();
        SupervisionView { serving: 1, slots, ..SupervisionView::default() }
    }
}

impl Core {
    /// The view at `now` (deadlines are shown as time left).
    pub(crate) fn view(&self, now: Instant) -> SupervisionView {
        let slots = (0..self.slots.len())
            .map(|slot| {
                let state = &self.slots[slot];
                let (phase, primary) = self.slot_phase(slot, now);
                let worker_view = |worker: WorkerId| {
                    self.workers.get(&worker).map(|rec| WorkerView {
                        worker,
                        pid: rec.pid,
                        generation: rec.generation,
                        phase: rec.phase.to_wire(now),
                    })
                };
                let mut others: Vec<WorkerView> = self
                    .workers
                    .iter()
                    .filter(|(id, rec)| rec.slot == slot && Some(**id) != primary)
                    .filter_map(|(id, _)| worker_view(*id))
                    .collect();
                others.sort_by_key(|w| w.worker);
                let counters = &state.counters;
                SlotView {
                    role: if slot < self.config.event_slots { "event" } else { "task" },
                    phase,
                    primary: primary.and_then(worker_view),
                    others,
                    target: state.target,
                    crashes: counters.crashes,
                    recycled: counters.recycled,
                    crash_loop: counters.crash_loop,
                    exits: counters
                        .exits
                        .iter()
                        .map(|e| ExitRecord {
                            pid: e.pid,
                            generation: e.generation,
                            cause: e.cause,
                            detail: e.detail.clone(),
                            at_unix_ms: e.at_unix_ms,
                        })
                        .collect(),
                    exit_counts: counters.exits_by_cause.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                }
            })
            .collect();
        SupervisionView {
            serving: self.serving,
            previous: self.previous,
            reloading: self.reloading(),
            queued: self.queue.len(),
            last_reload: self.last_reload.clone(),
            slots,
        }
    }
}
