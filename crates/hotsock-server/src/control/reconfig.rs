//! What a reload re-reads before any worker is replaced: the TLS
//! certificate and key. `hotsock reload` and SIGUSR1/SIGUSR2 call
//! [`prepare`] first; when it fails, the reload is not performed at all and
//! the server keeps serving exactly as before (the old certificate too).
//!
//! It must never leave half of a change applied: everything is loaded and
//! checked first, and only then swapped in.

use crate::shared::Shared;

/// Re-reads `[server.tls]`'s files and swaps them in for new handshakes
/// (open connections keep the session they have). The error names the
/// config line, the key and the file.
pub(crate) fn prepare(shared: &Shared) -> Result<(), String> {
    let config = &shared.config;
    if let (Some(files), Some(current)) = (&config.server.tls, &shared.tls) {
        let loaded = crate::net::tls::load(files, &config.base_dir)
            .map_err(|error| format!("{}: {error}", config.locate(error.config_key())))?;
        current.store(loaded);
        tracing::info!(cert = %config.base_dir.join(&files.cert).display(), "TLS certificate re-read for new handshakes");
    }
    Ok(())
}
