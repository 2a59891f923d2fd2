//! Why the server could not start: the one error type `Server` returns.

use std::path::PathBuf;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding a socket or creating a runtime file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another server is using the same run directory.
    #[error("a hotsock server is already running with this run_dir (admin socket {0} answers); stop it first")]
    AlreadyRunning(PathBuf),
    /// A shared table could not be created.
    #[error("{0}")]
    Table(String),
    /// `[server.tls]` did not load; `at` is the config file and line.
    #[error("{at}: {source}")]
    Tls {
        /// `file:line` of the key in the config.
        at: String,
        /// What is wrong.
        source: crate::net::tls::TlsError,
    },
    /// The socket passed by systemd (`LISTEN_FDS`) cannot be used.
    #[error("socket activation: {0}")]
    Activation(#[from] hotsock_table::activation::ActivationError),
    /// `[cluster]`: Redis cannot be reached at start, or the node id is
    /// taken; the message names the config line.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Taking over from a running server (`hotsock upgrade`) failed.
    #[error("upgrade: {0}")]
    Upgrade(String),
    /// Workers did not all become ready in time at start.
    #[error("workers did not become ready: {0}")]
    WorkersNotReady(String),
}

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}
