//! The supervisor: one task that decides which worker processes run. It
//! keeps every slot filled (restarting crashed workers with back-off and
//! crash-loop detection) and runs reloads, one at a time.
//!
//! Theory of operation. Worker tasks (`worker.rs`) report `Ready` and
//! `Gone`; admin requests and signals ask for reloads. All of it arrives on
//! one channel, so every decision is made in one place, in order, and the
//! state below never races with itself.
//!
//! A reload (a `Job`) starts generation n+1 from a fresh copy of the worker
//! executable and switches slots to it. `rolling`: one slot at a time, start
//! the new worker, wait for Ready, make it current (the old one drains), go
//! on. `all-at-once`: start every new worker, and switch all slots only when
//! all are Ready. A new worker that fails before Ready aborts the job: the
//! other new workers are stopped, and slots already switched are switched
//! back to the old generation the same zero-loss way, so the old generation
//! serves on. Requests that arrive during a job wait, and all waiting
//! requests of a kind are served by the next job (single flight, coalesced:
//! nothing is dropped and every requester hears the outcome that covered it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::ReloadStrategy;
use crate::exit::{Exit, KillReason};
use crate::generations::Generations;
use crate::server::Shared;
use crate::slot::WorkerId;
use crate::status::WorkerState;
use crate::worker::{self, Control, Launch, Retire, WorkerEvent};

/// Delay before the second restart in a row; doubles up to the maximum.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// What a reload request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadKind {
    /// Event workers to a new generation built from the current executable.
    Workers,
    /// Task workers only (`SIGUSR2`, `--tasks`).
    Tasks,
    /// Back to the generation served before the last switch.
    Rollback,
}

/// The result of a reload, as `hotsock reload --wait` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Whether the switch happened.
    pub ok: bool,
    /// What was asked.
    pub kind: ReloadKind,
    /// The generation serving before.
    pub from_generation: u64,
    /// The generation serving after (equal to `from_generation` on failure).
    pub generation: u64,
    /// From the start of the job until every slot routed to the new
    /// generation (or the failure was final).
    pub duration_ms: u64,
    /// How many requests this outcome answers (coalesced ones included).
    pub requests: usize,
    /// What happened, in words; the reason on failure.
    pub message: String,
}

/// A request to the supervisor.
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub(crate) kind: ReloadKind,
    /// Switch this many slots first and watch them for `canary_ms`.
    pub(crate) canary: Option<usize>,
    pub(crate) reply: Option<oneshot::Sender<ReloadOutcome>>,
    /// Why the supervisor asked for it itself (automatic rollback).
    pub(crate) reason: Option<String>,
}

#[derive(Debug)]
enum Msg {
    Worker(WorkerEvent),
    Reload(ReloadRequest),
    Retire,
}

/// How the rest of the server talks to the supervisor.
#[derive(Debug, Clone)]
pub(crate) struct SupervisorHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl SupervisorHandle {
    pub(crate) fn reload(&self, request: ReloadRequest) {
        let _ = self.tx.send(Msg::Reload(request));
    }

    /// Graceful stop: drain every worker and restart none.
    pub(crate) fn retire(&self) {
        let _ = self.tx.send(Msg::Retire);
    }
}

#[derive(Debug)]
struct SlotSup {
    /// Generation a restart of this slot uses.
    target: u64,
    current: Option<WorkerId>,
    /// A restart in progress.
    starting: Option<WorkerId>,
    crashes: VecDeque<Instant>,
    consecutive: u32,
    restart_at: Instant,
    ready_since: Option<Instant>,
    /// The current worker is suspended for a state handoff: who waits for
    /// the state, and until when (then the successor starts without it).
    handoff_wait: Option<(Successor, Instant)>,
}

/// Who starts a slot's next worker once its state is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Successor {
    Job,
    Recycle,
}

#[derive(Debug)]
struct Live {
    slot: usize,
    control: mpsc::UnboundedSender<Control>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Forward,
    /// Switching already-switched slots back after a failure.
    Undo {
        reason: String,
    },
}

#[derive(Debug)]
struct Job {
    kind: ReloadKind,
    waiters: Vec<oneshot::Sender<ReloadOutcome>>,
    requests: usize,
    began: Instant,
    from: u64,
    to: u64,
    strategy: ReloadStrategy,
    phase: Phase,
    todo: VecDeque<usize>,
    starting: HashMap<usize, WorkerId>,
    ready: Vec<(usize, WorkerId)>,
    switched: Vec<usize>,
    /// Slots whose current worker is handing over its state first.
    handoff: Vec<usize>,
    /// Slots to switch and watch before the others.
    canary: Option<usize>,
    /// While the canary slots are watched: until when.
    canary_until: Option<Instant>,
    /// Words put before the outcome message (automatic rollback).
    reason: Option<String>,
}

/// The newest generation, watched for `rollback_window_ms` after its switch.
#[derive(Debug)]
struct Watch {
    generation: u64,
    until: Instant,
    failures: u32,
}

/// Creates the supervisor; the returned future runs it until every worker
/// is gone after `retire`.
pub(crate) fn start(shared: Arc<Shared>, generations: Generations) -> (SupervisorHandle, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = SupervisorHandle { tx: tx.clone() };
    let now = Instant::now();
    let slots = (0..shared.config.workers.count + shared.config.workers.task_count)
        .map(|_| SlotSup {
            target: 1,
            current: None,
            starting: None,
            crashes: VecDeque::new(),
            consecutive: 0,
            restart_at: now,
            ready_since: None,
            handoff_wait: None,
        })
        .collect();
    let (events, mut events_rx) = mpsc::unbounded_channel();
    // Worker reports join the request channel so one loop sees everything.
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if tx.send(Msg::Worker(event)).is_err() {
                return;
            }
        }
    });
    let supervisor = Supervisor {
        shared,
        slots,
        generations,
        serving: 1,
        previous: None,
        job: None,
        watch: None,
        queue: VecDeque::new(),
        next_worker: 1,
        retiring: false,
        live: HashMap::new(),
        events,
    };
    (handle, supervisor.run(rx))
}

struct Supervisor {
    shared: Arc<Shared>,
    slots: Vec<SlotSup>,
    generations: Generations,
    /// The generation all slots run when no job is under way.
    serving: u64,
    /// The rollback target.
    previous: Option<u64>,
    job: Option<Job>,
    watch: Option<Watch>,
    queue: VecDeque<ReloadRequest>,
    next_worker: WorkerId,
    retiring: bool,
    live: HashMap<WorkerId, Live>,
    events: mpsc::UnboundedSender<WorkerEvent>,
}

impl Supervisor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.publish();
        loop {
            self.reconcile();
            self.start_next_job().await;
            if self.retiring && self.live.is_empty() {
                return;
            }
            let canary_until = self.job.as_ref().and_then(|j| j.canary_until);
            let handoff_until = self.slots.iter().filter_map(|s| s.handoff_wait.map(|(_, until)| until)).min();
            let wake = [self.next_restart(), canary_until, handoff_until].into_iter().flatten().min();
            let msg = tokio::select! {
                msg = rx.recv() => msg,
                () = crate::server::sleep_until_opt(wake) => {
                    self.check_canary();
                    self.check_handoffs();
                    self.publish();
                    continue;
                }
            };
            match msg {
                Some(Msg::Worker(WorkerEvent::Ready { slot, worker })) => self.on_ready(slot, worker),
                Some(Msg::Worker(WorkerEvent::Recycle { slot, worker })) => self.recycle(slot, worker),
                Some(Msg::Worker(WorkerEvent::HandedOff { slot })) => {
                    if let Some((successor, _)) = self.slots[slot].handoff_wait.take() {
                        self.start_successor(slot, successor);
                    }
                }
                Some(Msg::Worker(WorkerEvent::Panicked { slot, generation, count })) => {
                    self.on_failure(slot, generation, count, &format!("{count} handler panic(s)"))
                }
                Some(Msg::Worker(WorkerEvent::Gone { slot, worker, generation, pid, exit, was_ready })) => {
                    self.on_gone(slot, worker, generation, pid, exit, was_ready)
                }
                Some(Msg::Reload(request)) => self.queue.push_back(request),
                Some(Msg::Retire) => self.retire(),
                None => return,
            }
            self.publish();
        }
    }

    fn launch(&mut self, slot: usize, generation: u64) -> WorkerId {
        let worker = self.next_worker;
        self.next_worker += 1;
        let program = self.generations.program(generation);
        let control =
            worker::launch(self.shared.clone(), Launch { slot, generation, program, worker }, self.events.clone());
        self.live.insert(worker, Live { slot, control });
        if self.slots[slot].current.is_none() {
            self.shared.hub.update_status(slot, |s| {
                s.state = WorkerState::Starting;
                s.pid = None;
                s.generation = generation;
            });
        }
        worker
    }

    fn control(&self, worker: WorkerId, control: Control) {
        if let Some(live) = self.live.get(&worker) {
            let _ = live.control.send(control);
        }
    }

    /// Routes `slot`'s new events to `worker`; the previous current worker
    /// drains and is killed if it is still running after `max_wait_ms`.
    fn switch(&mut self, slot: usize, worker: WorkerId, generation: u64, retire: Retire) {
        self.shared.hub.make_current(slot, worker);
        let state = &mut self.slots[slot];
        state.target = generation;
        state.ready_since = Some(Instant::now());
        if let Some(old) = state.current.replace(worker).filter(|old| *old != worker) {
            let deadline = Instant::now() + Duration::from_millis(self.shared.config.reload.max_wait_ms);
            self.control(old, Control::Drain { deadline, retire });
        }
    }

    /// Starts restarts that are due: a slot with no current worker, no
    /// restart under way and no job starting a worker for it.
    fn reconcile(&mut self) {
        if self.retiring {
            return;
        }
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let state = &self.slots[slot];
            let job_starting = self.job.as_ref().is_some_and(|j| j.starting.contains_key(&slot));
            let waiting = state.handoff_wait.is_some();
            if state.current.is_none()
                && state.starting.is_none()
                && !job_starting
                && !waiting
                && now >= state.restart_at
            {
                let target = state.target;
                let worker = self.launch(slot, target);
                self.slots[slot].starting = Some(worker);
            }
        }
    }

    fn next_restart(&self) -> Option<Instant> {
        self.slots.iter().filter(|s| s.current.is_none() && s.starting.is_none()).map(|s| s.restart_at).min()
    }

    fn on_ready(&mut self, slot: usize, worker: WorkerId) {
        if let Some(job) = &mut self.job
            && job.starting.get(&slot) == Some(&worker)
        {
            job.starting.remove(&slot);
            match job.strategy {
                ReloadStrategy::Rolling => {
                    let to = job.to;
                    job.switched.push(slot);
                    self.switch(slot, worker, to, Retire::Replaced);
                    self.advance_job();
                }
                ReloadStrategy::AllAtOnce => {
                    job.ready.push((slot, worker));
                    self.advance_job();
                }
            }
            return;
        }
        if self.slots[slot].starting == Some(worker) {
            self.slots[slot].starting = None;
            // A restart after a crash (nothing to drain) or a recycle's
            // successor (the recycled worker drains).
            let target = self.slots[slot].target;
            self.switch(slot, worker, target, Retire::Recycled);
            return;
        }
        // A worker nobody waits for any more (its job was aborted).
        self.control(worker, Control::Kill(KillReason::NotNeeded));
    }

    fn on_gone(
        &mut self,
        slot: usize,
        worker: WorkerId,
        generation: u64,
        pid: Option<u32>,
        exit: Exit,
        was_ready: bool,
    ) {
        self.live.remove(&worker);
        let description = exit.describe();
        let crashed = exit.cause.is_failure();
        self.shared.hub.record_exit(slot, pid, generation, &exit);
        if let Some(job) = &mut self.job {
            let starting = job.starting.get(&slot) == Some(&worker);
            let standby = job.ready.iter().any(|(_, w)| *w == worker);
            if starting || standby {
                job.starting.remove(&slot);
                job.ready.retain(|(_, w)| *w != worker);
                let why = format!("slot {slot} generation {generation}: {description}");
                tracing::error!("reload: new worker failed: {why}");
                self.fail_job(why);
                return;
            }
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
            if state.current.is_some() {
                self.shared.hub.resume(slot);
            }
        }
        if was_current && let Some((successor, _)) = self.slots[slot].handoff_wait.take() {
            // It died while handing over: its successor starts without state.
            self.start_successor(slot, successor);
        }
        if !(was_current || was_restart) {
            // A draining worker of an older generation.
            if crashed {
                tracing::warn!(slot, generation, "draining worker ended: {description}");
            } else {
                tracing::info!(slot, generation, "draining worker ended: {description}");
            }
            return;
        }
        self.shared.hub.update_status(slot, |s| {
            s.state = WorkerState::Exited;
            s.rss_kib = None;
            s.crashes += u64::from(crashed);
        });
        if self.retiring || !crashed {
            return;
        }
        self.record_crash(slot, &description);
        if was_ready {
            self.on_failure(slot, generation, 1, &format!("crash ({description})"));
        }
    }

    /// Replaces a worker that handled `workers.max_requests` events with a
    /// fresh process of the same generation, through the same switch as a
    /// reload (start, Ready, switch, drain). A job working on the slot
    /// replaces it anyway, so recycling waits for none.
    fn recycle(&mut self, slot: usize, worker: WorkerId) {
        let job_has_slot = self
            .job
            .as_ref()
            .is_some_and(|j| j.starting.contains_key(&slot) || j.todo.contains(&slot) || j.handoff.contains(&slot));
        let state = &self.slots[slot];
        if self.retiring || job_has_slot || state.current != Some(worker) || state.starting.is_some() {
            return;
        }
        if state.handoff_wait.is_some() {
            return;
        }
        tracing::info!(slot, "recycling the worker after workers.max_requests events");
        self.shared.hub.update_status(slot, |s| s.recycled += 1);
        if self.shared.hub.suspend(slot) {
            self.wait_for_handoff(slot, Successor::Recycle);
        } else {
            self.start_successor(slot, Successor::Recycle);
        }
    }

    fn wait_for_handoff(&mut self, slot: usize, successor: Successor) {
        let until = Instant::now() + Duration::from_millis(self.shared.config.reload.max_wait_ms);
        self.slots[slot].handoff_wait = Some((successor, until));
    }

    /// Handoffs that did not come in time: start the successors anyway.
    fn check_handoffs(&mut self) {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            if let Some((successor, until)) = self.slots[slot].handoff_wait
                && now >= until
            {
                tracing::warn!(slot, "no handoff state within reload.max_wait_ms; starting the successor without it");
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
            Successor::Job => {
                let Some(job) = &mut self.job else { return };
                let Some(position) = job.handoff.iter().position(|s| *s == slot) else { return };
                job.handoff.remove(position);
                let to = job.to;
                if let Some(restart) = self.slots[slot].starting.take() {
                    self.control(restart, Control::Kill(KillReason::Superseded));
                }
                let worker = self.launch(slot, to);
                if let Some(job) = &mut self.job {
                    job.starting.insert(slot, worker);
                }
            }
        }
    }

    /// A worker of `generation` crashed or reported handler panics: fails a
    /// canary of that generation, or counts toward an automatic rollback.
    fn on_failure(&mut self, slot: usize, generation: u64, count: u32, what: &str) {
        if let Some(job) = &self.job
            && job.phase == Phase::Forward
            && job.to == generation
            && job.canary.is_some()
            && job.switched.contains(&slot)
        {
            self.fail_job(format!("canary slot {slot} of generation {generation}: {what}"));
            return;
        }
        let threshold = self.shared.config.reload.rollback_failures;
        let Some(watch) = &mut self.watch else { return };
        if watch.generation != generation || threshold == 0 || Instant::now() > watch.until {
            return;
        }
        watch.failures += count;
        if watch.failures < threshold {
            return;
        }
        let reason = format!(
            "automatic rollback: generation {generation} had {} failures (crashes + handler panics) within reload.rollback_window_ms = {}, last: {what}",
            watch.failures, self.shared.config.reload.rollback_window_ms
        );
        tracing::error!("{reason}");
        self.watch = None;
        self.queue.push_front(ReloadRequest {
            kind: ReloadKind::Rollback,
            canary: None,
            reply: None,
            reason: Some(reason),
        });
    }

    /// Ends a canary watch that ran its time without failures: the other
    /// slots follow.
    fn check_canary(&mut self) {
        let Some(job) = &mut self.job else { return };
        if job.canary_until.is_some_and(|until| Instant::now() >= until) {
            tracing::info!(slots = ?job.switched, "canary passed; switching the other slots");
            job.canary_until = None;
            job.canary = Some(0);
            self.advance_job();
        }
    }

    fn record_crash(&mut self, slot: usize, description: &str) {
        let workers = &self.shared.config.workers;
        let window = Duration::from_millis(workers.crash_loop_window_ms);
        let backoff_max = Duration::from_millis(workers.restart_backoff_max_ms);
        let now = Instant::now();
        let state = &mut self.slots[slot];
        state.crashes.push_back(now);
        while state.crashes.front().is_some_and(|t| now.duration_since(*t) > window) {
            state.crashes.pop_front();
        }
        let looping = state.crashes.len() >= workers.crash_loop_count as usize;
        let lived_long = state.ready_since.is_some_and(|t| now.duration_since(t) > window);
        state.consecutive = if lived_long { 1 } else { state.consecutive + 1 };
        // The first restart is immediate (a single crash should cost as
        // little as possible); repeated ones back off exponentially.
        let delay = if looping {
            tracing::error!(
                slot,
                crashes = state.crashes.len(),
                "worker is crash-looping; restarting at the slowest back-off"
            );
            backoff_max
        } else if state.consecutive <= 1 {
            Duration::ZERO
        } else {
            RESTART_BACKOFF_MIN.saturating_mul(1 << (state.consecutive - 2).min(16)).min(backoff_max)
        };
        state.restart_at = now + delay;
        tracing::warn!(slot, "worker ended: {description}; restarting in {delay:?}");
        self.shared.hub.update_status(slot, |s| s.crash_loop = looping);
    }

    /// Copies the executable into a new generation, on a blocking thread.
    async fn new_generation(&mut self) -> Result<u64, String> {
        let copy = self.generations.next_copy();
        let task = copy.clone();
        match tokio::task::spawn_blocking(move || task.run()).await {
            Ok(Ok(stored)) => Ok(self.generations.commit(copy, stored)),
            Ok(Err(e)) => Err(format!("cannot create generation: {e}")),
            Err(e) => Err(format!("cannot create generation: {e}")),
        }
    }

    /// Takes the next waiting request and every waiting request of the same
    /// kind into one job. Runs at the top of the loop, the only place that
    /// awaits: copying the executable happens on a blocking thread.
    async fn start_next_job(&mut self) {
        while self.job.is_none() && !self.retiring && !self.queue.is_empty() {
            self.start_job().await;
        }
    }

    async fn start_job(&mut self) {
        if self.job.is_some() || self.retiring {
            return;
        }
        let Some(first) = self.queue.pop_front() else { return };
        let (kind, canary, reason) = (first.kind, first.canary, first.reason);
        let mut waiters: Vec<_> = first.reply.into_iter().collect();
        let mut requests = 1;
        self.queue.retain_mut(|request| {
            if request.kind != kind || request.canary != canary || request.reason.is_some() {
                return true;
            }
            requests += 1;
            waiters.extend(request.reply.take());
            false
        });
        let began = Instant::now();
        let from = self.serving;
        let target = match kind {
            ReloadKind::Tasks if self.shared.config.workers.task_count == 0 => {
                tracing::info!("task-worker reload requested, but no task workers are configured: nothing to do");
                let message = "no task workers are configured; nothing to reload".to_owned();
                return self.answer(waiters, requests, kind, began, from, from, true, message);
            }
            ReloadKind::Tasks | ReloadKind::Workers => self.new_generation().await,
            ReloadKind::Rollback => match self.previous {
                Some(previous) if self.generations.exists(previous) => Ok(previous),
                _ => Err("no previous generation to roll back to".to_owned()),
            },
        };
        let to = match target {
            Ok(to) => to,
            Err(why) => return self.answer(waiters, requests, kind, began, from, from, false, why),
        };
        let canary = canary.filter(|k| *k > 0 && *k < self.slots.len());
        tracing::info!(?kind, from, to, "reload started");
        let events = self.shared.config.workers.count;
        // Event reloads and rollbacks switch the event slots, task reloads
        // the task slots.
        let todo: VecDeque<usize> = match kind {
            ReloadKind::Tasks => (events..self.slots.len()).collect(),
            ReloadKind::Workers | ReloadKind::Rollback => (0..events).collect(),
        };
        self.job = Some(Job {
            kind,
            waiters,
            requests,
            began,
            from,
            to,
            strategy: self.shared.config.reload.strategy,
            phase: Phase::Forward,
            todo,
            starting: HashMap::new(),
            ready: Vec::new(),
            switched: Vec::new(),
            handoff: Vec::new(),
            canary,
            canary_until: None,
            reason,
        });
        self.advance_job();
    }

    /// Launches what the job needs next, or finishes it.
    fn advance_job(&mut self) {
        let Some(job) = &mut self.job else { return };
        let to = job.to;
        let mut launch = Vec::new();
        let mut switch = Vec::new();
        if job.canary_until.is_some() {
            return;
        }
        let canary_pending = job.canary.is_some_and(|k| k > 0);
        if let Some(k) = job.canary.filter(|k| *k > 0)
            && job.switched.len() >= k
            && !job.todo.is_empty()
        {
            let watch = Duration::from_millis(self.shared.config.reload.canary_ms);
            tracing::info!(slots = ?job.switched, ?watch, "canary switched; watching it");
            job.canary_until = Some(Instant::now() + watch);
            return;
        }
        // Canary slots go one at a time whatever the strategy.
        let strategy = if canary_pending { ReloadStrategy::Rolling } else { job.strategy };
        match strategy {
            ReloadStrategy::Rolling => {
                if job.starting.is_empty()
                    && job.handoff.is_empty()
                    && let Some(slot) = job.todo.pop_front()
                {
                    launch.push(slot);
                }
            }
            ReloadStrategy::AllAtOnce => {
                launch.extend(job.todo.drain(..));
                if job.starting.is_empty() && launch.is_empty() && !job.ready.is_empty() {
                    switch = std::mem::take(&mut job.ready);
                    job.switched.extend(switch.iter().map(|(slot, _)| *slot));
                }
            }
        }
        for (slot, worker) in switch {
            self.switch(slot, worker, to, Retire::Replaced);
        }
        for slot in launch {
            // A current worker that hands over state is suspended first; its
            // successor starts once the state is in (`start_successor`).
            if let Some(job) = &mut self.job {
                job.handoff.push(slot);
            }
            if self.shared.hub.suspend(slot) {
                self.wait_for_handoff(slot, Successor::Job);
            } else {
                self.start_successor(slot, Successor::Job);
            }
        }
        let Some(job) = &self.job else { return };
        if job.starting.is_empty() && job.todo.is_empty() && job.ready.is_empty() && job.handoff.is_empty() {
            self.finish_job();
        }
    }

    fn fail_job(&mut self, why: String) {
        let Some(mut job) = self.job.take() else { return };
        for (slot, worker) in job.starting.drain() {
            self.control(worker, Control::Kill(KillReason::ReloadAborted));
            self.shared.hub.resume(slot);
        }
        for (slot, worker) in job.ready.drain(..) {
            self.shared.hub.drain(slot, worker);
            self.control(worker, Control::Drain { deadline: Instant::now(), retire: Retire::Replaced });
            self.shared.hub.resume(slot);
        }
        for slot in job.handoff.drain(..) {
            self.slots[slot].handoff_wait = None;
            self.shared.hub.resume(slot);
        }
        job.todo.clear();
        match &job.phase {
            Phase::Forward if !job.switched.is_empty() => {
                tracing::warn!(slots = ?job.switched, from = job.from, "reload failed; switching the slots already switched back");
                job.phase = Phase::Undo { reason: why };
                job.todo = std::mem::take(&mut job.switched).into();
                std::mem::swap(&mut job.from, &mut job.to);
                job.strategy = ReloadStrategy::AllAtOnce;
                self.job = Some(job);
                self.advance_job();
            }
            Phase::Forward => {
                let message = format!("reload aborted, generation {} keeps serving: {why}", job.from);
                self.answer(job.waiters, job.requests, job.kind, job.began, job.from, job.from, false, message);
            }
            Phase::Undo { reason } => {
                // Undo is from `to` (new) back to `from` (old) after the swap.
                let message = format!("reload failed ({reason}), and switching back failed too: {why}");
                let serving = job.from;
                self.answer(job.waiters, job.requests, job.kind, job.began, job.to, serving, false, message);
            }
        }
    }

    fn finish_job(&mut self) {
        let Some(job) = self.job.take() else { return };
        match job.phase {
            Phase::Forward if job.kind == ReloadKind::Tasks => {
                let message = format!("task workers on generation {}", job.to);
                self.answer(job.waiters, job.requests, job.kind, job.began, job.from, job.to, true, message);
            }
            Phase::Forward => {
                self.previous = Some(job.from);
                self.serving = job.to;
                if job.kind == ReloadKind::Workers {
                    let window = Duration::from_millis(self.shared.config.reload.rollback_window_ms);
                    self.watch = Some(Watch { generation: job.to, until: Instant::now() + window, failures: 0 });
                }
                let done = format!("generation {} serving on all {} slots", job.to, self.slots.len());
                let message = match &job.reason {
                    Some(reason) => format!("{reason}; {done}"),
                    None => done,
                };
                self.answer(job.waiters, job.requests, job.kind, job.began, job.from, job.to, true, message);
            }
            Phase::Undo { reason } => {
                // After the swap, `to` is the old generation again.
                let message = format!("reload aborted and undone, generation {} keeps serving: {reason}", job.to);
                self.answer(job.waiters, job.requests, job.kind, job.began, job.to, job.to, false, message);
            }
        }
        let mut protect: Vec<u64> = self.slots.iter().map(|s| s.target).collect();
        protect.push(self.serving);
        protect.extend(self.previous);
        self.generations.prune(&protect);
    }

    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        waiters: Vec<oneshot::Sender<ReloadOutcome>>,
        requests: usize,
        kind: ReloadKind,
        began: Instant,
        from: u64,
        generation: u64,
        ok: bool,
        message: String,
    ) {
        let outcome = ReloadOutcome {
            ok,
            kind,
            from_generation: from,
            generation,
            duration_ms: began.elapsed().as_millis() as u64,
            requests,
            message,
        };
        if ok {
            tracing::info!(from, generation, duration_ms = outcome.duration_ms, "reload done: {}", outcome.message);
        } else {
            tracing::error!(from, "reload failed: {}", outcome.message);
        }
        self.shared.set_last_reload(outcome.clone());
        for waiter in waiters {
            let _ = waiter.send(outcome.clone());
        }
    }

    fn retire(&mut self) {
        self.retiring = true;
        if self.job.is_some() {
            self.fail_job("the server is stopping".into());
            // An undo phase would start workers; stopping wins.
            if let Some(job) = self.job.take() {
                let message = "the server is stopping".to_owned();
                self.answer(job.waiters, job.requests, job.kind, job.began, job.from, job.from, false, message);
            }
        }
        for request in self.queue.drain(..) {
            if let Some(reply) = request.reply {
                let _ = reply.send(ReloadOutcome {
                    ok: false,
                    kind: request.kind,
                    from_generation: self.serving,
                    generation: self.serving,
                    duration_ms: 0,
                    requests: 1,
                    message: "the server is stopping".into(),
                });
            }
        }
        let deadline = Instant::now() + Duration::from_millis(self.shared.config.reload.max_wait_ms);
        let workers: Vec<(WorkerId, usize)> = self.live.iter().map(|(id, live)| (*id, live.slot)).collect();
        for (worker, slot) in workers {
            self.shared.hub.drain(slot, worker);
            let control = if self.slots[slot].current == Some(worker) || self.is_draining(worker) {
                Control::Drain { deadline, retire: Retire::Replaced }
            } else {
                Control::Kill(KillReason::ServerStopping)
            };
            self.control(worker, control);
        }
    }

    fn is_draining(&self, worker: WorkerId) -> bool {
        self.live.contains_key(&worker) && !self.slots.iter().any(|s| s.starting == Some(worker))
    }

    /// Shares what status reports about generations and reloads.
    fn publish(&self) {
        let reloading = self.job.as_ref().map(|job| match &job.phase {
            Phase::Forward if job.canary_until.is_some() => {
                format!("{:?} {} -> {}: canary on slots {:?}", job.kind, job.from, job.to, job.switched)
            }
            Phase::Forward => format!("{:?} {} -> {}", job.kind, job.from, job.to),
            Phase::Undo { .. } => format!("undoing {:?}: back to {}", job.kind, job.to),
        });
        self.shared.set_generation_info(self.serving, self.previous, reloading, self.queue.len());
    }
}
