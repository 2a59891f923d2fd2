//! The supervisor's driver: the one task that feeds the core (`core/`) with
//! what happens and carries out what it decides. It holds the I/O the core
//! must not: the clock, the worker tasks' control channels, the generation
//! store, the reload requesters' reply channels, the hub calls.
//!
//! Worker tasks (`worker.rs`) report on one channel and admin requests,
//! signals and the watcher ask on another; both arrive here in order, so the
//! core sees one history and never races with itself.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::route::slot::WorkerId;
use crate::shared::Shared;
use crate::supervise::core::{Command, Core, CoreConfig, Input, Request, Waiter};
use crate::supervise::generations::{GenerationCopy, Generations, Stored};
use crate::supervise::handle::{Msg, Reconfigure, ReloadRequest, SupervisorHandle};
use crate::supervise::messages::{Control, WorkerEvent};
use crate::supervise::worker::{self, Launch};
use crate::wire::{ReloadKind, ReloadOutcome};

type Copy = JoinHandle<std::io::Result<(GenerationCopy, Stored)>>;

/// Creates the supervisor; the returned future runs it until every worker
/// is gone after `retire`.
/// `first`: the generation to serve and the rollback target (1 and none,
/// unless this server took over from a running one).
pub(crate) fn start(
    shared: Arc<Shared>,
    generations: Generations,
    first: (u64, Option<u64>),
) -> (SupervisorHandle, impl Future<Output = ()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = SupervisorHandle { tx: tx.clone() };
    let (events, mut events_rx) = mpsc::unbounded_channel();
    // Worker reports join the request channel so one loop sees everything.
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            if tx.send(Msg::Worker(event)).is_err() {
                return;
            }
        }
    });
    let mut core = Core::new(CoreConfig::from_config(&shared.config()), Instant::now().into_std());
    core.start_at(first.0, first.1);
    let driver = Driver {
        shared,
        generations,
        core,
        live: HashMap::new(),
        waiters: HashMap::new(),
        next_waiter: 1,
        events,
        copying: None,
        reloading: false,
    };
    (handle, driver.run(rx))
}

struct Driver {
    shared: Arc<Shared>,
    generations: Generations,
    core: Core,
    /// Control channels of the worker tasks alive.
    live: HashMap<WorkerId, mpsc::UnboundedSender<Control>>,
    /// Who waits for a reload's outcome.
    waiters: HashMap<Waiter, oneshot::Sender<ReloadOutcome>>,
    next_waiter: Waiter,
    events: mpsc::UnboundedSender<WorkerEvent>,
    /// The executable copy under way (on a blocking thread).
    copying: Option<Copy>,
    /// A reload was under way at the last publish (for systemd's states).
    reloading: bool,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let commands = self.core.start(Instant::now().into_std());
        self.execute(commands);
        loop {
            self.publish();
            if self.core.finished() {
                return;
            }
            let wake = self.core.next_wakeup().map(Instant::from_std);
            let commands = tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    match self.input(msg) {
                        Some(input) => self.core.handle(Instant::now().into_std(), input),
                        None => Vec::new(),
                    }
                }
                () = crate::wait::sleep_until_opt(wake) => self.core.tick(Instant::now().into_std()),
                copied = async {
                    match self.copying.as_mut() {
                        Some(copy) => copy.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.copying = None;
                    let result = match copied {
                        Ok(Ok((copy, stored))) => Ok(self.generations.commit(copy, stored)),
                        Ok(Err(e)) => Err(format!("cannot create generation: {e}")),
                        Err(e) => Err(format!("cannot create generation: {e}")),
                    };
                    self.core.handle(Instant::now().into_std(), Input::GenerationCreated(result))
                }
            };
            self.execute(commands);
        }
    }

    /// Turns a message into the core's input, keeping the parts the core
    /// does not hold (reply channels, control channels of ended workers);
    /// new settings are applied here and are no input.
    fn input(&mut self, msg: Msg) -> Option<Input> {
        Some(match msg {
            Msg::Worker(WorkerEvent::Spawned { worker, pid }) => Input::Spawned { worker, pid },
            Msg::Worker(WorkerEvent::Ready { worker, pid, handoff }) => Input::Ready { worker, pid, handoff },
            Msg::Worker(WorkerEvent::HandedOff { slot }) => Input::HandedOff { slot },
            Msg::Worker(WorkerEvent::Recycle { worker }) => Input::Recycle { worker },
            Msg::Worker(WorkerEvent::Panicked { worker, count }) => Input::Panicked { worker, count },
            Msg::Worker(WorkerEvent::Gone { worker, pid, exit, was_ready, at_unix_ms }) => {
                self.live.remove(&worker);
                Input::Gone { worker, pid, exit, was_ready, at_unix_ms }
            }
            Msg::Reload(ReloadRequest { kind, canary, reply, reason }) => {
                let waiter = reply.map(|reply| {
                    let waiter = self.next_waiter;
                    self.next_waiter += 1;
                    self.waiters.insert(waiter, reply);
                    waiter
                });
                Input::Reload(Request { kind, canary, reason, waiter })
            }
            Msg::Retire => Input::Retire,
            Msg::Reconfigure(Reconfigure { core, program, keep_generations }) => {
                self.core.reconfigure(core);
                self.generations.reconfigure(program, keep_generations);
                return None;
            }
        })
    }

    fn execute(&mut self, commands: Vec<Command>) {
        let hub = &self.shared.hub;
        for command in commands {
            match command {
                Command::Launch { worker, slot, generation } => {
                    let program = self.generations.program(generation);
                    let launch = Launch { slot, generation, program, worker };
                    let control = worker::launch(self.shared.clone(), launch, self.events.clone());
                    self.live.insert(worker, control);
                }
                Command::Drain { worker, deadline, retire } => {
                    let deadline = Instant::from_std(deadline);
                    self.control(worker, Control::Drain { deadline, retire });
                }
                Command::Kill { worker, reason } => self.control(worker, Control::Kill(reason)),
                Command::MakeCurrent { slot, worker } => hub.make_current(slot, worker),
                Command::Unroute { slot, worker } => hub.drain(slot, worker),
                Command::Suspend { slot } => {
                    // The core decided from the worker's Ready capabilities;
                    // the slot agrees by construction.
                    let _ = hub.suspend(slot);
                }
                Command::Resume { slot } => hub.resume(slot),
                Command::CreateGeneration => {
                    let copy = self.generations.next_copy();
                    self.copying = Some(tokio::task::spawn_blocking(move || {
                        let stored = copy.run()?;
                        Ok((copy, stored))
                    }));
                }
                Command::Prune { protect } => self.generations.prune(&protect),
                Command::Answer { waiters, outcome } => {
                    let kind = match outcome.kind {
                        ReloadKind::Workers => "workers",
                        ReloadKind::Tasks => "tasks",
                        ReloadKind::Rollback => "rollback",
                    };
                    let took = std::time::Duration::from_millis(outcome.duration_ms);
                    self.shared.metrics.reload(kind, outcome.ok, took);
                    for waiter in waiters {
                        if let Some(reply) = self.waiters.remove(&waiter) {
                            let _ = reply.send(outcome.clone());
                        }
                    }
                }
            }
        }
    }

    fn control(&self, worker: WorkerId, control: Control) {
        if let Some(live) = self.live.get(&worker) {
            let _ = live.send(control);
        }
    }

    /// Shares what status reports about generations, reloads and phases,
    /// and tells systemd when a reload begins and ends.
    fn publish(&mut self) {
        let view = self.core.view(Instant::now().into_std());
        let reloading = view.reloading.is_some();
        if let Some(notifier) = self.shared.notifier.as_ref().filter(|n| n.announced())
            && reloading != self.reloading
        {
            if reloading {
                notifier.reloading();
            } else {
                notifier.ready(&format!("serving generation {}", view.serving));
            }
        }
        self.reloading = reloading;
        *self.shared.supervision.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }
}
