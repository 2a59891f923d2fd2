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
//!
//! A worker starts at the idle scheduling policy (`workers.start_idle_ms`)
//! when the server may give it the normal one back: starting a process
//! (exec, the dynamic loader, the C library's CPU probing, the runtime) is
//! about a millisecond of CPU that the kernel runs without a break, and on
//! a small machine the serving generation's threads woken meanwhile wait
//! behind it (measured: the slowest messages of a reload were those).
//! At the idle policy any normal thread that wakes preempts it. The policy
//! is inherited, so this thread takes it just for the spawn and the child
//! is born with it; the worker task gives the normal policy back at Ready,
//! or `start_idle_ms` after the spawn began, whichever comes first. A
//! spawn still under way then (on a machine whose CPUs are all busy, the
//! idle spawner and child get almost no CPU: 6 busy loops on 2 cores made
//! a 4-worker reload take 3-5 s) is ended by [`Spawner::end_idle_spawn`].

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use hotsock_protocol::{ENV_SERVER_PID, ENV_WORKER_FD};
use hotsock_table::sched::{self, Policy};
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
    /// Start the process at the idle scheduling policy, if the server may
    /// give it the normal one back, unless this moment has passed (see the
    /// module docs).
    pub(crate) idle_until: Option<std::time::Instant>,
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
    /// It runs the idle policy until the caller gives the normal one back.
    pub(crate) started_idle: bool,
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
    idle_start: Result<(), String>,
    /// The spawner thread's id, for [`Spawner::end_idle_spawn`].
    tid: u32,
}

impl Spawner {
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let (probed, probe) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("hotsock-spawner".into()).spawn(move || {
            // tokio's Child needs the runtime's process driver.
            let _runtime = runtime.enter();
            // Probed from this thread: its children inherit its policy
            // and nice value.
            let idle_start = sched::idle_start_available();
            let _ = probed.send((idle_start.clone(), nix::unistd::gettid().as_raw() as u32));
            while let Ok(job) = rx.recv() {
                let start_idle =
                    idle_start.is_ok() && job.spec.idle_until.is_some_and(|until| std::time::Instant::now() < until);
                let _ = job.reply.send(spawn_one(&job.spec, start_idle));
            }
        })?;
        let (idle_start, tid) = probe.recv().map_err(|_| io::Error::other("the spawner thread ended at start"))?;
        if let Err(why) = &idle_start {
            tracing::info!("workers start at the normal scheduling policy: {why}");
        }
        Ok(Spawner { jobs, idle_start, tid })
    }

    /// Ends an idle spawn that outlasted its bound: on a machine whose
    /// CPUs are busy, the spawner thread at the idle policy and the child
    /// born with it (which must exec before the spawn returns) get almost
    /// no CPU. Gives the normal policy back to the spawner thread and to
    /// every process it forked (the others already have it, or are in
    /// their own idle start, which this only shortens).
    pub(crate) fn end_idle_spawn(&self) {
        let tid = self.tid;
        if let Err(error) = sched::set_thread_policy(tid as i32, Policy::Normal) {
            tracing::warn!("the spawner thread keeps the idle scheduling policy: {error}");
        }
        let children = format!("/proc/{}/task/{tid}/children", std::process::id());
        for pid in std::fs::read_to_string(children).unwrap_or_default().split_whitespace() {
            if let Ok(pid) = pid.parse::<u32>() {
                let _ = sched::set_process_policy(pid, Policy::Normal);
            }
        }
    }

    /// Whether workers can start at the idle policy, or why not.
    pub(crate) fn idle_start(&self) -> &Result<(), String> {
        &self.idle_start
    }

    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> SpawnResult {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(SpawnJob { spec, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

fn spawn_one(spec: &SpawnSpec, start_idle: bool) -> SpawnResult {
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
    let started_idle = start_idle && sched::set_thread_policy(0, Policy::Idle).is_ok();
    let child = command.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())));
    if started_idle && let Err(error) = sched::set_thread_policy(0, Policy::Normal) {
        // The probe at start said this works; if it stops working, only
        // spawning gets slower (this thread does nothing else).
        tracing::error!("the spawner thread cannot go back to the normal scheduling policy: {error}");
    }
    drop(command);
    let mut child = child?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    Ok(Spawned { child, socket: ours, stdout, stderr, started_idle })
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
