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
//! about a millisecond of CPU, and on a small machine the serving
//! generation's threads woken meanwhile waited behind it (measured: the
//! slowest messages of a reload were those). A woken normal thread
//! preempts an idle one (on a kernel without preemption, once it leaves
//! kernel code). The policy is inherited, so this thread takes it just for
//! the spawn and the child is born with it; the worker task gives the
//! normal policy back at Ready, or `start_idle_ms` after the spawn began,
//! whichever comes first. A spawn still under way then (on a machine whose
//! CPUs are all busy, the idle spawner and child get almost no CPU: 6 busy
//! loops on 2 cores made a 4-worker reload take 3-5 s) is ended by
//! [`Spawner::end_idle_spawn`].
//!
//! The price: inside `Command::spawn` this thread, idle, also takes locks
//! the runtime shares (tokio registers the child's pipes with its I/O
//! driver). Preempted while holding one, it stalls the threads that wait
//! for it until a CPU is free, at worst until the bound ends the idle
//! spawn; hence the bound's low ceiling (`START_IDLE_MS_MAX`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hotsock_protocol::{ENV_SERVER_PID, ENV_WORKER_FD};
use hotsock_table::sched::{self, IdleStartError, Policy};
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
    /// Numbers jobs for [`Spawner::end_idle_spawn`] (from 1).
    id: u64,
    spec: SpawnSpec,
    reply: oneshot::Sender<SpawnResult>,
}

/// The one thread that forks (see the module docs).
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: std::sync::mpsc::Sender<SpawnJob>,
    idle_start: Result<(), IdleStartError>,
    /// The spawner thread's id, for [`Spawner::end_idle_spawn`].
    tid: u32,
    /// The job the spawner thread is spawning at the idle policy, 0: none.
    spawning_idle: Arc<AtomicU64>,
    last_job: AtomicU64,
}

impl Spawner {
    pub(crate) fn start(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let (probed, probe) = std::sync::mpsc::channel();
        let spawning_idle = Arc::new(AtomicU64::new(0));
        let spawning = spawning_idle.clone();
        std::thread::Builder::new().name("hotsock-spawner".into()).spawn(move || {
            // tokio's Child needs the runtime's process driver.
            let _runtime = runtime.enter();
            // Probed from this thread: its children inherit its policy
            // and nice value.
            let idle_start = sched::idle_start_available();
            let _ = probed.send((idle_start.clone(), nix::unistd::gettid().as_raw() as u32));
            while let Ok(job) = rx.recv() {
                let idle = idle_start.is_ok() && job.spec.idle_until.is_some_and(|until| Instant::now() < until);
                let _ = job.reply.send(spawn_one(&job.spec, idle.then_some((&*spawning, job.id))));
            }
        })?;
        let (idle_start, tid) = probe.recv().map_err(|_| io::Error::other("the spawner thread ended at start"))?;
        if let Err(why) = &idle_start {
            tracing::info!("workers start at the normal scheduling policy: {why}");
        }
        Ok(Spawner { jobs, idle_start, tid, spawning_idle, last_job: AtomicU64::new(0) })
    }

    /// Ends job `id`'s idle spawn if it is still under way: on a machine
    /// whose CPUs are all busy, the spawner thread at the idle policy and
    /// the child born with it (which must exec before the spawn returns)
    /// get almost no CPU. Gives the normal policy back to the spawner
    /// thread and to those of its children that run the idle policy (the
    /// one being spawned; others in their own idle start only start
    /// sooner).
    fn end_idle_spawn(&self, id: u64) {
        if self.spawning_idle.load(Ordering::SeqCst) != id {
            return;
        }
        let tid = self.tid;
        if let Err(error) = sched::set_thread_policy(tid as i32, Policy::Normal) {
            tracing::warn!("the spawner thread keeps the idle scheduling policy: {error}");
        }
        let children = format!("/proc/{}/task/{tid}/children", std::process::id());
        for pid in std::fs::read_to_string(children).unwrap_or_default().split_whitespace() {
            let Ok(pid) = pid.parse::<u32>() else { continue };
            // Only our idle children: a pid reused since the read would
            // not be idle (nor ours to touch).
            if sched::thread_policy(pid, pid).is_ok_and(|p| p == Some(Policy::Idle))
                && let Err(error) = sched::set_process_policy(pid, Policy::Normal)
            {
                tracing::debug!(pid, "cannot end an idle spawn: {error}");
            }
        }
    }

    /// Whether workers can start at the idle policy, or why not.
    pub(crate) fn idle_start(&self) -> &Result<(), IdleStartError> {
        &self.idle_start
    }

    /// Spawns `spec`; an idle spawn still under way at `spec.idle_until`
    /// is ended then ([`Spawner::end_idle_spawn`]).
    pub(crate) async fn spawn(&self, spec: SpawnSpec) -> SpawnResult {
        let id = self.last_job.fetch_add(1, Ordering::Relaxed) + 1;
        let idle_until = spec.idle_until.filter(|_| self.idle_start.is_ok());
        let (reply, mut rx) = oneshot::channel();
        self.jobs.send(SpawnJob { id, spec, reply }).map_err(|_| io::Error::other("spawner thread is gone"))?;
        let result = match idle_until {
            Some(until) => tokio::select! {
                result = &mut rx => result,
                () = tokio::time::sleep_until(until.into()) => {
                    self.end_idle_spawn(id);
                    rx.await
                }
            },
            None => rx.await,
        };
        result.map_err(|_| io::Error::other("spawner thread is gone"))?
    }
}

/// Spawns `spec`; with `idle` (the spawner's job marker and this job's
/// id), at the idle policy.
fn spawn_one(spec: &SpawnSpec, idle: Option<(&AtomicU64, u64)>) -> SpawnResult {
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
    let mut started_idle = false;
    if let Some((spawning, id)) = idle {
        // Marked before going idle, checked again after: a bound that
        // passed in between found nothing to end, so it is ended here.
        spawning.store(id, Ordering::SeqCst);
        started_idle = sched::set_thread_policy(0, Policy::Idle).is_ok();
        if started_idle && spec.idle_until.is_some_and(|until| Instant::now() >= until) {
            started_idle = false;
            normal_again();
        }
    }
    let child = command.spawn().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", spec.program.display())));
    if started_idle {
        normal_again();
    }
    if let Some((spawning, _)) = idle {
        spawning.store(0, Ordering::SeqCst);
    }
    drop(command);
    let mut child = child?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    Ok(Spawned { child, socket: ours, stdout, stderr, started_idle })
}

/// Gives the spawner thread the normal policy back after an idle spawn.
fn normal_again() {
    if let Err(error) = sched::set_thread_policy(0, Policy::Normal) {
        // The probe at start said this works; if it stops working, only
        // spawning gets slower (this thread does nothing else).
        tracing::error!("the spawner thread cannot go back to the normal scheduling policy: {error}");
    }
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
