//! `hotsock`: start a server, control a running one over its admin socket,
//! and create a worker crate of one's own (`hotsock new`). The only crate
//! that uses `anyhow`: library errors become messages and exit codes here.

mod log;
mod new;
mod out;
mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use hotsock_server::{AdminError, AdminRequest, AdminResponse, Config, Options, Server, UpgradePhase, admin_request};
use out::say;

/// The config file every command uses when `-c` is not given, looked up in
/// the current directory (the layout `hotsock new` creates).
const DEFAULT_CONFIG: &str = "hotsock.toml";

/// Exit code when no server is running for the config.
const EXIT_NOT_RUNNING: u8 = 3;
/// Beyond the stop deadline the server reports: time for its process to exit.
const STOP_MARGIN: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(name = "hotsock", version = hotsock_server::version(), about = "A WebSocket server whose worker code can be replaced while it runs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `-c FILE`, shared by every command that reads a config.
#[derive(Args)]
struct ConfigArg {
    /// The config file [default: ./hotsock.toml, if present].
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file given, or `./hotsock.toml` when that exists.
    fn path(self) -> Result<PathBuf> {
        if let Some(path) = self.config {
            return Ok(path);
        }
        let default = PathBuf::from(DEFAULT_CONFIG);
        if default.is_file() {
            return Ok(default);
        }
        bail!("no config file: pass -c FILE, or run this where {DEFAULT_CONFIG} is (./{DEFAULT_CONFIG} does not exist)")
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground (logs to stderr; SIGTERM/SIGINT stop it gracefully).
    Start {
        #[command(flatten)]
        config: ConfigArg,
        /// Watch the [reload.watch] paths: rebuild and reload on every change.
        #[arg(long)]
        watch: bool,
    },
    /// Stop a running server gracefully and wait until it has exited.
    Stop {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Replace the workers with a new generation of the worker executable, with no
    /// dropped connection or lost message.
    Reload {
        #[command(flatten)]
        config: ConfigArg,
        /// Reload only the task workers.
        #[arg(long)]
        tasks: bool,
        /// Wait for the outcome, print it, and exit non-zero if the reload failed.
        #[arg(long)]
        wait: bool,
        /// Switch K slots first, watch them for reload.canary_ms, then the rest
        /// (or roll the K back on a crash or handler panic).
        #[arg(long, value_name = "K")]
        canary: Option<usize>,
    },
    /// Switch back to the generation served before the last switch.
    Rollback {
        #[command(flatten)]
        config: ConfigArg,
        /// Wait for the outcome, print it, and exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Replace the running server process by a new hotsock binary, moving every
    /// connection, uid, channel and table to it (SIGURG does the same). The new
    /// binary must start the serving generation's workers first; if anything
    /// fails, the running server keeps serving as before.
    Upgrade {
        #[command(flatten)]
        config: ConfigArg,
        /// The new executable [default: the path the running server was started from].
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Wait for the outcome, print it, and exit non-zero if the upgrade failed.
        #[arg(long)]
        wait: bool,
    },
    /// Show the server and its workers.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List open client connections.
    Clients {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show request query strings in full (by default values are shown
        /// as `…`: they often carry credentials such as `token=`).
        #[arg(long)]
        show_query: bool,
    },
    /// Validate a config file and exit (non-zero with the key and line on error).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Create a directory NAME with a worker crate of your own: Cargo.toml,
    /// src/main.rs, hotsock.toml (release) and hotsock.dev.toml (watch and rebuild).
    New(new::NewArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hotsock: {}", out::error_line(&error));
            if error.downcast_ref::<AdminError>().is_some_and(|e| matches!(e, AdminError::NotRunning(_))) {
                ExitCode::from(EXIT_NOT_RUNNING)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Start { config, watch } => {
            let started = config.path().and_then(|path| start(&path, watch));
            if let Err(error) = &started {
                // Started by `hotsock upgrade`: the running server prints why.
                hotsock_server::report_upgrade_failure(&out::error_line(error));
            }
            started
        }
        Command::Check { config } => check(&config.path()?),
        Command::Stop { config } => with_admin(config, stop),
        Command::Reload { config, tasks, wait, canary } => {
            with_admin(config, |c| reload(c, AdminRequest::Reload { tasks, wait, canary }))
        }
        Command::Rollback { config, wait } => with_admin(config, |c| reload(c, AdminRequest::Rollback { wait })),
        Command::Upgrade { config, binary, wait } => with_admin(config, |c| upgrade(c, binary, wait)),
        Command::Status { config, json } => with_admin(config, |c| status(c, json)),
        Command::Clients { config, json, show_query } => with_admin(config, |c| clients(c, json, show_query)),
        Command::New(args) => new::run(args),
    }
}

/// The CLI's runtime for admin requests: tokio's default threads.
fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_with(0)
}

/// A runtime with `threads` threads (0: tokio's default, one per core,
/// which `TOKIO_WORKER_THREADS` still overrides); the server's has
/// `server.threads`.
fn runtime_with(threads: usize) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if threads > 0 {
        builder.worker_threads(threads);
    }
    builder.enable_all().build().context("cannot start the async runtime")
}

fn start(path: &Path, watch: bool) -> Result<()> {
    let mut config = Config::load(path)?;
    if watch {
        match config.reload.watch.as_mut() {
            Some(section) => section.enabled = true,
            None => bail!("--watch needs a [reload.watch] section in {} (paths, build, ...)", path.display()),
        }
    }
    let (log_file, log_level) = log::init(&config)?;
    runtime_with(config.server.threads)?.block_on(async {
        // Installed before anything can send SIGHUP's default (terminate).
        let hangups = tokio::spawn(log::reopen_on_sighup(log_file));
        let options = Options { watch, log: Some(Box::new(log_level)) };
        let server = Server::bind_with(config, options).await?;
        server.run(shutdown_signal()).await?;
        hangups.abort();
        Ok(())
    })
}

/// Resolves on SIGTERM or SIGINT: both mean a graceful stop.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn check(path: &Path) -> Result<()> {
    let config = Config::load(path)?;
    Server::check(&config)?;
    let program = config.worker_program();
    if program.components().count() > 1 && !program.exists() {
        bail!(
            "{}: `workers.command` names {}, which does not exist (build it first?)",
            path.display(),
            program.display()
        );
    }
    say!(
        "ok: {} ({} workers, dispatch {:?}, listen {}, run_dir {})",
        path.display(),
        config.workers.count,
        config.workers.dispatch,
        config.server.listen,
        config.run_dir().display()
    );
    Ok(())
}

fn with_admin(config: ConfigArg, run: impl FnOnce(&Config) -> Result<()>) -> Result<()> {
    let config = Config::load(&config.path()?)?;
    run(&config)
}

fn ask(config: &Config, request: AdminRequest) -> Result<AdminResponse> {
    let run_dir = config.run_dir();
    let response = runtime()?.block_on(admin_request(&run_dir, &request))?;
    if let AdminResponse::Error { message } = &response {
        bail!("server refused the request: {message}");
    }
    Ok(response)
}

fn stop(config: &Config) -> Result<()> {
    let AdminResponse::Stopping { pid, deadline_ms } = ask(config, AdminRequest::Stop)? else {
        bail!("unexpected reply to stop")
    };
    // The server says how long its stop may take (clients, acks, drains);
    // wait that long, plus a margin for the process to be gone.
    let budget = Duration::from_millis(deadline_ms) + STOP_MARGIN;
    let deadline = Instant::now() + budget;
    while alive(pid) {
        if Instant::now() > deadline {
            bail!("server pid {pid} is still running after {budget:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    say!("stopped (pid {pid})");
    Ok(())
}

fn reload(config: &Config, request: AdminRequest) -> Result<()> {
    match ask(config, request)? {
        AdminResponse::ReloadQueued => {
            say!("reload requested (see `hotsock status` for the outcome)");
            Ok(())
        }
        AdminResponse::Reload(outcome) if outcome.ok => {
            say!(
                "ok: generation {} -> {} in {} ms: {}",
                outcome.from_generation,
                outcome.generation,
                outcome.duration_ms,
                outcome.message
            );
            Ok(())
        }
        AdminResponse::Reload(outcome) => {
            bail!("reload failed after {} ms: {}", outcome.duration_ms, outcome.message)
        }
        _ => bail!("unexpected reply to reload"),
    }
}

fn upgrade(config: &Config, binary: Option<PathBuf>, wait: bool) -> Result<()> {
    // The server runs elsewhere (another directory): it gets the full path.
    let binary = match binary {
        Some(path) => {
            Some(std::fs::canonicalize(&path).with_context(|| format!("--binary {}: cannot find it", path.display()))?)
        }
        None => None,
    };
    match ask(config, AdminRequest::Upgrade { binary, wait })? {
        AdminResponse::UpgradeStarted => {
            say!("upgrade started (see `hotsock status` for the outcome)");
            Ok(())
        }
        AdminResponse::Upgrade(status) if status.phase == UpgradePhase::Done => {
            say!(
                "ok: {} (pid {}) -> {} (pid {}) in {} ms: {} connections moved, paused {} ms",
                status.from_version,
                status.from_pid,
                status.to_version.as_deref().unwrap_or("?"),
                status.to_pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
                status.duration_ms,
                status.connections,
                status.pause_ms
            );
            Ok(())
        }
        AdminResponse::Upgrade(status) => bail!(
            "upgrade failed after {} ms, the running server serves on: {}",
            status.duration_ms,
            status.detail.as_deref().unwrap_or("no reason given")
        ),
        _ => bail!("unexpected reply to upgrade"),
    }
}

/// Whether a process exists and has not exited. A zombie has exited: its
/// parent (a shell or supervisor) has just not collected it yet.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with(['Z', 'X']),
        Err(_) => false,
    }
}

fn status(config: &Config, json: bool) -> Result<()> {
    let AdminResponse::Status(status) = ask(config, AdminRequest::Status)? else { bail!("unexpected reply") };
    if json {
        say!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    for line in view::status(&status) {
        say!("{line}");
    }
    Ok(())
}

fn clients(config: &Config, json: bool, show_query: bool) -> Result<()> {
    let AdminResponse::Clients { mut clients } = ask(config, AdminRequest::Clients)? else { bail!("unexpected reply") };
    if !show_query {
        for client in &mut clients {
            client.path = view::redact_query(&client.path);
        }
    }
    if json {
        say!("{}", serde_json::to_string_pretty(&clients)?);
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64)?;
    for line in view::clients(&clients, now_ms) {
        say!("{line}");
    }
    Ok(())
}
