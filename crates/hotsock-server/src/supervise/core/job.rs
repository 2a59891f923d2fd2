//! Reload jobs: one at a time, coalesced, through the readiness gate, with
//! canary watches, undo on failure, and the rollback watch afterwards.
//!
//! A job starts generation n+1 (or, for a rollback, the previous one) and
//! switches slots to it. `rolling`: one slot at a time: start the new
//! worker, wait for Ready, make it current (the old one drains), go on.
//! `all-at-once`: start every new worker, and switch all slots only when all
//! are Ready. A new worker that fails before Ready fails the job: the other
//! new workers are stopped, and slots already switched are switched back the
//! same zero-loss way (the job's Undo phase), so the old generation serves
//! on.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{Command, Core, Phase, Request, Successor, Waiter};
use crate::config::ReloadStrategy;
use crate::route::slot::WorkerId;
use crate::supervise::messages::Retire;
use crate::wire::{KillReason, ReloadKind, ReloadOutcome};

/// Which way a job goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JobPhase {
    Forward,
    /// Switching already-switched slots back after a failure.
    Undo {
        reason: String,
    },
}

/// Who a job answers: the requests it took together, and when it began.
#[derive(Debug)]
pub(crate) struct Requesters {
    kind: ReloadKind,
    waiters: Vec<Waiter>,
    requests: usize,
    began: Instant,
}

/// Requests taken together, waiting for their generation's executable.
#[derive(Debug)]
pub(crate) struct Prepared {
    who: Requesters,
    canary: Option<usize>,
    reason: Option<String>,
    from: u64,
}

/// A reload under way.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) kind: ReloadKind,
    who: Requesters,
    pub(crate) from: u64,
    pub(crate) to: u64,
    strategy: ReloadStrategy,
    pub(crate) phase: JobPhase,
    pub(crate) todo: VecDeque<usize>,
    /// New workers started and not Ready yet, by slot.
    pub(crate) starting: HashMap<usize, WorkerId>,
    /// New workers Ready and waiting for the others (all-at-once).
    ready: Vec<(usize, WorkerId)>,
    pub(crate) switched: Vec<usize>,
    /// Slots whose current worker is handing over its state first.
    handoff: Vec<usize>,
    /// Slots to switch and watch before the others.
    canary: Option<usize>,
    /// While the canary slots are watched: until when.
    pub(crate) canary_until: Option<Instant>,
    /// Words put before the outcome message (automatic rollback).
    reason: Option<String>,
}

impl Job {
    /// Canary slots go one at a time whatever the strategy: each is started,
    /// made Ready and switched before the next (an all-at-once job that
    /// parked its canary as a standby would never switch it).
    fn effective_strategy(&self) -> ReloadStrategy {
        if self.canary.is_some_and(|k| k > 0) { ReloadStrategy::Rolling } else { self.strategy }
    }
}

/// The newest generation, watched for `rollback_window_ms` after its switch.
#[derive(Debug)]
pub(crate) struct RollbackWatch {
    generation: u64,
    until: Instant,
    failures: u32,
}

impl Core {
    /// What `status` says about the job under way.
    pub(crate) fn reloading(&self) -> Option<String> {
        if let Some(prepared) = &self.preparing {
            return Some(format!("{:?} {} -> ?: copying the executable", prepared.who.kind, prepared.from));
        }
        self.job.as_ref().map(|job| match &job.phase {
            JobPhase::Forward if job.canary_until.is_some() => {
                format!("{:?} {} -> {}: canary on slots {:?}", job.kind, job.from, job.to, job.switched)
            }
            JobPhase::Forward => format!("{:?} {} -> {}", job.kind, job.from, job.to),
            JobPhase::Undo { .. } => format!("undoing {:?}: back to {}", job.kind, job.to),
        })
    }

    /// A job touches this slot (it is starting, waiting for, or about to
    /// replace its worker).
    pub(super) fn job_has_slot(&self, slot: usize) -> bool {
        self.job
            .as_ref()
            .is_some_and(|j| j.starting.contains_key(&slot) || j.todo.contains(&slot) || j.handoff.contains(&slot))
    }

    /// A job holds a Ready new worker for this slot, waiting to switch it
    /// with the others (all-at-once).
    #[cfg(test)]
    pub(crate) fn job_standby(&self, slot: usize) -> bool {
        self.job.as_ref().is_some_and(|j| j.ready.iter().any(|(s, _)| *s == slot))
    }

    /// A job's new worker said Ready; returns whether the job owned it.
    pub(super) fn job_ready(&mut self, now: Instant, slot: usize, worker: WorkerId) -> bool {
        let Some(job) = &mut self.job else { return false };
        if job.starting.get(&slot) != Some(&worker) {
            return false;
        }
        job.starting.remove(&slot);
        match job.effective_strategy() {
            ReloadStrategy::Rolling => {
                let to = job.to;
                job.switched.push(slot);
                self.switch(now, slot, worker, to, Retire::Replaced);
            }
            ReloadStrategy::AllAtOnce => job.ready.push((slot, worker)),
        }
        self.advance_job(now);
        true
    }

    /// A worker is gone: if it was one of the job's new workers, the job
    /// fails. Returns whether the job owned it.
    pub(super) fn job_worker_gone(
        &mut self,
        now: Instant,
        slot: usize,
        worker: WorkerId,
        generation: u64,
        description: &str,
    ) -> bool {
        let Some(job) = &mut self.job else { return false };
        let starting = job.starting.get(&slot) == Some(&worker);
        let standby = job.ready.iter().any(|(_, w)| *w == worker);
        if !(starting || standby) {
            return false;
        }
        job.starting.remove(&slot);
        job.ready.retain(|(_, w)| *w != worker);
        // Its predecessor may be suspended, waiting for it: it serves on.
        self.resume(slot);
        let why = format!("slot {slot} generation {generation}: {description}");
        tracing::error!("reload: new worker failed: {why}");
        self.fail_job(now, why);
        true
    }

    /// The job's turn for a slot whose state was handed over (or waited
    /// for long enough): start its new worker.
    pub(super) fn job_successor(&mut self, slot: usize) {
        let Some(job) = &mut self.job else { return };
        let Some(position) = job.handoff.iter().position(|s| *s == slot) else { return };
        job.handoff.remove(position);
        let to = job.to;
        if let Some(restart) = self.slots[slot].starting.take() {
            self.kill(restart, KillReason::Superseded);
        }
        let worker = self.launch(slot, to);
        if let Some(job) = &mut self.job {
            job.starting.insert(slot, worker);
        }
    }

    /// A worker of `generation` crashed or reported handler panics: fails a
    /// canary of that generation, or counts toward an automatic rollback.
    pub(super) fn on_failure(&mut self, now: Instant, slot: usize, generation: u64, count: u32, what: &str) {
        if let Some(job) = &self.job
            && job.phase == JobPhase::Forward
            && job.to == generation
            && job.canary.is_some()
            && job.switched.contains(&slot)
        {
            self.fail_job(now, format!("canary slot {slot} of generation {generation}: {what}"));
            return;
        }
        let threshold = self.config.rollback_failures;
        let Some(watch) = &mut self.watch else { return };
        if watch.generation != generation || threshold == 0 || now > watch.until {
            return;
        }
        watch.failures += count;
        if watch.failures < threshold {
            return;
        }
        let reason = format!(
            "automatic rollback: generation {generation} had {} failures (crashes + handler panics) within reload.rollback_window_ms = {}, last: {what}",
            watch.failures,
            self.config.rollback_window.as_millis()
        );
        tracing::error!("{reason}");
        self.watch = None;
        self.queue.push_front(Request { kind: ReloadKind::Rollback, canary: None, reason: Some(reason), waiter: None });
    }

    /// Ends a canary watch that ran its time without failures: the other
    /// slots follow.
    pub(super) fn check_canary(&mut self, now: Instant) {
        let Some(job) = &mut self.job else { return };
        if job.canary_until.is_some_and(|until| now >= until) {
            tracing::info!(slots = ?job.switched, "canary passed; switching the other slots");
            job.canary_until = None;
            job.canary = Some(0);
            self.advance_job(now);
        }
    }

    /// Takes the next waiting request and every waiting request of the same
    /// kind into one job.
    pub(super) fn start_next_job(&mut self, now: Instant) {
        while self.job.is_none() && self.preparing.is_none() && !self.retiring {
            let Some(first) = self.queue.pop_front() else { return };
            let (kind, canary, reason) = (first.kind, first.canary, first.reason);
            let mut waiters: Vec<Waiter> = first.waiter.into_iter().collect();
            let mut requests = 1;
            self.queue.retain_mut(|request| {
                if request.kind != kind || request.canary != canary || request.reason.is_some() {
                    return true;
                }
                requests += 1;
                waiters.extend(request.waiter.take());
                false
            });
            let who = Requesters { kind, waiters, requests, began: now };
            let prepared = Prepared { who, canary, reason, from: self.serving };
            match kind {
                ReloadKind::Tasks if self.config.task_slots == 0 => {
                    tracing::info!("task-worker reload requested, but no task workers are configured: nothing to do");
                    let message = "no task workers are configured; nothing to reload".to_owned();
                    let from = prepared.from;
                    self.answer(now, prepared.who, from, from, true, message);
                }
                ReloadKind::Tasks | ReloadKind::Workers => {
                    self.preparing = Some(prepared);
                    self.emit(Command::CreateGeneration);
                }
                ReloadKind::Rollback => match self.previous {
                    Some(previous) => self.begin_job(now, prepared, previous),
                    None => {
                        let from = prepared.from;
                        let why = "no previous generation to roll back to".to_owned();
                        self.answer(now, prepared.who, from, from, false, why);
                    }
                },
            }
        }
    }

    /// The executable of a job's new generation is stored (or could not be).
    pub(super) fn generation_created(&mut self, now: Instant, result: Result<u64, String>) {
        // Dropped when the server started stopping meanwhile.
        let Some(prepared) = self.preparing.take() else { return };
        match result {
            Ok(to) => self.begin_job(now, prepared, to),
            Err(why) => {
                let from = prepared.from;
                self.answer(now, prepared.who, from, from, false, why);
            }
        }
    }

    fn begin_job(&mut self, now: Instant, prepared: Prepared, to: u64) {
        let Prepared { who, canary, reason, from } = prepared;
        let kind = who.kind;
        let canary = canary.filter(|k| *k > 0 && *k < self.slots.len());
        tracing::info!(?kind, from, to, "reload started");
        let events = self.config.event_slots;
        // Event reloads and rollbacks switch the event slots, task reloads
        // the task slots.
        let todo: VecDeque<usize> = match kind {
            ReloadKind::Tasks => (events..self.slots.len()).collect(),
            ReloadKind::Workers | ReloadKind::Rollback => (0..events).collect(),
        };
        self.job = Some(Job {
            kind,
            who,
            from,
            to,
            strategy: self.config.strategy,
            phase: JobPhase::Forward,
            todo,
            starting: HashMap::new(),
            ready: Vec::new(),
            switched: Vec::new(),
            handoff: Vec::new(),
            canary,
            canary_until: None,
            reason,
        });
        self.advance_job(now);
    }

    /// Launches what the job needs next, or finishes it.
    fn advance_job(&mut self, now: Instant) {
        let canary_watch = self.config.canary;
        let Some(job) = &mut self.job else { return };
        let to = job.to;
        let mut launch = Vec::new();
        let mut switch = Vec::new();
        if job.canary_until.is_some() {
            return;
        }
        if let Some(k) = job.canary.filter(|k| *k > 0)
            && job.switched.len() >= k
            && !job.todo.is_empty()
        {
            tracing::info!(slots = ?job.switched, watch = ?canary_watch, "canary switched; watching it");
            job.canary_until = Some(now + canary_watch);
            return;
        }
        match job.effective_strategy() {
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
            self.switch(now, slot, worker, to, Retire::Replaced);
        }
        for slot in launch {
            if let Some(job) = &mut self.job {
                job.handoff.push(slot);
            }
            self.suspend_or_start(now, slot, Successor::Job);
        }
        let Some(job) = &self.job else { return };
        if job.starting.is_empty() && job.todo.is_empty() && job.ready.is_empty() && job.handoff.is_empty() {
            self.finish_job(now);
        }
    }

    pub(super) fn fail_job(&mut self, now: Instant, why: String) {
        let Some(mut job) = self.job.take() else { return };
        let mut starting: Vec<(usize, WorkerId)> = job.starting.drain().collect();
        starting.sort_unstable();
        for (slot, worker) in starting {
            self.kill(worker, KillReason::ReloadAborted);
            self.resume(slot);
        }
        for (slot, worker) in job.ready.drain(..) {
            self.emit(Command::Unroute { slot, worker });
            self.kill(worker, KillReason::ReloadAborted);
            self.resume(slot);
        }
        for slot in job.handoff.drain(..) {
            self.slots[slot].handoff_wait = None;
            self.resume(slot);
        }
        job.todo.clear();
        match &job.phase {
            JobPhase::Forward if !job.switched.is_empty() => {
                tracing::warn!(slots = ?job.switched, from = job.from, "reload failed; switching the slots already switched back");
                job.phase = JobPhase::Undo { reason: why };
                job.todo = std::mem::take(&mut job.switched).into();
                std::mem::swap(&mut job.from, &mut job.to);
                job.strategy = ReloadStrategy::AllAtOnce;
                self.job = Some(job);
                self.advance_job(now);
            }
            JobPhase::Forward => {
                let message = format!("reload aborted, generation {} keeps serving: {why}", job.from);
                self.answer(now, job.who, job.from, job.from, false, message);
            }
            JobPhase::Undo { reason } => {
                // Undo is from `to` (new) back to `from` (old) after the swap.
                let message = format!("reload failed ({reason}), and switching back failed too: {why}");
                let serving = job.from;
                self.answer(now, job.who, job.to, serving, false, message);
            }
        }
    }

    /// Gives a suspended slot's worker its events again.
    fn resume(&mut self, slot: usize) {
        self.emit(Command::Resume { slot });
        if let Some(current) = self.slots[slot].current
            && self.workers.get(&current).is_some_and(|w| w.phase == Phase::Suspended)
        {
            self.set_phase(current, Phase::Ready);
        }
    }

    fn finish_job(&mut self, now: Instant) {
        let Some(job) = self.job.take() else { return };
        match job.phase {
            JobPhase::Forward if job.kind == ReloadKind::Tasks => {
                let message = format!("task workers on generation {}", job.to);
                self.answer(now, job.who, job.from, job.to, true, message);
            }
            JobPhase::Forward => {
                self.previous = Some(job.from);
                self.serving = job.to;
                if job.kind == ReloadKind::Workers {
                    let until = now + self.config.rollback_window;
                    self.watch = Some(RollbackWatch { generation: job.to, until, failures: 0 });
                }
                let done = format!("generation {} serving on all {} slots", job.to, self.slots.len());
                let message = match &job.reason {
                    Some(reason) => format!("{reason}; {done}"),
                    None => done,
                };
                self.answer(now, job.who, job.from, job.to, true, message);
            }
            JobPhase::Undo { reason } => {
                // After the swap, `to` is the old generation again.
                let message = format!("reload aborted and undone, generation {} keeps serving: {reason}", job.to);
                self.answer(now, job.who, job.to, job.to, false, message);
            }
        }
        let mut protect: Vec<u64> = self.slots.iter().map(|s| s.target).collect();
        protect.extend(self.workers.values().map(|w| w.generation));
        protect.push(self.serving);
        protect.extend(self.previous);
        protect.sort_unstable();
        protect.dedup();
        self.emit(Command::Prune { protect });
    }

    /// Tells `who` how the job ended: from which generation to which.
    fn answer(&mut self, now: Instant, who: Requesters, from: u64, generation: u64, ok: bool, message: String) {
        let outcome = ReloadOutcome {
            ok,
            kind: who.kind,
            from_generation: from,
            generation,
            duration_ms: now.saturating_duration_since(who.began).as_millis() as u64,
            requests: who.requests,
            message,
        };
        if ok {
            tracing::info!(from, generation, duration_ms = outcome.duration_ms, "reload done: {}", outcome.message);
        } else {
            tracing::error!(from, "reload failed: {}", outcome.message);
        }
        self.last_reload = Some(outcome.clone());
        self.emit(Command::Answer { waiters: who.waiters, outcome });
    }

    /// Stopping: the job under way, a job being prepared, and every waiting
    /// request fail with `why`.
    pub(super) fn abandon_jobs(&mut self, now: Instant, why: &str) {
        if self.job.is_some() {
            self.fail_job(now, why.to_owned());
            // An undo phase would start workers; stopping wins.
            if let Some(job) = self.job.take() {
                let from = job.from;
                self.answer(now, job.who, from, from, false, why.to_owned());
            }
        }
        if let Some(prepared) = self.preparing.take() {
            let from = prepared.from;
            self.answer(now, prepared.who, from, from, false, why.to_owned());
        }
        for request in std::mem::take(&mut self.queue) {
            let serving = self.serving;
            let who = Requesters {
                kind: request.kind,
                waiters: request.waiter.into_iter().collect(),
                requests: 1,
                began: now,
            };
            self.answer(now, who, serving, serving, false, why.to_owned());
        }
    }
}
