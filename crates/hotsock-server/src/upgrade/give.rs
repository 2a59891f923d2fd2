//! The old server's side of a binary upgrade: start the new binary, wait
//! for its readiness gate, park every connection at a quiet point, hand
//! the state and sockets over, and let go only once the new server says it
//! holds everything. Any failure before that leaves this server serving
//! exactly as before: nothing it owns is closed or changed until `Commit`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::{self, Begin, ENV_UPGRADE_FD, HANDOVER_VERSION, Note, WireError};
use super::{unix_ms, unix_us};
use crate::net::park::ParkState;
use crate::shared::Shared;
use crate::wire::{UpgradePhase, UpgradeStatus};

/// How long the old server waits for a new server that failed to say why
/// to exit, to report its exit status.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// How long a new server that hung up is given to have said why.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// How often the quiet point is looked for while connections park.
const QUIET_STEP: Duration = Duration::from_millis(1);

/// A connection that sent nothing for this long moves ahead of the others.
const IDLE_FOR: Duration = Duration::from_secs(1);

/// Longest the idle connections are given to park before the rest park
/// too (they have nothing to finish, so they park at once; waking 10,000
/// takes about 20 ms).
const IDLE_PARK_MAX: Duration = Duration::from_millis(500);

/// The idle connections have parked once the count has not moved for this
/// many steps.
const SETTLED_STEPS: u32 = 3;

/// Runs one upgrade to `binary` (default: the executable this server
/// started from). `Ok`: the new server holds everything and this one must
/// exit (the caller requests the stop); `Err`: nothing changed, with why.
pub(crate) async fn upgrade(shared: &Arc<Shared>, binary: Option<PathBuf>) -> Result<UpgradeStatus, UpgradeStatus> {
    if let Some(refused) = refusal(shared) {
        let mut status = fresh_status();
        status.phase = UpgradePhase::Failed;
        status.detail = Some(refused);
        status.at_unix_ms = unix_ms();
        return Err(status);
    }
    if shared.upgrading.swap(true, Ordering::AcqRel) {
        let mut status = fresh_status();
        status.phase = UpgradePhase::Failed;
        status.detail = Some("an upgrade is already under way".into());
        return Err(status);
    }
    let started = Instant::now();
    set_status(shared, fresh_status());
    let binary = binary.unwrap_or_else(|| shared.exe.clone());
    let result = run(shared, &binary, started).await;
    let mut status = shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_else(fresh_status);
    status.duration_ms = started.elapsed().as_millis() as u64;
    status.at_unix_ms = unix_ms();
    let outcome = match result {
        Ok(()) => {
            status.phase = UpgradePhase::Done;
            tracing::info!(
                to = status.to_pid,
                version = status.to_version.as_deref().unwrap_or("?"),
                connections = status.connections,
                pause_ms = status.pause_ms,
                total_ms = status.duration_ms,
                "upgrade: the new server holds every connection; this server exits"
            );
            Ok(status.clone())
        }
        Err(why) => {
            tracing::error!("upgrade abandoned, this server serves on: {why}");
            status.phase = UpgradePhase::Failed;
            status.detail = Some(why);
            Err(status.clone())
        }
    };
    set_status(shared, status);
    if outcome.is_err() {
        shared.upgrading.store(false, Ordering::Release);
    }
    outcome
}

/// Why an upgrade cannot start now, if it cannot.
pub(crate) fn refusal(shared: &Shared) -> Option<String> {
    let config = shared.config();
    if config.server.tls.is_some() {
        return Some(
            "upgrade is not available with [server.tls]: a TLS session's state cannot move to another process; restart instead".into(),
        );
    }
    if config.cluster.is_some() {
        return Some(
            "upgrade is not available in cluster mode yet: restart the node (its clients reconnect to the others)"
                .into(),
        );
    }
    if shared.is_stopping() {
        return Some("the server is stopping".into());
    }
    let view = shared.supervision.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(reload) = view.reloading {
        return Some(format!("a reload is under way ({reload}); upgrade once it is done"));
    }
    None
}

fn fresh_status() -> UpgradeStatus {
    UpgradeStatus {
        phase: UpgradePhase::Starting,
        from_version: crate::version().to_owned(),
        to_version: None,
        from_pid: std::process::id(),
        to_pid: None,
        duration_ms: 0,
        pause_ms: 0,
        connections: 0,
        at_unix_ms: 0,
        detail: None,
    }
}

fn set_status(shared: &Shared, status: UpgradeStatus) {
    *shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
}

fn update(shared: &Shared, change: impl FnOnce(&mut UpgradeStatus)) {
    if let Some(status) = shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        change(status);
    }
}

/// Runs a blocking handover step off the async threads.
async fn blocking<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(step).await.map_err(|e| WireError::Io(std::io::Error::other(e.to_string())))?
}

async fn run(shared: &Arc<Shared>, binary: &std::path::Path, started: Instant) -> Result<(), String> {
    let config = shared.config();
    let (ready_budget, pause_budget) = (
        Duration::from_millis(config.reload.upgrade_timeout_ms),
        Duration::from_millis(config.reload.upgrade_pause_max_ms),
    );
    drop(config);
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot make the handover socket: {e}"))?;
    let ours = Arc::new(ours);
    let mut command = tokio::process::Command::new(binary);
    command
        .args(std::env::args_os().skip(1))
        .env(ENV_UPGRADE_FD, "0")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .kill_on_drop(false);
    // The listening socket comes over the handover socket, not from systemd.
    for key in hotsock_table::activation::ENV_VARS {
        command.env_remove(key);
    }
    let mut child = command.spawn().map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    drop(command);
    let pid = child.id();
    update(shared, |s| s.to_pid = pid);
    tracing::info!(binary = %binary.display(), pid, "upgrade: starting the new server");
    let mut result = hand_over(shared, &ours, ready_budget, pause_budget, started).await;
    if let Err(why) = &mut result {
        // Best effort: a new server still listening exits on Abort (or on
        // the socket closing); one that never answered is killed.
        let socket = ours.clone();
        let reason = why.clone();
        let _ = blocking(move || wire::send(&socket, &Note::Abort { reason }, &[])).await;
        drop(ours);
        match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(%status, "upgrade: the new server exited");
                if why.contains("exited") {
                    why.push_str(&format!(" ({status})"));
                }
            }
            _ => {
                let _ = child.start_kill();
            }
        }
        resume(shared);
    }
    result
}

/// Every parked connection serves on; accepting goes on.
fn resume(shared: &Shared) {
    shared.parking.set(ParkState::Serving);
    shared.hub.wake_all();
}

async fn hand_over(
    shared: &Arc<Shared>,
    socket: &Arc<UnixStream>,
    ready_budget: Duration,
    pause_budget: Duration,
    started: Instant,
) -> Result<(), String> {
    // 1. What the new server needs before its workers start.
    let view = shared.supervision.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let begin = Begin {
        handover_version: HANDOVER_VERSION,
        from_version: crate::version().to_owned(),
        from_pid: std::process::id(),
        serving: view.serving,
        previous: view.previous,
        metrics: shared.sockets.metrics.is_some(),
        tables: shared.tables.iter().map(|(spec, _)| spec.name.clone()).collect(),
    };
    let mut fds = vec![dup(&shared.sockets.client)?];
    if let Some(metrics) = &shared.sockets.metrics {
        fds.push(dup(metrics)?);
    }
    for (_, table) in &shared.tables {
        fds.push(table.file().try_clone().map_err(|e| format!("cannot share table {}: {e}", table.name()))?.into());
    }
    let s = socket.clone();
    let sent = blocking(move || {
        wire::send(&s, &Note::Begin(begin), &[])?;
        let raw: Vec<_> = fds.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        wire::send_fds(&s, &raw)
    })
    .await;
    if let Err(e) = sent {
        // A new server that failed fast (its config does not load) may
        // have said why and exited before reading Begin.
        let s = socket.clone();
        if let Ok((Note::Failed { reason }, _)) = blocking(move || wire::receive(&s, LAST_WORDS)).await {
            return Err(format!("the new server cannot start: {reason}"));
        }
        return Err(match e {
            WireError::Io(io)
                if matches!(io.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) =>
            {
                "the new server exited before it was ready".to_owned()
            }
            e => format!("cannot reach the new server: {e}"),
        });
    }

    // 2. Its readiness gate.
    let s = socket.clone();
    match blocking(move || wire::receive(&s, ready_budget)).await {
        Ok((Note::Ready { version, pid }, _)) => {
            tracing::info!(%version, pid, "upgrade: the new server is ready; parking connections");
            update(shared, |s| s.to_version = Some(version));
        }
        Ok((Note::Failed { reason }, _)) => return Err(format!("the new server cannot start: {reason}")),
        Ok((other, _)) => return Err(format!("the new server sent {other:?} instead of Ready")),
        Err(WireError::Closed) => return Err("the new server exited before it was ready".into()),
        Err(WireError::Timeout(_)) => {
            return Err(format!(
                "the new server was not ready within reload.upgrade_timeout_ms ({} ms)",
                ready_budget.as_millis()
            ));
        }
        Err(e) => return Err(format!("the new server did not answer: {e}")),
    }

    // 3. The idle connections park first and move ahead: their sockets,
    // facts and unread bytes cannot change while they are parked, so the
    // busy ones pause only for the last step (with 10,000 idle ones that
    // step was 150 ms when everything moved at once).
    update(shared, |s| s.phase = UpgradePhase::Parking);
    let since = shared.hub.now_ms().saturating_sub(IDLE_FOR.as_millis() as u64);
    shared.parking.set(ParkState::ParkingIdle(since));
    shared.hub.wake_all();
    settle(IDLE_PARK_MAX, || shared.parking.parked_count()).await;
    let ahead = shared.parking.parked_now();
    // Each one's uid as sent: the state note names only those whose uid
    // or queued output changed since.
    let mut premoved = HashMap::new();
    if !ahead.is_empty() {
        let ids: Vec<u64> = ahead.iter().map(|(conn, _, _)| *conn).collect();
        let entries: Vec<_> = ahead
            .into_iter()
            .zip(shared.hub.facts(&ids))
            .map(|((conn, fd, leftover), facts)| {
                let (meta, uid) = facts.unwrap_or_default();
                premoved.insert(conn, uid);
                (conn, fd, leftover, meta, uid)
            })
            .collect();
        let (note, blob, fds) = wire::encode_premove(&entries);
        let s = socket.clone();
        let sent = entries.len();
        let taken = blocking(move || {
            wire::send(&s, &Note::Premove(note), &blob)?;
            wire::send_fds(&s, &fds)?;
            wire::receive(&s, pause_budget)
        })
        .await
        .map_err(|e| format!("handing over the idle connections: {e}"))?;
        match taken.0 {
            Note::Ahead { connections } if connections == sent => {}
            other => return Err(format!("the new server answered {other:?} to the idle connections")),
        }
    }

    // 4. Park every connection: no new ones, each stopped between two
    // messages, every event acknowledged.
    let paused = Instant::now();
    let paused_at_unix_us = unix_us();
    shared.parking.set(ParkState::Parking);
    shared.hub.wake_unless(|conn| premoved.contains_key(&conn));
    // Every connection task, including those accepted just before and
    // still reading their request: each must open and park, or end.
    let tasks = || shared.conn_tasks.load(Ordering::Relaxed);
    // Every connection waits while this looks: it looks often.
    let quiet = crate::wait::wait_until_every(pause_budget, QUIET_STEP, || {
        tasks() == shared.parking.parked_count() && shared.hub.unacked_total() == 0
    })
    .await;
    if !quiet {
        return Err(format!(
            "no quiet point within reload.upgrade_pause_max_ms ({} ms): {} of {} connections parked, {} events unacknowledged",
            pause_budget.as_millis(),
            shared.parking.parked_count(),
            tasks(),
            shared.hub.unacked_total()
        ));
    }

    // The new server runs the generation it was told at Begin: a reload,
    // a build's reload or an automatic rollback since then would leave it
    // serving other code than this server did.
    let now = shared.supervision.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if now.serving != view.serving || now.reloading.is_some() {
        return Err(format!(
            "the serving generation changed during the upgrade ({} -> {}{}); nothing moved, upgrade again",
            view.serving,
            now.serving,
            now.reloading.map(|r| format!(", reloading: {r}")).unwrap_or_default()
        ));
    }

    // 5. The state and the sockets.
    let parked_in = paused.elapsed();
    update(shared, |s| s.phase = UpgradePhase::HandingOver);
    let snapshot = shared.hub.snapshot();
    let connections = snapshot.conns.len();
    let totals = wire::Totals {
        accepted: shared.accepted_total.load(Ordering::Relaxed),
        messages_in: shared.metrics.received.messages(),
        bytes_in: shared.metrics.received.bytes(),
        messages_out: shared.metrics.sent.messages(),
        bytes_out: shared.metrics.sent.bytes(),
    };
    let encoded = wire::encode_state(&snapshot, shared.parking.take(), &premoved, paused_at_unix_us, totals);
    let result = async {
        let (note, blob, fds) = encoded?;
        let s = socket.clone();
        blocking(move || {
            wire::send(&s, &Note::State(note), &blob)?;
            wire::send_fds(&s, &fds)
        })
        .await
        .map_err(|e| format!("handing over: {e}"))?;
        let left = pause_budget.saturating_sub(paused.elapsed());
        let sent_in = paused.elapsed();
        let s = socket.clone();
        let holding = blocking(move || wire::receive(&s, left)).await;
        tracing::info!(
            parked_ms = parked_in.as_millis() as u64,
            sent_ms = (sent_in - parked_in).as_millis() as u64,
            taken_ms = (paused.elapsed() - sent_in).as_millis() as u64,
            connections,
            ahead = premoved.len(),
            "upgrade: handed over"
        );
        match holding {
            Ok((Note::Holding { connections: held }, _)) if held == connections => {}
            Ok((Note::Holding { connections: held }, _)) => {
                return Err(format!("the new server holds {held} of {connections} connections"));
            }
            Ok((Note::Failed { reason }, _)) => return Err(format!("the new server failed to take over: {reason}")),
            Ok((other, _)) => return Err(format!("the new server sent {other:?} instead of Holding")),
            Err(WireError::Timeout(_)) => {
                return Err(format!(
                    "the new server did not take over within reload.upgrade_pause_max_ms ({} ms)",
                    pause_budget.as_millis()
                ));
            }
            Err(e) => return Err(format!("the new server did not take over: {e}")),
        }
        Ok(())
    }
    .await;
    if let Err(why) = result {
        // Output taken for the handover goes back in front of whatever
        // came since: the connections go on as if nothing happened.
        shared.hub.requeue(snapshot);
        return Err(why);
    }

    // 6. Let go. After this, nothing of this server touches a connection.
    // systemd hears of the new main process first, so the READY=1 it
    // sends once it holds the connections is accepted (NotifyAccess=main).
    let successor = shared.upgrade.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|s| s.to_pid);
    if let (Some(notifier), Some(pid)) = (&shared.notifier, successor) {
        notifier.send(&format!("MAINPID={pid}\nSTATUS=handing over to pid {pid}"));
    }
    let s = socket.clone();
    if let Err(e) = blocking(move || wire::send(&s, &Note::Commit, &[])).await {
        if let Some(notifier) = &shared.notifier {
            notifier.send(&format!("MAINPID={}", std::process::id()));
        }
        shared.hub.requeue(snapshot);
        return Err(format!("committing: {e}"));
    }
    shared.parking.set(ParkState::Moved);
    shared.hub.wake_all();
    update(shared, |s| {
        s.connections = connections;
        s.pause_ms = paused.elapsed().as_millis() as u64;
        s.duration_ms = started.elapsed().as_millis() as u64;
    });
    if let Some(pid) = successor {
        let _ = shared.successor.set(pid);
    }
    Ok(())
}

/// Waits until `count` stops growing (or `max` passes).
async fn settle(max: Duration, count: impl Fn() -> usize) {
    let deadline = Instant::now() + max;
    let (mut last, mut still) = (count(), 0);
    while still < SETTLED_STEPS && Instant::now() < deadline {
        tokio::time::sleep(QUIET_STEP).await;
        let now = count();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone().map_err(|e| format!("cannot share the listening socket: {e}"))
}
