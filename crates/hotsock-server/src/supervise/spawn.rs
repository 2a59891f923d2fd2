//! Starting worker processes.
//!
//! Every process is spawned by one dedicated thread (`Spawner`) that lives
//! as long as the server: the parent-death signal a worker sets is tied to
//! the thread that forked it, so that thread must not be a pool thread that
//! exits when idle. Nothing else in the server may spawn processes.
//!
//! The worker's end of its socket becomes its standard input (fd 0), which
//! the worker claims without any `unsafe`. Its stderr is piped through the
//! server: each line is forwarded to the server's stderr with the worker's
//! slot, generation and pid, and the last lines are kept so a worker that
//! fails to start can be reported with its own words.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use hotsock_protocol::{ENV_SERVER_PID, ENV_WORKER_FD};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr};
use tokio::sync::oneshot;

/// Lines of a worker's stderr kept for error reports.
const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept or forwarded; longer ones are cut.
const STDERR_LINE_MAX_BYTES: u64 = 4096;

/// What to start.
#[derive(Debug, Clone)]
pub(crate) struct SpawnSpec {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    /// `argv[0]`, which `ps` shows: role, slot and generation.
    pub(crate) title: String,
    /// A worker gets its socket as stdin; a command (a build) gets none and
    /// has its stdout piped as well.
    pub(crate) worker: bool,
    /// Working directory (default: the server's).
    pub(crate) cwd: Option<PathBuf>,
    /// Extra environment variables.
    pub(crate) env: Vec<(&'static str, String)>,
}

/// The last lines a child wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == STDERR_TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, oldest first.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    /// The last `n` kept lines joined with ` | `, or empty.
    pub(crate) fn joined_last(&self, n: usize) -> String {
        let lines = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let skip = lines.len().saturating_sub(n);
        lines.iter().skip(skip).map(String::as_str).collect::<Vec<_>>().join(" | ")
    }
}

/// A started process and the server's end of its socket.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: Child,
    /// The server's end of a worker's socket.
    pub(crate) socket: Option<StdUnixStream>,
    pub(crate) stdout: Option<tokio::process::ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
}

type SpawnResult = io::Result<Spawned>;

struct SpawnJob {
    spec: SpawnSpec,
    reply: oneshot::Sender<SpawnResult>,
}

/// The one thread that forks (see the module docs).
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: std::sync::mpsc::Sender<SpawnJob>,
}

impl Spawner {
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new().name("hotsock-spawner".into()).spawn(move || {
            // tokio's Child needs the runtime's process driver.
            let _runtime = runtime.enter();
            while let Ok(job) = rx.recv() {
                let _ = job.reply.send(spawn_one(&job.spec));
            }
        })?;
        Ok(Spawner { jobs })
    }

    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> SpawnResult {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(SpawnJob { spec, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn_one(spec: &SpawnSpec) -> SpawnResult {
    let mut command = tokio::process::Command::new(&spec.program);
    let mut ours = None;
    if spec.worker {
        let (server_end, worker_end) = StdUnixStream::pair()?;
        ours = Some(server_end);
        command
            .arg0(&spec.title)
            .env(ENV_WORKER_FD, "0")
            .env(ENV_SERVER_PID, std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(worker_end)));
    } else {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
    }
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    // Socket activation is the server's, not its children's: they must not
    // read LISTEN_* as theirs (the adopted socket itself is close-on-exec).
    for key in hotsock_table::activation::ENV_VARS {
        command.env_remove(key);
    }
    // Nor is a binary upgrade's handover socket.
    command.env_remove(crate::upgrade::wire::ENV_UPGRADE_FD);
    command
        .envs(spec.env.iter().map(|(key, value)| (key, value)))
        .args(&spec.args)
        .stderr(Stdio::piped())
        // Own process group: a Ctrl-C in the terminal reaches the server,
        // which stops workers gracefully, instead of killing them mid-event.
        .process_group(0)
        .kill_on_drop(true);
    // The Command holds our copy of the worker's end; dropping it after the
    // spawn leaves the worker as its only owner, so its exit means EOF.
    let child = command.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())));
    drop(command);
    let mut child = child?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    Ok(Spawned { child, socket: ours, stdout, stderr })
}

/// Forwards a child's output to the server's log, line by line with a prefix,
/// keeping the tail. Ends at the child's EOF.
pub(crate) async fn forward_stderr(stderr: impl tokio::io::AsyncRead + Unpin, prefix: String, tail: StderrTail) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(STDERR_LINE_MAX_BYTES).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                // Through the log, so a worker's words land where the
                // server's go (a file, JSON) and carry a time.
                tracing::info!(target: "hotsock::output", "{prefix} {text}");
                tail.push(text);
            }
        }
    }
}
