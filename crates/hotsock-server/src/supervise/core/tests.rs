//! The supervisor's decisions, tested without processes: unit tests per
//! phase and transition, and a property test that runs random histories
//! (spawns that fail or succeed, Ready, crashes, hangs, drain deadlines,
//! reload requests, acks) through the core *and* the real slots, with
//! simulated worker processes in between, and checks the promises: no
//! unacknowledged event is lost, no queued event is struck, every slot is
//! served again within a restart back-off, per-connection order holds, and
//! no worker stays suspended with nobody waiting for its state.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hotsock_protocol::ToWorker;
use proptest::prelude::*;
use tokio::sync::mpsc;

use super::{Command, Core, CoreConfig, Input, Phase, Request};
use crate::config::ReloadStrategy;
use crate::route::event::EventBody;
use crate::route::slot::{Attached, Pending, Slot, WorkerId};
use crate::supervise::exit::Exit;
use crate::supervise::messages::Retire;
use crate::wire::{ExitCause, KillReason, ReloadKind};

const DRAIN: Duration = Duration::from_millis(1000);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
const MAX_REDELIVERIES: u32 = 2;

fn config(slots: usize, strategy: ReloadStrategy) -> CoreConfig {
    CoreConfig {
        event_slots: slots,
        task_slots: 0,
        strategy,
        drain: DRAIN,
        handoff_timeout: Duration::from_millis(500),
        canary: Duration::from_millis(700),
        rollback_window: Duration::from_secs(10),
        rollback_failures: 3,
        restart_backoff_max: BACKOFF_MAX,
        crash_loop_count: 5,
        crash_loop_window: Duration::from_secs(10),
    }
}

fn launches(commands: &[Command]) -> Vec<(WorkerId, usize, u64)> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Launch { worker, slot, generation } => Some((*worker, *slot, *generation)),
            _ => None,
        })
        .collect()
}

fn ready(core: &mut Core, now: Instant, worker: WorkerId, handoff: bool) -> Vec<Command> {
    core.handle(now, Input::Ready { worker, pid: Some(worker as u32), handoff })
}

fn gone(core: &mut Core, now: Instant, worker: WorkerId, cause: ExitCause, was_ready: bool) -> Vec<Command> {
    let exit = Exit::new(cause, "");
    core.handle(now, Input::Gone { worker, pid: None, exit, was_ready, at_unix_ms: 0 })
}

fn reload(kind: ReloadKind, waiter: u64) -> Input {
    Input::Reload(Request { kind, canary: None, reason: None, waiter: Some(waiter) })
}

const CRASH: ExitCause = ExitCause::Crashed { code: Some(3), signal: None };

/// A core whose two slots serve generation 1; returns the workers.
fn serving(strategy: ReloadStrategy) -> (Core, Instant, Vec<WorkerId>) {
    let now = Instant::now();
    let mut core = Core::new(config(2, strategy), now);
    let started = launches(&core.start(now));
    assert_eq!(started.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(), vec![(0, 1), (1, 1)]);
    for (worker, slot, _) in &started {
        let commands = ready(&mut core, now, *worker, false);
        assert_eq!(commands, vec![Command::MakeCurrent { slot: *slot, worker: *worker }]);
    }
    (core, now, started.iter().map(|l| l.0).collect())
}

#[test]
fn a_starting_worker_shows_its_pid_and_gets_no_command_for_it() {
    let now = Instant::now();
    let mut core = Core::new(config(1, ReloadStrategy::Rolling), now);
    let started = launches(&core.start(now));
    let worker = started[0].0;
    assert_eq!(core.view(now).slots[0].primary.as_ref().map(|w| w.pid), Some(None), "no pid before the spawn");
    assert!(core.handle(now, Input::Spawned { worker, pid: Some(4242) }).is_empty());
    let view = core.view(now);
    let primary = view.slots[0].primary.as_ref().expect("the starting worker");
    assert_eq!((primary.pid, primary.phase.name()), (Some(4242), "starting"));
    // A late report of a worker that is gone changes nothing.
    assert!(core.handle(now, Input::Spawned { worker: worker + 100, pid: Some(1) }).is_empty());
}

#[test]
fn a_crashed_worker_is_restarted_at_once_then_with_back_off() {
    let (mut core, now, workers) = serving(ReloadStrategy::Rolling);
    let first = launches(&gone(&mut core, now, workers[0], CRASH, true));
    assert_eq!(first.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(), vec![(0, 1)], "one crash: restart now");
    assert_eq!(core.slot_phase(0, now).0, crate::wire::WorkerPhase::Starting);
    let second = gone(&mut core, now, first[0].0, CRASH, false);
    assert!(launches(&second).is_empty(), "the second crash in a row backs off");
    assert_eq!(core.next_wakeup(), Some(now + super::RESTART_BACKOFF_MIN));
    assert!(launches(&core.tick(now + super::RESTART_BACKOFF_MIN)).len() == 1);
    assert_eq!(core.slots[0].counters.crashes, 2);
}

#[test]
fn a_rolling_reload_gates_each_slot_on_ready_and_drains_the_old_worker() {
    let (mut core, now, old) = serving(ReloadStrategy::Rolling);
    assert_eq!(core.handle(now, reload(ReloadKind::Workers, 7)), vec![Command::CreateGeneration]);
    assert!(core.reloading().is_some());
    let started = launches(&core.handle(now, Input::GenerationCreated(Ok(2))));
    assert_eq!(started.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(), vec![(0, 2)], "one slot at a time");
    assert_eq!(core.slots[0].current, Some(old[0]), "no switch before Ready");
    let commands = ready(&mut core, now, started[0].0, false);
    assert_eq!(commands[0], Command::MakeCurrent { slot: 0, worker: started[0].0 });
    assert_eq!(commands[1], Command::Drain { worker: old[0], deadline: now + DRAIN, retire: Retire::Replaced });
    assert_eq!(core.workers[&old[0]].phase, Phase::Draining { deadline: now + DRAIN });
    let next = launches(&commands);
    assert_eq!(next.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(), vec![(1, 2)]);
    let commands = ready(&mut core, now, next[0].0, false);
    let answer = commands.iter().find_map(|c| match c {
        Command::Answer { waiters, outcome } => Some((waiters.clone(), outcome.clone())),
        _ => None,
    });
    let (waiters, outcome) = answer.expect("answered");
    assert_eq!(waiters, vec![7]);
    assert!(outcome.ok && outcome.generation == 2, "{outcome:?}");
    assert!(commands.iter().any(|c| matches!(c, Command::Prune { .. })));
    assert_eq!((core.serving, core.previous), (2, Some(1)));
    // A draining worker that hits its deadline is no failure: no restart,
    // no crash counted.
    let commands = gone(&mut core, now + DRAIN, old[0], ExitCause::DrainDeadline, true);
    assert!(launches(&commands).is_empty());
    assert_eq!(core.slots[0].counters.crashes, 0);
}

#[test]
fn requests_during_a_reload_are_coalesced_and_all_answered() {
    let (mut core, now, _) = serving(ReloadStrategy::AllAtOnce);
    core.handle(now, reload(ReloadKind::Workers, 1));
    for waiter in 2..=4 {
        assert!(core.handle(now, reload(ReloadKind::Workers, waiter)).is_empty(), "queued, not started");
    }
    assert_eq!(core.queue.len(), 3);
    let started = launches(&core.handle(now, Input::GenerationCreated(Ok(2))));
    assert_eq!(started.len(), 2, "all at once");
    ready(&mut core, now, started[0].0, false);
    let commands = ready(&mut core, now, started[1].0, false);
    // The first job is answered, and the next one (for all three waiting
    // requests) starts.
    assert!(commands.contains(&Command::CreateGeneration));
    let started = launches(&core.handle(now, Input::GenerationCreated(Ok(3))));
    ready(&mut core, now, started[0].0, false);
    let commands = ready(&mut core, now, started[1].0, false);
    let waiters = commands.iter().find_map(|c| match c {
        Command::Answer { waiters, outcome } => Some((waiters.clone(), outcome.requests)),
        _ => None,
    });
    assert_eq!(waiters, Some((vec![2, 3, 4], 3)));
}

#[test]
fn a_new_worker_that_fails_aborts_the_reload_and_undoes_switched_slots() {
    let (mut core, now, old) = serving(ReloadStrategy::Rolling);
    core.handle(now, reload(ReloadKind::Workers, 1));
    let first = launches(&core.handle(now, Input::GenerationCreated(Ok(2))))[0].0;
    let second = launches(&ready(&mut core, now, first, false))[0].0;
    // Slot 0 switched to generation 2; slot 1's new worker fails: slot 0
    // switches back to a fresh generation-1 worker.
    let commands = gone(&mut core, now, second, ExitCause::NotReady, false);
    let undo = launches(&commands);
    assert_eq!(undo.iter().map(|l| (l.1, l.2)).collect::<Vec<_>>(), vec![(0, 1)], "{commands:?}");
    assert!(core.reloading().is_some_and(|r| r.starts_with("undoing")));
    let commands = ready(&mut core, now, undo[0].0, false);
    assert!(commands.contains(&Command::MakeCurrent { slot: 0, worker: undo[0].0 }));
    let outcome = commands.iter().find_map(|c| match c {
        Command::Answer { outcome, .. } => Some(outcome.clone()),
        _ => None,
    });
    let outcome = outcome.expect("answered");
    assert!(!outcome.ok && outcome.generation == 1, "{outcome:?}");
    assert_eq!(core.slots[1].current, Some(old[1]), "slot 1 never left generation 1");
    assert_eq!(core.serving, 1);
}

#[test]
fn a_suspended_worker_whose_successor_fails_serves_again() {
    let now = Instant::now();
    let mut core = Core::new(config(1, ReloadStrategy::Rolling), now);
    let old = launches(&core.start(now))[0].0;
    ready(&mut core, now, old, true);
    core.handle(now, reload(ReloadKind::Workers, 1));
    let commands = core.handle(now, Input::GenerationCreated(Ok(2)));
    assert_eq!(commands, vec![Command::Suspend { slot: 0 }], "state first, then the successor");
    assert_eq!(core.workers[&old].phase, Phase::Suspended);
    let successor = launches(&core.handle(now, Input::HandedOff { slot: 0 })).first().expect("successor").0;
    let commands = gone(&mut core, now, successor, ExitCause::NotReady, false);
    assert!(commands.contains(&Command::Resume { slot: 0 }), "{commands:?}");
    assert_eq!(core.workers[&old].phase, Phase::Ready);
}

#[test]
fn a_handoff_that_never_comes_starts_the_successor_after_the_timeout() {
    let now = Instant::now();
    let mut core = Core::new(config(1, ReloadStrategy::Rolling), now);
    let old = launches(&core.start(now))[0].0;
    ready(&mut core, now, old, true);
    core.handle(now, reload(ReloadKind::Workers, 1));
    core.handle(now, Input::GenerationCreated(Ok(2)));
    let until = core.next_wakeup().expect("handoff deadline");
    assert!(launches(&core.tick(until - Duration::from_millis(1))).is_empty());
    assert_eq!(launches(&core.tick(until)).len(), 1);
}

#[test]
fn failures_of_a_fresh_generation_roll_it_back() {
    let (mut core, now, _) = serving(ReloadStrategy::AllAtOnce);
    core.handle(now, reload(ReloadKind::Workers, 1));
    let started = launches(&core.handle(now, Input::GenerationCreated(Ok(2))));
    ready(&mut core, now, started[0].0, false);
    ready(&mut core, now, started[1].0, false);
    assert_eq!(core.serving, 2);
    core.handle(now, Input::Panicked { worker: started[0].0, count: 2 });
    assert!(core.job.is_none() && core.queue.is_empty());
    let commands = core.handle(now, Input::Panicked { worker: started[1].0, count: 1 });
    let rollback = launches(&commands);
    assert_eq!(rollback.iter().map(|l| l.2).collect::<Vec<_>>(), vec![1, 1], "back to generation 1: {commands:?}");
    assert_eq!(core.job.as_ref().map(|j| j.kind), Some(ReloadKind::Rollback));
}

#[test]
fn a_canary_is_watched_before_the_other_slots_follow() {
    let (mut core, now, _) = serving(ReloadStrategy::AllAtOnce);
    core.handle(now, Input::Reload(Request { kind: ReloadKind::Workers, canary: Some(1), reason: None, waiter: None }));
    let canary = launches(&core.handle(now, Input::GenerationCreated(Ok(2))));
    assert_eq!(canary.len(), 1, "canary slots go one at a time");
    assert!(launches(&ready(&mut core, now, canary[0].0, false)).is_empty(), "watching");
    let until = core.next_wakeup().expect("canary deadline");
    assert_eq!(until, now + Duration::from_millis(700));
    let commands = core.tick(until);
    assert_eq!(launches(&commands).len(), 1, "the rest follow: {commands:?}");
}

#[test]
fn a_stop_drains_serving_workers_kills_starting_ones_and_finishes() {
    let (mut core, now, old) = serving(ReloadStrategy::Rolling);
    core.handle(now, reload(ReloadKind::Workers, 9));
    let new = launches(&core.handle(now, Input::GenerationCreated(Ok(2))))[0].0;
    let commands = core.handle(now, Input::Retire);
    assert!(commands.contains(&Command::Kill { worker: new, reason: KillReason::ServerStopping }));
    for worker in &old {
        assert!(commands.contains(&Command::Drain {
            worker: *worker,
            deadline: now + DRAIN,
            retire: Retire::Replaced
        }));
    }
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::Answer { waiters, outcome } if waiters == &vec![9] && !outcome.ok))
    );
    for worker in old.iter().chain([&new]) {
        assert!(launches(&gone(&mut core, now, *worker, ExitCause::Stopped, true)).is_empty(), "no restarts");
    }
    assert!(core.finished());
}

// ---- The property test ----

/// One simulated worker process.
struct Proc {
    slot: usize,
    ready: bool,
    handoff: bool,
    rx: Option<mpsc::UnboundedReceiver<ToWorker>>,
    /// Events received, per connection, in order (the SDK's lanes).
    lanes: BTreeMap<u64, Vec<u64>>,
    stop: bool,
    drain_until: Option<Instant>,
}

/// What may happen next; indices pick among what exists, modulo its size.
#[derive(Debug, Clone)]
enum Action {
    /// A client sends a message on connection `conn`.
    Push { conn: u64 },
    /// A starting worker says Ready (with or without handoff).
    Ready { pick: usize, handoff: bool },
    /// A starting worker fails before Ready.
    StartFails { pick: usize },
    /// A worker finishes the event at the head of one of its lanes.
    Finish { pick: usize, lane: usize },
    /// A worker crashes, or hangs and is killed as unresponsive.
    Dies { pick: usize, hang: bool },
    /// Time passes (deadlines, back-offs, canaries).
    Wait { ms: u64 },
    /// Someone asks for a reload (maybe with one canary slot) or a rollback.
    Reload { rollback: bool, canary: bool },
    /// A worker reached `workers.max_requests`.
    Recycle { pick: usize },
    /// The generation copy finishes (or fails).
    Copied { ok: bool },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (0u64..6).prop_map(|conn| Action::Push { conn }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, handoff)| Action::Ready { pick, handoff }),
        1 => any::<usize>().prop_map(|pick| Action::StartFails { pick }),
        6 => (any::<usize>(), any::<usize>()).prop_map(|(pick, lane)| Action::Finish { pick, lane }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, hang)| Action::Dies { pick, hang }),
        2 => (1u64..1500).prop_map(|ms| Action::Wait { ms }),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(rollback, canary)| Action::Reload { rollback, canary }),
        1 => any::<usize>().prop_map(|pick| Action::Recycle { pick }),
        2 => prop::bool::weighted(0.9).prop_map(|ok| Action::Copied { ok }),
    ]
}

/// The core, the real slots, and simulated processes between them.
struct Sim {
    core: Core,
    now: Instant,
    slots: Vec<Slot>,
    procs: BTreeMap<WorkerId, Proc>,
    next_event: u64,
    next_generation: u64,
    copy_pending: bool,
    /// First handling of each event, per connection, in order.
    handled: HashMap<u64, Vec<u64>>,
    dropped: Vec<u64>,
    pushed: Vec<u64>,
}

impl Sim {
    fn new(strategy: ReloadStrategy) -> Sim {
        let now = Instant::now();
        let mut core = Core::new(config(2, strategy), now);
        let commands = core.start(now);
        let mut sim = Sim {
            core,
            now,
            slots: (0..2).map(|_| Slot::new(MAX_REDELIVERIES)).collect(),
            procs: BTreeMap::new(),
            next_event: 1,
            next_generation: 2,
            copy_pending: false,
            handled: HashMap::new(),
            dropped: Vec::new(),
            pushed: Vec::new(),
        };
        sim.execute(commands);
        sim
    }

    fn execute(&mut self, commands: Vec<Command>) {
        for command in commands {
            match command {
                Command::Launch { worker, slot, .. } => {
                    let proc = Proc {
                        slot,
                        ready: false,
                        handoff: false,
                        rx: None,
                        lanes: BTreeMap::new(),
                        stop: false,
                        drain_until: None,
                    };
                    self.procs.insert(worker, proc);
                }
                Command::Drain { worker, deadline, .. } => {
                    if let Some(proc) = self.procs.get_mut(&worker) {
                        proc.drain_until = Some(deadline);
                    }
                }
                Command::Kill { worker, reason } => self.end(worker, ExitCause::Killed { reason }),
                Command::MakeCurrent { slot, worker } => {
                    self.slots[slot].make_current(worker);
                }
                Command::Unroute { slot, worker } => self.slots[slot].drain(worker),
                Command::Suspend { slot } => {
                    assert!(self.slots[slot].suspend(), "suspend only a worker that hands off");
                }
                Command::Resume { slot } => self.slots[slot].resume(),
                Command::CreateGeneration => self.copy_pending = true,
                Command::Prune { .. } | Command::Answer { .. } => {}
            }
        }
        self.pump();
    }

    /// Moves what the slots sent into the simulated processes, and answers
    /// Stop and Snapshot as the SDK does.
    fn pump(&mut self) {
        loop {
            let mut progress = false;
            let workers: Vec<WorkerId> = self.procs.keys().copied().collect();
            for worker in workers {
                let mut messages = Vec::new();
                if let Some(rx) = self.procs.get_mut(&worker).and_then(|p| p.rx.as_mut()) {
                    while let Ok(message) = rx.try_recv() {
                        messages.push(message);
                    }
                }
                for message in messages {
                    progress = true;
                    let Some(proc) = self.procs.get_mut(&worker) else { break };
                    match message {
                        ToWorker::Message { conn, id, .. } => proc.lanes.entry(conn).or_default().push(id),
                        ToWorker::Stop => proc.stop = true,
                        ToWorker::Snapshot => {
                            let slot = proc.slot;
                            if self.slots[slot].store_handoff(worker, Some(Bytes::from_static(b"state"))) {
                                let commands = self.core.handle(self.now, Input::HandedOff { slot });
                                self.execute(commands);
                            }
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                // Stopped workers exit cleanly once idle (the slot only
                // sends Stop when they hold nothing).
                if self.procs.get(&worker).is_some_and(|p| p.stop && p.lanes.values().all(Vec::is_empty)) {
                    progress = true;
                    self.end(worker, ExitCause::Stopped);
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// A process is gone: its slot takes its events back, then the core
    /// hears of it.
    fn end(&mut self, worker: WorkerId, cause: ExitCause) {
        let Some(proc) = self.procs.remove(&worker) else { return };
        let blame = cause.blames_running_events();
        // Queued events (not at the head of their lane) must get no strike.
        let queued: Vec<(u64, Option<u32>)> = proc
            .lanes
            .values()
            .flat_map(|lane| lane.iter().skip(1))
            .map(|id| (*id, self.slots[proc.slot].strikes(*id)))
            .collect();
        let poisoned = self.slots[proc.slot].detach(worker, blame);
        for (id, before) in queued {
            assert_eq!(self.slots[proc.slot].strikes(id), before, "queued event {id} was struck ({cause:?})");
        }
        self.dropped.extend(poisoned.iter().map(|p| p.id));
        let exit = Exit::new(cause, "");
        let input = Input::Gone { worker, pid: None, exit, was_ready: proc.ready, at_unix_ms: 0 };
        let commands = self.core.handle(self.now, input);
        self.execute(commands);
    }

    fn pick(&self, pick: usize, filter: impl Fn(&Proc) -> bool) -> Option<WorkerId> {
        let candidates: Vec<WorkerId> = self.procs.iter().filter(|(_, p)| filter(p)).map(|(w, _)| *w).collect();
        (!candidates.is_empty()).then(|| candidates[pick % candidates.len()])
    }

    fn apply(&mut self, action: Action) {
        match action {
            Action::Push { conn } => {
                let id = self.next_event;
                self.next_event += 1;
                self.pushed.push(id);
                let slot = (conn % 2) as usize;
                self.slots[slot].push(id, Pending::new(conn, EventBody::Message { binary: false, data: Bytes::new() }));
            }
            Action::Ready { pick, handoff } => {
                let Some(worker) = self.pick(pick, |p| !p.ready) else { return };
                let (link, rx) = mpsc::unbounded_channel();
                let proc = self.procs.get_mut(&worker).expect("picked");
                proc.ready = true;
                proc.handoff = handoff;
                proc.rx = Some(rx);
                let slot = proc.slot;
                self.slots[slot].attach(Attached::new(worker, link, handoff));
                let commands = self.core.handle(self.now, Input::Ready { worker, pid: None, handoff });
                self.execute(commands);
            }
            Action::StartFails { pick } => {
                if let Some(worker) = self.pick(pick, |p| !p.ready) {
                    self.end(worker, ExitCause::NotReady);
                }
            }
            Action::Finish { pick, lane } => {
                let Some(worker) = self.pick(pick, |p| p.lanes.values().any(|l| !l.is_empty())) else { return };
                let proc = self.procs.get_mut(&worker).expect("picked");
                let busy: Vec<u64> = proc.lanes.iter().filter(|(_, l)| !l.is_empty()).map(|(c, _)| *c).collect();
                let conn = busy[lane % busy.len()];
                let id = proc.lanes.get_mut(&conn).expect("lane").remove(0);
                let slot = proc.slot;
                let first = self.handled.entry(conn).or_default();
                if !first.contains(&id) {
                    first.push(id);
                }
                assert_eq!(self.slots[slot].ack(worker, id), Some(conn), "ack of a held event");
                self.pump();
            }
            Action::Dies { pick, hang } => {
                let Some(worker) = self.pick(pick, |p| p.ready) else { return };
                let cause = if hang {
                    ExitCause::Unresponsive { silent_ms: 1 }
                } else {
                    ExitCause::Crashed { code: None, signal: Some(9) }
                };
                self.end(worker, cause);
            }
            Action::Wait { ms } => self.advance(Duration::from_millis(ms)),
            Action::Recycle { pick } => {
                if let Some(worker) = self.pick(pick, |p| p.ready) {
                    let commands = self.core.handle(self.now, Input::Recycle { worker });
                    self.execute(commands);
                }
            }
            Action::Reload { rollback, canary } => {
                let kind = if rollback { ReloadKind::Rollback } else { ReloadKind::Workers };
                let canary = canary.then_some(1);
                let input = Input::Reload(Request { kind, canary, reason: None, waiter: None });
                let commands = self.core.handle(self.now, input);
                self.execute(commands);
            }
            Action::Copied { ok } => {
                if !std::mem::take(&mut self.copy_pending) {
                    return;
                }
                let result = if ok {
                    self.next_generation += 1;
                    Ok(self.next_generation - 1)
                } else {
                    Err("disk full".into())
                };
                let commands = self.core.handle(self.now, Input::GenerationCreated(result));
                self.execute(commands);
            }
        }
    }

    /// Time passes: workers past their drain deadline are killed (no
    /// blame), then the core's own deadlines run.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        let late: Vec<WorkerId> =
            self.procs.iter().filter(|(_, p)| p.drain_until.is_some_and(|d| d <= self.now)).map(|(w, _)| *w).collect();
        for worker in late {
            self.end(worker, ExitCause::DrainDeadline);
        }
        let commands = self.core.tick(self.now);
        self.execute(commands);
    }

    /// The promises that must hold after every step.
    fn check(&self) {
        for (conn, ids) in &self.handled {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "conn {conn}: handled out of order: {ids:?}");
        }
        for (slot, state) in self.core.slots.iter().enumerate() {
            let covered = state.current.is_some()
                || state.starting.is_some()
                || self.core.job_starting(slot).is_some()
                || state.handoff_wait.is_some()
                || state.restart_at <= self.now + BACKOFF_MAX;
            assert!(covered, "slot {slot} has no worker and no restart within the back-off");
            assert_eq!(
                self.slots[slot].current().map(|w| w.id),
                state.current,
                "slot {slot}: the slot routes to another worker than the core thinks"
            );
        }
        for (worker, rec) in &self.core.workers {
            if rec.phase == Phase::Suspended {
                let state = &self.core.slots[rec.slot];
                let waited_for = state.handoff_wait.is_some()
                    || state.starting.is_some()
                    || self.core.job_starting(rec.slot).is_some()
                    || self.core.job_standby(rec.slot);
                assert!(waited_for, "worker {worker} is suspended and nobody waits for its state");
            }
        }
    }

    /// Lets everything finish: every starting worker becomes Ready, every
    /// held event is handled, time passes; then nothing may be missing.
    fn quiesce(&mut self) {
        for _ in 0..200 {
            while self.copy_pending {
                self.apply(Action::Copied { ok: true });
            }
            while let Some(worker) = self.pick(0, |p| !p.ready) {
                let before = self.procs.len();
                self.apply(Action::Ready { pick: 0, handoff: false });
                let _ = (worker, before);
            }
            while self.pick(0, |p| p.lanes.values().any(|l| !l.is_empty())).is_some() {
                self.apply(Action::Finish { pick: 0, lane: 0 });
            }
            self.advance(Duration::from_millis(500));
            let left: usize = self.slots.iter().map(Slot::unacked_len).sum();
            if left == 0 && self.core.job.is_none() && self.core.queue.is_empty() && !self.copy_pending {
                break;
            }
        }
        let handled: usize = self.handled.values().map(Vec::len).sum();
        assert_eq!(handled + self.dropped.len(), self.pushed.len(), "every event handled or dropped as poison");
        for id in &self.dropped {
            assert!(self.handled.values().all(|ids| !ids.contains(id)), "event {id} both handled and dropped");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_histories_keep_every_promise(
        actions in proptest::collection::vec(action(), 1..80),
        all_at_once in any::<bool>(),
    ) {
        let strategy = if all_at_once { ReloadStrategy::AllAtOnce } else { ReloadStrategy::Rolling };
        let mut sim = Sim::new(strategy);
        for action in actions {
            sim.apply(action);
            sim.check();
        }
        sim.quiesce();
        sim.check();
    }
}
