//! The admin socket: `hotsock status`, `clients` and `stop` talk to a running
//! server through a Unix socket in `run_dir`, one JSON object per line each
//! way. The socket is mode 0600 inside a 0700 directory: only the user who
//! runs the server may control it.
//!
//! The request and response types are serialized, so they are an IPC
//! boundary: add variants and fields, do not rename them.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::error::{ServerError, io_error};
use crate::shared::Shared;
use crate::supervise::handle::ReloadRequest;
use crate::wire::{ADMIN_VERSION, AdminReply, AdminRequest, AdminResponse, ReloadKind};

/// File name of the admin socket inside `run_dir`.
pub const ADMIN_SOCKET: &str = "hotsock.sock";
/// File name of the pid file inside `run_dir`.
pub const PID_FILE: &str = "hotsock.pid";
/// Longest request line the server reads; requests are tiny.
const REQUEST_MAX_BYTES: u64 = 4096;
/// Longest reply a client reads (a `clients` list of many connections).
const REPLY_MAX_BYTES: u64 = 64 << 20;

/// Failures of an admin client.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Nothing listens on the admin socket.
    #[error("no hotsock server is running for this config (nothing answers on {0})")]
    NotRunning(PathBuf),
    /// Talking to the server failed.
    #[error("admin socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The server's reply did not parse.
    #[error("unexpected reply from the server: {0}")]
    BadReply(String),
    /// The server speaks another admin protocol version (a `hotsock` CLI
    /// from another release than the running server).
    #[error(
        "the running server speaks admin protocol version {server}, this hotsock speaks {client}; use the hotsock binary that started the server"
    )]
    Version {
        /// The server's version.
        server: u32,
        /// Ours.
        client: u32,
    },
}

/// Sends one request to the server owning `run_dir` and reads its reply.
pub async fn request(run_dir: &Path, request: &AdminRequest) -> Result<AdminResponse, AdminError> {
    let path = run_dir.join(ADMIN_SOCKET);
    let io = |source| AdminError::Io { path: path.clone(), source };
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Err(AdminError::NotRunning(path));
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = serde_json::to_vec(request).map_err(|e| AdminError::BadReply(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).take(REPLY_MAX_BYTES).read_line(&mut reply).await.map_err(io)?;
    // The version first, so a reply of another shape is reported as what
    // it is rather than as a parse error.
    let version = serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|value| value.get("version").and_then(serde_json::Value::as_u64));
    match version {
        Some(server) if server != u64::from(ADMIN_VERSION) => {
            return Err(AdminError::Version { server: server as u32, client: ADMIN_VERSION });
        }
        None if !reply.trim().is_empty() => {
            return Err(AdminError::Version { server: 1, client: ADMIN_VERSION });
        }
        _ => {}
    }
    let reply: AdminReply =
        serde_json::from_str(&reply).map_err(|e| AdminError::BadReply(format!("{e}: {reply:.200}")))?;
    Ok(reply.response)
}

/// Hands a reload request to the supervisor; with `wait`, answers with its
/// outcome.
async fn reload(shared: &Shared, kind: ReloadKind, canary: Option<usize>, wait: bool) -> AdminResponse {
    let Some(supervisor) = shared.supervisor() else {
        return AdminResponse::Error { message: "the server is still starting".into() };
    };
    if shared.is_stopping() {
        return AdminResponse::Error { message: "the server is stopping".into() };
    }
    if shared.upgrading.load(std::sync::atomic::Ordering::Acquire) {
        return AdminResponse::Error { message: "a binary upgrade is under way; reload after it".into() };
    }
    if kind != ReloadKind::Rollback
        && let Err(error) = crate::control::reconfig::prepare(shared)
    {
        tracing::error!("reload refused, nothing changed: {error}");
        return AdminResponse::Error { message: format!("reload refused, nothing changed: {error}") };
    }
    if !wait {
        supervisor.reload(ReloadRequest { kind, canary, reply: None, reason: None });
        return AdminResponse::ReloadQueued;
    }
    let (reply, outcome) = tokio::sync::oneshot::channel();
    supervisor.reload(ReloadRequest { kind, canary, reply: Some(reply), reason: None });
    match outcome.await {
        Ok(outcome) => AdminResponse::Reload(outcome),
        Err(_) => AdminResponse::Error { message: "the server stopped before the reload finished".into() },
    }
}

/// The admin socket and pid file; removed when dropped.
#[derive(Debug)]
pub(crate) struct RunFiles {
    dir: PathBuf,
    owns_socket: bool,
    /// A takeover's admin socket, until `commit`.
    staged: Option<PathBuf>,
}

impl RunFiles {
    pub(crate) fn create(dir: &Path) -> Result<RunFiles, ServerError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(format!("cannot create run_dir {}", dir.display())))?;
        let socket = dir.join(ADMIN_SOCKET);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Err(ServerError::AlreadyRunning(socket));
        }
        // Nothing answers: a socket left by a server that was killed.
        let _ = std::fs::remove_file(&socket);
        Ok(RunFiles { dir: dir.to_owned(), owns_socket: false, staged: None })
    }

    /// For a server taking over from a running one (`hotsock upgrade`):
    /// the admin socket is bound under a temporary name, and takes the
    /// real one (and the pid file) only at `commit`, so until then the old
    /// server answers `hotsock status`.
    pub(crate) fn for_upgrade(dir: &Path) -> Result<RunFiles, ServerError> {
        let staged = dir.join(format!("{ADMIN_SOCKET}.upgrade-{}", std::process::id()));
        let _ = std::fs::remove_file(&staged);
        Ok(RunFiles { dir: dir.to_owned(), owns_socket: false, staged: Some(staged) })
    }

    /// The takeover is done: the admin socket and pid file are ours.
    pub(crate) fn commit(&mut self) -> Result<(), ServerError> {
        let Some(staged) = self.staged.take() else { return Ok(()) };
        let socket = self.dir.join(ADMIN_SOCKET);
        std::fs::rename(&staged, &socket)
            .map_err(io_error(format!("cannot move the admin socket into place at {}", socket.display())))?;
        self.owns_socket = true;
        self.write_pid()
    }

    /// A new server took over: the socket and pid file are its now.
    pub(crate) fn disown(&mut self) {
        self.owns_socket = false;
    }

    fn write_pid(&self) -> Result<(), ServerError> {
        let pid_file = self.dir.join(PID_FILE);
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .map_err(io_error(format!("cannot write {}", pid_file.display())))
    }

    pub(crate) fn bind_admin(&mut self) -> Result<UnixListener, ServerError> {
        let socket = self.staged.clone().unwrap_or_else(|| self.dir.join(ADMIN_SOCKET));
        let listener =
            UnixListener::bind(&socket).map_err(io_error(format!("cannot bind admin socket {}", socket.display())))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(format!("cannot chmod {}", socket.display())))?;
        if self.staged.is_none() {
            self.owns_socket = true;
            self.write_pid()?;
        }
        Ok(listener)
    }
}

impl Drop for RunFiles {
    fn drop(&mut self) {
        if let Some(staged) = &self.staged {
            let _ = std::fs::remove_file(staged);
        }
        if self.owns_socket {
            let _ = std::fs::remove_file(self.dir.join(ADMIN_SOCKET));
            let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        }
    }
}

/// Answers admin requests until the server stops.
pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).take(REQUEST_MAX_BYTES).read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<AdminRequest>(&line) {
                Ok(AdminRequest::Status) => {
                    AdminResponse::Status(Box::new(crate::control::status::server_status(&shared)))
                }
                Ok(AdminRequest::Clients) => AdminResponse::Clients { clients: shared.hub.clients() },
                Ok(AdminRequest::Stop) => {
                    shared.request_stop();
                    AdminResponse::Stopping {
                        pid: std::process::id(),
                        deadline_ms: shared.config().stop_budget().total().as_millis() as u64,
                    }
                }
                Ok(AdminRequest::Reload { tasks, wait, canary }) => {
                    let kind = if tasks { ReloadKind::Tasks } else { ReloadKind::Workers };
                    reload(&shared, kind, canary, wait).await
                }
                Ok(AdminRequest::Rollback { wait }) => reload(&shared, ReloadKind::Rollback, None, wait).await,
                Ok(AdminRequest::Upgrade { binary, wait }) => {
                    let (response, done) = upgrade(&shared, binary, wait).await;
                    if done {
                        // The new server holds everything: answer, then go.
                        send_reply(&mut write, response).await;
                        shared.request_stop();
                        return;
                    }
                    response
                }
                Err(e) => AdminResponse::Error { message: format!("bad request: {e}") },
            };
            send_reply(&mut write, response).await;
        });
    }
}

async fn send_reply(write: &mut tokio::net::unix::OwnedWriteHalf, response: AdminResponse) {
    if let Ok(mut bytes) = serde_json::to_vec(&AdminReply { version: ADMIN_VERSION, response }) {
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
    }
}

/// `hotsock upgrade`: with `wait`, the outcome and whether this server
/// must now exit; without, it runs on its own (and stops this server once
/// done).
async fn upgrade(shared: &Arc<Shared>, binary: Option<PathBuf>, wait: bool) -> (AdminResponse, bool) {
    if let Some(why) = crate::upgrade::refusal(shared) {
        return (AdminResponse::Error { message: format!("upgrade refused: {why}") }, false);
    }
    if !wait {
        crate::upgrade::spawn(shared.clone(), binary);
        return (AdminResponse::UpgradeStarted, false);
    }
    match crate::upgrade::upgrade(shared, binary).await {
        Ok(status) => (AdminResponse::Upgrade(status), true),
        Err(status) => (AdminResponse::Upgrade(status), false),
    }
}
