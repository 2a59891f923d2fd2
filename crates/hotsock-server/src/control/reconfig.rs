//! What a reload re-reads before any worker is replaced: the config file
//! (and with it the TLS files). `hotsock reload` and SIGUSR1/SIGUSR2 call
//! [`prepare`] first; when it fails (the file does not parse or validate,
//! a key that needs a restart changed, a certificate or log filter does
//! not load) the reload is not performed at all and the server keeps
//! serving exactly as before.
//!
//! It must never leave half of a change applied: everything that can fail
//! is loaded and checked first, and only then is anything swapped in. The
//! live keys take effect where they are read: connections accepted from
//! then on (handshake limits, origins, TLS, WebSocket limits), the hub's
//! limits through `Hub::set_limits`, the supervisor's settings through a
//! `Reconfigure` sent ahead of the reload request, the workers of the
//! reload's new generation (their launch settings), the file watcher
//! (restarted by `watch::follow`), and the log filter.

use std::sync::Arc;

use crate::config::{self, Config, RestartOnly};
use crate::shared::Shared;
use crate::supervise::core::CoreConfig;
use crate::supervise::handle::Reconfigure;

/// Re-reads the config file and applies its live changes, or refuses
/// with why (each restart-only key with its line, "needs a restart").
pub(crate) fn prepare(shared: &Shared) -> Result<(), String> {
    let _one_at_a_time = shared.reconfiguring.lock().unwrap_or_else(|p| p.into_inner());
    let old = shared.config();
    let mut new = Config::load(&old.source.path).map_err(|error| error.to_string())?;
    if shared.options.watch
        && let Some(watch) = new.reload.watch.as_mut()
    {
        // `hotsock start --watch` keeps watching whatever the file says.
        watch.enabled = true;
    }
    let changes = config::diff(&old, &new).map_err(|keys| needs_restart(&new, &keys))?;

    // Everything that can fail, before anything changes.
    let tls = match (&new.server.tls, &shared.tls) {
        (Some(files), Some(_)) => Some(
            crate::net::tls::load(files, &new.base_dir)
                .map_err(|error| format!("{}: {error}", new.locate(error.config_key())))?,
        ),
        _ => None,
    };
    let log = shared.options.log.as_deref().filter(|_| changes.touches("log.level"));
    if let Some(log) = log {
        log.check(&new.log.level).map_err(|error| format!("{}: {error}", new.locate("log.level")))?;
    }

    // Apply: nothing below fails.
    let limits = &new.limits;
    shared.per_ip.set_limits(limits.max_connections_per_ip, limits.handshakes_per_ip_per_s);
    shared.hub.set_limits(&new);
    shared.origins.store(new.origin_patterns().map(Arc::new));
    if let (Some(loaded), Some(current)) = (tls, &shared.tls) {
        current.store(loaded);
        tracing::info!("TLS certificate and key re-read; new handshakes use them");
    }
    if let Some(supervisor) = shared.supervisor() {
        let keep_generations = new.reload.keep_generations;
        let reconfigure =
            Reconfigure { core: CoreConfig::from_config(&new), program: new.worker_program(), keep_generations };
        supervisor.reconfigure(reconfigure);
    }
    if changes.keys.is_empty() {
        tracing::info!(config = %new.source.path.display(), "config re-read: unchanged");
    } else {
        tracing::info!(config = %new.source.path.display(), "config re-read: {} changed", changes.keys.join(", "));
    }
    // Last, so the line above is written under the filter it was decided
    // under (a new "warn" would hide it).
    if let Some(log) = log {
        log.set(&new.log.level);
    }
    shared.current.store(Arc::new(new));
    shared.reconfigured.send_modify(|count| *count += 1);
    Ok(())
}

/// The refusal: every restart-only key that changed, with its line.
fn needs_restart(new: &Config, keys: &[RestartOnly]) -> String {
    let path = new.source.path.display();
    let each: Vec<String> = keys
        .iter()
        .map(|RestartOnly { key, line }| match line {
            Some(line) => format!("{path}:{line}: `{key}` changed, which needs a restart"),
            None => format!("{path}: `{key}` changed, which needs a restart"),
        })
        .collect();
    each.join("; ")
}
