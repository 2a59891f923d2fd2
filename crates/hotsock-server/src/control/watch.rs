//! Watch and build: when source files change, run the build command and, if
//! it succeeds, reload through the normal path (readiness gate, rollback and
//! single flight included). A failed build changes nothing but the report.
//!
//! Theory of operation. A `notify` watcher (inotify, or polling for mounts
//! where inotify never fires, and as a fallback when inotify cannot be set
//! up) sends raw events for the watched directories. Events under ignored
//! paths (build output, VCS, editor swap and temporary files, the run
//! directory) are dropped. The rest are debounced here, not per path: a
//! build starts once no relevant change came for `debounce_ms`, so one save,
//! an editor's write-temp-then-rename, or twenty rapid saves are one build
//! (a per-path debouncer would emit the temp file and the target a tick
//! apart and cause two). Builds are single-flight: changes during a build
//! mark it dirty, which schedules exactly one more build after it.
//!
//! This module never blocks the server: the build is a child process (from
//! the spawner thread, in its own process group so a timeout kills all of
//! it), its output is read by tasks, and the reload is only requested.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::WatchConfig;
use crate::shared::Shared;
use crate::supervise::handle::{ReloadRequest, SupervisorHandle};
use crate::supervise::spawn::{SpawnSpec, StderrTail, forward_stderr};
use crate::wire::{BuildOutcome, ReloadKind, WatchStatus};

/// Paths no build cares about; `reload.watch.ignore` adds to these. A
/// directory is listed both as itself (its own create/remove events) and
/// with `/**` (everything under it).
const DEFAULT_IGNORES: &[&str] = &[
    "**/target",
    "**/target/**",
    "**/.git",
    "**/.git/**",
    "**/node_modules",
    "**/node_modules/**",
    "**/*.swp",
    "**/*.swo",
    "**/*.swx",
    "**/*~",
    "**/.#*",
    "**/#*#",
    "**/4913",
    "**/*.tmp",
    "**/.*.kate-swp",
    "**/.DS_Store",
];

/// Build output lines kept for `status` and the log.
const BUILD_TAIL_LINES: usize = 20;

/// Runs the watcher `[reload.watch]` asks for, and again with the new
/// settings each time a reload changes them (none when they turn it off),
/// until the server stops (this task is aborted, and its watcher with it).
pub(crate) async fn follow(shared: Arc<Shared>, supervisor: SupervisorHandle) {
    let mut reconfigured = shared.reconfigured.subscribe();
    loop {
        let settings = shared.config().reload.watch.clone().filter(|watch| watch.enabled);
        let _watcher =
            settings.clone().map(|watch| AbortOnDrop(tokio::spawn(run(shared.clone(), supervisor.clone(), watch))));
        loop {
            if reconfigured.changed().await.is_err() {
                return;
            }
            if shared.config().reload.watch.clone().filter(|watch| watch.enabled) != settings {
                break;
            }
        }
        tracing::info!("[reload.watch] changed: the watcher restarts with the new settings");
        *shared.watch_status.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Aborts the task when dropped: an aborted `follow` takes its watcher
/// with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches until the server stops. Errors setting up are logged and shown
/// in status; they never stop the server.
pub(crate) async fn run(shared: Arc<Shared>, supervisor: SupervisorHandle, config: WatchConfig) {
    let base = shared.config().base_dir.clone();
    let roots: Vec<PathBuf> = config.paths.iter().map(|p| absolute(&base.join(p))).collect();
    let ignores = match ignore_set(&config.ignore) {
        Ok(set) => set,
        Err(error) => {
            tracing::error!("reload.watch.ignore: {error}; watching is off");
            return;
        }
    };
    let run_dir = absolute(&shared.config().run_dir());
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<Event>>();
    let (watcher, backend, fallback_reason) = match start_watcher(&config, &roots, tx) {
        Ok(started) => started,
        Err(error) => {
            tracing::error!("cannot watch {roots:?}: {error}; watching is off");
            return;
        }
    };
    let _watcher = watcher;
    shared.set_watch_status(WatchStatus {
        backend: backend.into(),
        fallback_reason,
        paths: roots.iter().map(|p| p.display().to_string()).collect(),
        ..WatchStatus::default()
    });
    tracing::info!(backend, paths = ?roots, build = ?config.build, "watching for changes");
    let debounce = Duration::from_millis(config.debounce_ms);
    let mut last_change: Option<(Instant, String)> = None;
    let mut building: Option<tokio::task::JoinHandle<BuildOutcome>> = None;
    let mut dirty: Option<String> = None;
    let mut stop = shared.stop_signal();
    loop {
        let quiet_at = last_change.as_ref().filter(|_| building.is_none()).map(|(at, _)| *at + debounce);
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                let Some(path) = relevant(event, &roots, &ignores, &run_dir) else { continue };
                shared.update_watch_status(|s| s.changes += 1);
                if building.is_some() {
                    dirty = Some(path);
                } else {
                    last_change = Some((Instant::now(), path));
                }
            }
            () = crate::wait::sleep_until_opt(quiet_at) => {
                let Some((_, trigger)) = last_change.take() else { continue };
                if config.build.is_empty() {
                    request_reload(&supervisor, format!("watch: {trigger} changed"));
                } else {
                    shared.update_watch_status(|s| { s.builds += 1; s.building = true; });
                    building = Some(tokio::spawn(build(shared.clone(), config.clone(), trigger)));
                }
            }
            outcome = async {
                match building.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                building = None;
                let outcome = outcome.unwrap_or_else(|e| failed_outcome(format!("build task failed: {e}")));
                report(&shared, &supervisor, outcome);
                // Changes during the build: exactly one more build, once they
                // have settled.
                if let Some(path) = dirty.take() {
                    last_change = Some((Instant::now(), path));
                }
            }
            () = crate::wait::raised(&mut stop) => return,
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

fn ignore_set(extra: &[String]) -> Result<GlobSet, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in DEFAULT_IGNORES.iter().copied().chain(extra.iter().map(String::as_str)) {
        builder.add(Glob::new(pattern)?);
        // Patterns are relative to a watched directory; also match them at
        // its top level ("target/**" as well as "**/target/**").
        if let Some(top) = pattern.strip_prefix("**/") {
            builder.add(Glob::new(top)?);
        }
    }
    builder.build()
}

type Started = (Box<dyn Watcher + Send>, &'static str, Option<String>);

/// inotify unless polling is asked for; polling when inotify cannot watch
/// (limit reached, unsupported file system).
fn start_watcher(
    config: &WatchConfig,
    roots: &[PathBuf],
    tx: mpsc::UnboundedSender<notify::Result<Event>>,
) -> notify::Result<Started> {
    // notify's poller compares modification times in whole seconds, so two
    // saves within a second look the same; comparing contents (a hash of
    // each file per scan, like Swoft's md5 watcher) catches them.
    let poll_config = notify::Config::default()
        .with_poll_interval(Duration::from_millis(config.poll_interval_ms))
        .with_compare_contents(true);
    let poll = |tx: mpsc::UnboundedSender<notify::Result<Event>>| -> notify::Result<Box<dyn Watcher + Send>> {
        let mut watcher = notify::PollWatcher::new(move |event| drop(tx.send(event)), poll_config)?;
        for root in roots {
            watcher.watch(root, RecursiveMode::Recursive)?;
        }
        Ok(Box::new(watcher))
    };
    if config.poll {
        return Ok((poll(tx)?, "poll", None));
    }
    let inotify = || -> notify::Result<Box<dyn Watcher + Send>> {
        let tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event| drop(tx.send(event)))?;
        for root in roots {
            watcher.watch(root, RecursiveMode::Recursive)?;
        }
        Ok(Box::new(watcher))
    };
    match inotify() {
        Ok(watcher) => Ok((watcher, "inotify", None)),
        Err(error) => {
            let reason = format!("inotify unavailable ({error}); polling every {} ms", config.poll_interval_ms);
            tracing::warn!("{reason}");
            Ok((poll(tx)?, "poll", Some(reason)))
        }
    }
}

/// The first changed, non-ignored path of an event, if any.
fn relevant(event: notify::Result<Event>, roots: &[PathBuf], ignores: &GlobSet, run_dir: &Path) -> Option<String> {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!("watcher error: {error}");
            return None;
        }
    };
    let counts = match event.kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Other => false,
    };
    if !counts {
        return None;
    }
    // A rename lists (from, to): name the file saved, not the temporary one.
    event.paths.into_iter().rev().find(|path| !ignored(path, roots, ignores, run_dir)).map(|p| p.display().to_string())
}

fn ignored(path: &Path, roots: &[PathBuf], ignores: &GlobSet, run_dir: &Path) -> bool {
    // The run directory holds the generation store: copying into it must
    // never trigger a build.
    if path.starts_with(run_dir) {
        return true;
    }
    let relative = roots.iter().find_map(|root| path.strip_prefix(root).ok()).unwrap_or(path);
    ignores.is_match(relative)
}

fn request_reload(supervisor: &SupervisorHandle, why: String) {
    tracing::info!("{why}; reloading");
    supervisor.reload(ReloadRequest { kind: ReloadKind::Workers, canary: None, reply: None, reason: Some(why) });
}

fn report(shared: &Shared, supervisor: &SupervisorHandle, outcome: BuildOutcome) {
    if outcome.ok {
        tracing::info!(duration_ms = outcome.duration_ms, "build succeeded");
        request_reload(supervisor, format!("watch: build ok after a change to {}", outcome.trigger));
    } else {
        tracing::error!(
            duration_ms = outcome.duration_ms,
            "build failed ({}); nothing reloaded. Last lines:\n{}",
            outcome.exit,
            outcome.output_tail.join("\n")
        );
    }
    shared.update_watch_status(|s| {
        s.building = false;
        s.builds_failed += u64::from(!outcome.ok);
        s.last_build = Some(outcome);
    });
}

fn failed_outcome(exit: String) -> BuildOutcome {
    BuildOutcome {
        ok: false,
        exit,
        finished_at_unix_ms: unix_ms(),
        duration_ms: 0,
        trigger: String::new(),
        output_tail: Vec::new(),
    }
}

/// Runs the build command once, bounded by `build_timeout_ms`.
async fn build(shared: Arc<Shared>, config: WatchConfig, trigger: String) -> BuildOutcome {
    let started = Instant::now();
    tracing::info!(command = ?config.build, "building after a change to {trigger}");
    let spec = SpawnSpec {
        program: PathBuf::from(&config.build[0]),
        args: config.build[1..].to_vec(),
        title: config.build[0].clone(),
        worker: false,
        cwd: Some(shared.config().base_dir.clone()),
        env: Vec::new(),
        idle_until: None,
    };
    let mut spawned = match shared.spawner.spawn(spec).await {
        Ok(spawned) => spawned,
        Err(error) => return BuildOutcome { trigger, ..failed_outcome(format!("cannot start the build: {error}")) },
    };
    let tail = StderrTail::default();
    let mut readers = Vec::new();
    if let Some(stdout) = spawned.stdout.take() {
        readers.push(tokio::spawn(forward_stderr(stdout, "[build]".into(), tail.clone())));
    }
    if let Some(stderr) = spawned.stderr.take() {
        readers.push(tokio::spawn(forward_stderr(stderr, "[build]".into(), tail.clone())));
    }
    let timeout = Duration::from_millis(config.build_timeout_ms);
    let exit = match tokio::time::timeout(timeout, spawned.child.wait()).await {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(format!("exited with {status}")),
        Ok(Err(error)) => Some(format!("wait failed: {error}")),
        Err(_) => {
            // The build runs in its own process group: kill all of it.
            if let Some(pid) = spawned.child.id() {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            }
            let _ = spawned.child.wait().await;
            Some(format!("killed after reload.watch.build_timeout_ms = {}", config.build_timeout_ms))
        }
    };
    for reader in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    let lines = tail.lines();
    let output_tail = lines[lines.len().saturating_sub(BUILD_TAIL_LINES)..].to_vec();
    BuildOutcome {
        ok: exit.is_none(),
        exit: exit.unwrap_or_else(|| "exit status 0".into()),
        finished_at_unix_ms: unix_ms(),
        duration_ms: started.elapsed().as_millis() as u64,
        trigger,
        output_tail,
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
