//! Small waiting helpers shared by the server's tasks.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// Polling step while waiting for workers or connections during start and
/// stop; short enough to be invisible, long enough to cost nothing.
pub(crate) const WAIT_STEP: Duration = Duration::from_millis(10);

/// Resolves once a stop or kill flag is raised. Returns `()` rather than the
/// watch guard so callers' futures stay `Send`.
pub(crate) async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|raised| *raised).await;
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls `done` until it holds or `budget` passes; returns whether it held.
pub(crate) async fn wait_until(budget: Duration, done: impl Fn() -> bool) -> bool {
    wait_until_every(budget, WAIT_STEP, done).await
}

/// [`wait_until`], looking every `step`.
pub(crate) async fn wait_until_every(budget: Duration, step: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + budget;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(step).await;
    }
    true
}
