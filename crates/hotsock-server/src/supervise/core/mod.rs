//! The supervisor's decisions, without I/O: which worker processes should
//! run, when to restart one, and how a reload proceeds. It never spawns,
//! kills, sleeps or reads the clock: the driver (`driver.rs`) passes in the
//! time and what happened ([`Input`]), and carries out what comes back
//! ([`Command`]). That is what makes every rule here testable without a
//! process (`tests.rs`, with a property test over random histories).
//!
//! Theory of operation.
//!
//! ```text
//!   worker:  Starting ──Ready──▶ Ready ──switch away──▶ Draining{deadline} ──▶ (gone: ExitCause)
//!                                  │ ▲
//!                          handoff │ │ successor failed
//!                                  ▼ │
//!                               Suspended
//! ```
//!
//! A *slot* always wants one serving worker of its *target* generation. A
//! slot without one (and without a worker starting for it) gets a restart
//! at `restart_at`: at once after a single failure, then with doubling
//! back-off, and at the slowest back-off once it crash-loops. A *job* is a
//! reload: it starts workers of the new generation, switches slots to them
//! once they are Ready (the readiness gate), and drains the old ones. A job
//! that fails undoes its switches. Requests that arrive during a job wait in
//! a queue; each next job takes every waiting request of its kind (single
//! flight, coalesced), and every request hears the outcome that served it.
//! After a job the new generation is watched: enough failures in the window
//! queue an automatic rollback. The one rule that matters for zero loss is
//! not here but in the slot (`route/slot.rs`): this core only decides
//! *which* worker is current; the slot decides when an event may go to it.

mod job;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{Config, ReloadStrategy};
use crate::route::slot::WorkerId;
use crate::supervise::exit::Exit;
use crate::supervise::messages::Retire;
use crate::wire::{EXITS_KEPT, ExitCause, KillReason, ReloadKind, ReloadOutcome, WorkerPhase};

use job::{Job, Prepared, RollbackWatch};

/// Delay before the second restart in a row; doubles up to
/// `workers.restart_backoff_max_ms`.
pub(crate) const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Opaque token for whoever waits for a reload's outcome (the driver keeps
/// the channel; the core only says which tokens an outcome answers).
pub(crate) type Waiter = u64;

/// The settings the decisions depend on, taken from the config once.
#[derive(Debug, Clone)]
pub(crate) struct CoreConfig {
    /// Slots `0..event_slots` run event workers, the rest task workers.
    pub(crate) event_slots: usize,
    pub(crate) task_slots: usize,
    pub(crate) strategy: ReloadStrategy,
    /// `reload.max_wait_ms`: a draining worker's deadline.
    pub(crate) drain: Duration,
    /// `reload.handoff_timeout_ms`: how long a suspended worker has to hand
    /// over its state.
    pub(crate) handoff_timeout: Duration,
    pub(crate) canary: Duration,
    pub(crate) rollback_window: Duration,
    pub(crate) rollback_failures: u32,
    pub(crate) restart_backoff_max: Duration,
    pub(crate) crash_loop_count: u32,
    pub(crate) crash_loop_window: Duration,
}

impl CoreConfig {
    pub(crate) fn from_config(config: &Config) -> CoreConfig {
        let (workers, reload) = (&config.workers, &config.reload);
        CoreConfig {
            event_slots: workers.count,
            task_slots: workers.task_count,
            strategy: reload.strategy,
            drain: Duration::from_millis(reload.max_wait_ms),
            handoff_timeout: Duration::from_millis(reload.handoff_timeout_ms),
            canary: Duration::from_millis(reload.canary_ms),
            rollback_window: Duration::from_millis(reload.rollback_window_ms),
            rollback_failures: reload.rollback_failures,
            restart_backoff_max: Duration::from_millis(workers.restart_backoff_max_ms),
            crash_loop_count: workers.crash_loop_count,
            crash_loop_window: Duration::from_millis(workers.crash_loop_window_ms),
        }
    }
}

/// A reload request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) kind: ReloadKind,
    /// Switch this many slots first and watch them for `reload.canary_ms`.
    pub(crate) canary: Option<usize>,
    /// Why the supervisor asked for it itself (automatic rollback).
    pub(crate) reason: Option<String>,
    pub(crate) waiter: Option<Waiter>,
}

/// What happened, as the driver tells it.
#[derive(Debug)]
pub(crate) enum Input {
    /// A worker process was spawned (it has not said Ready yet).
    Spawned { worker: WorkerId, pid: Option<u32> },
    /// A worker answered Hello with Ready.
    Ready { worker: WorkerId, pid: Option<u32>, handoff: bool },
    /// A worker process is gone; its events are back in its slot.
    Gone { worker: WorkerId, pid: Option<u32>, exit: Exit, was_ready: bool, at_unix_ms: u64 },
    /// Handlers of a worker panicked (caught; it lives on).
    Panicked { worker: WorkerId, count: u32 },
    /// A worker handled `workers.max_requests` events.
    Recycle { worker: WorkerId },
    /// The suspended worker of a slot handed over its state.
    HandedOff { slot: usize },
    /// Someone asks for a reload.
    Reload(Request),
    /// The executable copy the core asked for is done.
    GenerationCreated(Result<u64, String>),
    /// Graceful stop: drain every worker, restart none.
    Retire,
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start a worker process of `generation` in `slot`.
    Launch { worker: WorkerId, slot: usize, generation: u64 },
    /// Tell a worker it gets no more events; kill it at `deadline`.
    Drain { worker: WorkerId, deadline: Instant, retire: Retire },
    /// Kill a worker now.
    Kill { worker: WorkerId, reason: KillReason },
    /// Route the slot's new events to `worker` (the slot drains the one before).
    MakeCurrent { slot: usize, worker: WorkerId },
    /// Stop routing to `worker`; the slot tells it to stop once idle.
    Unroute { slot: usize, worker: WorkerId },
    /// Hold the slot's events back and ask its worker for its state.
    Suspend { slot: usize },
    /// Give the suspended worker its events again.
    Resume { slot: usize },
    /// Copy the worker executable into a new generation.
    CreateGeneration,
    /// Remove stored generations, except these.
    Prune { protect: Vec<u64> },
    /// Tell these waiters how their reload ended.
    Answer { waiters: Vec<Waiter>, outcome: ReloadOutcome },
}

/// One live worker process.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRec {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) phase: Phase,
    pub(crate) pid: Option<u32>,
    /// It can hand its state to its successor (capability HANDOFF).
    pub(crate) handoff: bool,
}

/// A live worker's lifecycle (see the module diagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Ready,
    Suspended,
    Draining { deadline: Instant },
}

/// Who starts a slot's next worker once its state is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Successor {
    Job,
    Recycle,
}

/// One slot, as the supervisor sees it.
#[derive(Debug)]
pub(crate) struct SlotSup {
    /// Generation a restart of this slot uses.
    pub(crate) target: u64,
    /// The worker that gets the slot's events.
    pub(crate) current: Option<WorkerId>,
    /// A restart (or a recycle's successor) under way.
    pub(crate) starting: Option<WorkerId>,
    crashes: VecDeque<Instant>,
    consecutive: u32,
    pub(crate) restart_at: Instant,
    ready_since: Option<Instant>,
    /// The current worker is suspended for a state handoff: who waits for
    /// the state, and until when (then the successor starts without it).
    pub(crate) handoff_wait: Option<(Successor, Instant)>,
    /// For status.
    pub(crate) counters: SlotCounters,
}

/// What status shows of a slot's history.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotCounters {
    /// Serving or restarting workers that failed.
    pub(crate) crashes: u64,
    /// Workers replaced after `workers.max_requests`.
    pub(crate) recycled: u64,
    /// The slot is restarting at the slowest back-off.
    pub(crate) crash_loop: bool,
    /// The last exits, oldest first (at most `EXITS_KEPT`).
    pub(crate) exits: VecDeque<ExitEntry>,
    /// Every exit since start, by cause.
    pub(crate) exits_by_cause: std::collections::BTreeMap<&'static str, u64>,
}

/// One worker that ended.
#[derive(Debug, Clone)]
pub(crate) struct ExitEntry {
    pub(crate) pid: Option<u32>,
    pub(crate) generation: u64,
    pub(crate) cause: ExitCause,
    pub(crate) detail: String,
    pub(crate) at_unix_ms: u64,
}

/// The supervisor's state; see the module docs.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: CoreConfig,
    pub(crate) slots: Vec<SlotSup>,
    pub(crate) workers: HashMap<WorkerId, WorkerRec>,
    /// The generation all slots run when no job is under way.
    pub(crate) serving: u64,
    /// The rollback target.
    pub(crate) previous: Option<u64>,
    pub(crate) job: Option<Job>,
    /// A job waiting for its generation's executable copy.
    pub(crate) preparing: Option<Prepared>,
    pub(crate) watch: Option<RollbackWatch>,
    pub(crate) queue: VecDeque<Request>,
    pub(crate) last_reload: Option<ReloadOutcome>,
    next_worker: WorkerId,
    pub(crate) retiring: bool,
    /// Commands produced by the call under way.
    out: Vec<Command>,
}

impl Core {
    /// New settings from a reload that re-read the config. The slot counts
    /// cannot change (they need a restart), so the slots stay as they are;
    /// every later decision uses the new timeouts, back-offs and strategy.
    pub(crate) fn reconfigure(&mut self, config: CoreConfig) {
        debug_assert_eq!((config.event_slots, config.task_slots), (self.config.event_slots, self.config.task_slots));
        self.config = config;
    }

    /// A supervisor whose slots all want generation 1; `start` fills them.
    pub(crate) fn new(config: CoreConfig, now: Instant) -> Core {
        let slots = (0..config.event_slots + config.task_slots)
            .map(|_| SlotSup {
                target: 1,
                current: None,
                starting: None,
                crashes: VecDeque::new(),
                consecutive: 0,
                restart_at: now,
                ready_since: None,
                handoff_wait: None,
                counters: SlotCounters::default(),
            })
            .collect();
        Core {
            config,
            slots,
            workers: HashMap::new(),
            serving: 1,
            previous: None,
            job: None,
            preparing: None,
            watch: None,
            queue: VecDeque::new(),
            last_reload: None,
            next_worker: 1,
            retiring: false,
            out: Vec::new(),
        }
    }

    /// Starts serving `serving` (with `previous` to roll back to) instead
    /// of generation 1: a server that took over from a running one
    /// (`hotsock upgrade`) runs the code that one was running.
    pub(crate) fn start_at(&mut self, serving: u64, previous: Option<u64>) {
        self.serving = serving;
        self.previous = previous;
        for slot in &mut self.slots {
            slot.target = serving;
        }
    }

    /// Launches the first worker of every slot.
    pub(crate) fn start(&mut self, now: Instant) -> Vec<Command> {
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// Takes in one thing that happened at `now`; returns what to do.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Command> {
        match input {
            Input::Spawned { worker, pid } => {
                // Only for `status`: a worker stuck in its start-up shows
                // which process it is.
                if let Some(rec) = self.workers.get_mut(&worker) {
                    rec.pid = pid;
                }
            }
            Input::Ready { worker, pid, handoff } => self.on_ready(now, worker, pid, handoff),
            Input::Gone { worker, pid, exit, was_ready, at_unix_ms } => {
                self.on_gone(now, worker, pid, exit, was_ready, at_unix_ms)
            }
            Input::Panicked { worker, count } => {
                if let Some(rec) = self.workers.get(&worker) {
                    let (slot, generation) = (rec.slot, rec.generation);
                    self.on_failure(now, slot, generation, count, &format!("{count} handler panic(s)"));
                }
            }
            Input::Recycle { worker } => self.recycle(now, worker),
            Input::HandedOff { slot } => {
                if let Some((successor, _)) = self.slots.get_mut(slot).and_then(|s| s.handoff_wait.take()) {
                    self.start_successor(slot, successor);
                }
            }
            Input::Reload(request) => self.queue.push_back(request),
            Input::GenerationCreated(result) => self.generation_created(now, result),
            Input::Retire => self.retire(now),
        }
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// Acts on the deadlines that have passed by `now` (restarts, canary
    /// watches, handoff waits).
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Command> {
        self.check_canary(now);
        self.check_handoffs(now);
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// When `tick` has something to do next, if ever.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        let restart = self
            .slots
            .iter()
            .filter(|s| !self.retiring && s.current.is_none() && s.starting.is_none())
            .map(|s| s.restart_at);
        let canary = self.job.as_ref().and_then(|j| j.canary_until);
        let handoff = self.slots.iter().filter_map(|s| s.handoff_wait.map(|(_, until)| until));
        restart.chain(canary).chain(handoff).min()
    }

    /// A stop is under way and every worker is gone.
    pub(crate) fn finished(&self) -> bool {
        self.retiring && self.workers.is_empty()
    }

    /// The phase `status` shows for a slot: its current worker's, else the
    /// one starting for it, else how its last worker ended.
    pub(crate) fn slot_phase(&self, slot: usize, now: Instant) -> (WorkerPhase, Option<WorkerId>) {
        let state = &self.slots[slot];
        let primary = state.current.or(state.starting).or_else(|| self.job_starting(slot));
        if let Some(worker) = primary
            && let Some(rec) = self.workers.get(&worker)
        {
            return (rec.phase.to_wire(now), Some(worker));
        }
        match state.counters.exits.back() {
            Some(exit) => (WorkerPhase::Exited { cause: exit.cause }, None),
            None => (WorkerPhase::Starting, None),
        }
    }

    /// After every input: restarts that are due, and the next job.
    fn settle(&mut self, now: Instant) {
        self.reconcile(now);
        self.start_next_job(now);
    }

    fn emit(&mut self, command: Command) {
        self.out.push(command);
    }

    fn launch(&mut self, slot: usize, generation: u64) -> WorkerId {
        let worker = self.next_worker;
        self.next_worker += 1;
        let rec = WorkerRec { slot, generation, phase: Phase::Starting, pid: None, handoff: false };
        self.workers.insert(worker, rec);
        self.emit(Command::Launch { worker, slot, generation });
        worker
    }

    fn kill(&mut self, worker: WorkerId, reason: KillReason) {
        if self.workers.contains_key(&worker) {
            self.emit(Command::Kill { worker, reason });
        }
    }

    fn drain(&mut self, worker: WorkerId, deadline: Instant, retire: Retire) {
        if let Some(rec) = self.workers.get_mut(&worker) {
            rec.phase = Phase::Draining { deadline };
            self.emit(Command::Drain { worker, deadline, retire });
        }
    }

    fn set_phase(&mut self, worker: WorkerId, phase: Phase) {
        if let Some(rec) = self.workers.get_mut(&worker) {
            rec.phase = phase;
        }
    }

    /// The worker a job is starting for `slot`, if any.
    fn job_starting(&self, slot: usize) -> Option<WorkerId> {
        self.job.as_ref().and_then(|j| j.starting.get(&slot).copied())
    }

    /// Routes `slot`'s new events to `worker`; the previous current worker
    /// drains and is killed if it is still running after `reload.max_wait_ms`.
    fn switch(&mut self, now: Instant, slot: usize, worker: WorkerId, generation: u64, retire: Retire) {
        self.emit(Command::MakeCurrent { slot, worker });
        self.set_phase(worker, Phase::Ready);
        let state = &mut self.slots[slot];
        state.target = generation;
        state.ready_since = Some(now);
        if let Some(old) = state.current.replace(worker).filter(|old| *old != worker) {
            let deadline = now + self.config.drain;
            self.drain(old, deadline, retire);
        }
    }

    /// Starts restarts that are due: a slot with no current worker, no
    /// restart under way and no job starting a worker for it.
    fn reconcile(&mut self, now: Instant) {
        if self.retiring {
            return;
        }
        for slot in 0..self.slots.len() {
            let state = &self.slots[slot];
            let due = state.current.is_none()
                && state.starting.is_none()
                && state.handoff_wait.is_none()
                && now >= state.restart_at;
            if due && self.job_starting(slot).is_none() {
                let target = state.target;
                let worker = self.launch(slot, target);
                self.slots[slot].starting = Some(worker);
            }
        }
    }

    fn on_ready(&mut self, now: Instant, worker: WorkerId, pid: Option<u32>, handoff: bool) {
        let Some(rec) = self.workers.get_mut(&worker) else { return };
        rec.pid = pid;
        rec.handoff = handoff;
        rec.phase = Phase::Ready;
        let slot = rec.slot;
        if self.job_ready(now, slot, worker) {
            return;
        }
        if self.slots[slot].starting == Some(worker) {
            // A restart after a crash (nothing to drain) or a recycle's
            // successor (the recycled worker drains).
            self.slots[slot].starting = None;
            let target = self.slots[slot].target;
            self.switch(now, slot, worker, target, Retire::Recycled);
            return;
        }
        // A worker nobody waits for any more (its job was aborted).
        self.kill(worker, KillReason::NotNeeded);
    }

    fn on_gone(
        &mut self,
        now: Instant,
        worker: WorkerId,
        pid: Option<u32>,
        exit: Exit,
        was_ready: bool,
        at_unix_ms: u64,
    ) {
        let Some(rec) = self.workers.remove(&worker) else { return };
        let (slot, generation) = (rec.slot, rec.generation);
        let description = exit.describe();
        let failed = exit.cause.is_failure();
        let counters = &mut self.slots[slot].counters;
        *counters.exits_by_cause.entry(exit.cause.name()).or_default() += 1;
        if counters.exits.len() == EXITS_KEPT {
            counters.exits.pop_front();
        }
        counters.exits.push_back(ExitEntry {
            pid: rec.pid.or(pid),
            generation,
            cause: exit.cause,
            detail: description.clone(),
            at_unix_ms,
        });
        if self.job_worker_gone(now, slot, worker, generation, &description) {
            return;
        }
        let state = &mut self.slots[slot];
        let was_current = state.current == Some(worker);
        let was_restart = state.starting == Some(worker);
        if was_current {
            state.current = None;
        }
        if was_restart {
            state.starting = None;
            // A failed recycle successor: the suspended old worker goes on.
            if let Some(current) = state.current {
                self.emit(Command::Resume { slot });
                self.set_phase(current, Phase::Ready);
            }
        }
        if was_current && let Some((successor, _)) = self.slots[slot].handoff_wait.take() {
            // It died while handing over: its successor starts without state.
            self.start_successor(slot, successor);
        }
        if !(was_current || was_restart) {
            // A draining worker of an older generation.
            if failed {
                tracing::warn!(slot, generation, "draining worker ended: {description}");
            } else {
                tracing::info!(slot, generation, "draining worker ended: {description}");
            }
            return;
        }
        self.slots[slot].counters.crashes += u64::from(failed);
        if self.retiring || !failed {
            return;
        }
        self.record_crash(now, slot, &description);
        if was_ready {
            self.on_failure(now, slot, generation, 1, &format!("crash ({description})"));
        }
    }

    /// Replaces a worker that handled `workers.max_requests` events with a
    /// fresh process of the same generation, through the same switch as a
    /// reload (start, Ready, switch, drain). A job working on the slot
    /// replaces it anyway, so recycling waits for none.
    fn recycle(&mut self, now: Instant, worker: WorkerId) {
        let Some(slot) = self.workers.get(&worker).map(|w| w.slot) else { return };
        let state = &self.slots[slot];
        if self.retiring
            || self.job_has_slot(slot)
            || state.current != Some(worker)
            || state.starting.is_some()
            || state.handoff_wait.is_some()
        {
            return;
        }
        tracing::info!(slot, "recycling the worker after workers.max_requests events");
        self.slots[slot].counters.recycled += 1;
        self.suspend_or_start(now, slot, Successor::Recycle);
    }

    /// A current worker that hands over state is suspended first; its
    /// successor starts once the state is in (`start_successor`).
    fn suspend_or_start(&mut self, now: Instant, slot: usize, successor: Successor) {
        let current = self.slots[slot].current;
        let hands_off = current.and_then(|w| self.workers.get(&w)).is_some_and(|w| w.handoff);
        match current {
            Some(worker) if hands_off => {
                self.emit(Command::Suspend { slot });
                self.set_phase(worker, Phase::Suspended);
                let until = now + self.config.handoff_timeout;
                self.slots[slot].handoff_wait = Some((successor, until));
            }
            _ => self.start_successor(slot, successor),
        }
    }

    /// Handoffs that did not come in time: start the successors anyway.
    fn check_handoffs(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if let Some((successor, until)) = self.slots[slot].handoff_wait
                && now >= until
            {
                tracing::warn!(
                    slot,
                    "no handoff state within reload.handoff_timeout_ms; starting the successor without it"
                );
                self.slots[slot].handoff_wait = None;
                self.start_successor(slot, successor);
            }
        }
    }

    /// Launches the next worker of `slot` (its state, if handed over, is in
    /// the hub and goes into Hello).
    fn start_successor(&mut self, slot: usize, successor: Successor) {
        match successor {
            Successor::Recycle => {
                let target = self.slots[slot].target;
                let worker = self.launch(slot, target);
                self.slots[slot].starting = Some(worker);
            }
            Successor::Job => self.job_successor(slot),
        }
    }

    fn record_crash(&mut self, now: Instant, slot: usize, description: &str) {
        let config = &self.config;
        let state = &mut self.slots[slot];
        state.crashes.push_back(now);
        while state.crashes.front().is_some_and(|t| now.duration_since(*t) > config.crash_loop_window) {
            state.crashes.pop_front();
        }
        let looping = state.crashes.len() >= config.crash_loop_count as usize;
        let lived_long = state.ready_since.is_some_and(|t| now.duration_since(t) > config.crash_loop_window);
        state.consecutive = if lived_long { 1 } else { state.consecutive + 1 };
        // The first restart is immediate (a single crash should cost as
        // little as possible); repeated ones back off exponentially.
        let delay = if looping {
            tracing::error!(
                slot,
                crashes = state.crashes.len(),
                "worker is crash-looping; restarting at the slowest back-off"
            );
            config.restart_backoff_max
        } else if state.consecutive <= 1 {
            Duration::ZERO
        } else {
            RESTART_BACKOFF_MIN.saturating_mul(1 << (state.consecutive - 2).min(16)).min(config.restart_backoff_max)
        };
        state.restart_at = now + delay;
        state.counters.crash_loop = looping;
        tracing::warn!(slot, "worker ended: {description}; restarting in {delay:?}");
    }

    /// Graceful stop: every job and request fails with "stopping", current
    /// and draining workers drain, workers still starting are killed.
    fn retire(&mut self, now: Instant) {
        self.retiring = true;
        self.abandon_jobs(now, "the server is stopping");
        let deadline = now + self.config.drain;
        let mut workers: Vec<(WorkerId, usize)> = self.workers.iter().map(|(id, w)| (*id, w.slot)).collect();
        workers.sort_unstable();
        for (worker, slot) in workers {
            self.emit(Command::Unroute { slot, worker });
            let serving = self.slots[slot].current == Some(worker)
                || self.workers.get(&worker).is_some_and(|w| matches!(w.phase, Phase::Draining { .. }));
            if serving {
                self.drain(worker, deadline, Retire::Replaced);
            } else {
                self.kill(worker, KillReason::ServerStopping);
            }
        }
    }
}

impl Phase {
    /// The phase as status shows it, with the time left to a deadline.
    pub(crate) fn to_wire(self, now: Instant) -> WorkerPhase {
        match self {
            Phase::Starting => WorkerPhase::Starting,
            Phase::Ready => WorkerPhase::Ready,
            Phase::Suspended => WorkerPhase::Suspended,
            Phase::Draining { deadline } => {
                WorkerPhase::Draining { deadline_in_ms: deadline.saturating_duration_since(now).as_millis() as u64 }
            }
        }
    }
}
