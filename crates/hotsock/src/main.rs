//! `hotsock`: start a server, and control a running one over its admin
//! socket. The only crate that uses `anyhow`: library errors become messages
//! and exit codes here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hotsock_server::{AdminError, AdminRequest, AdminResponse, Config, Server, admin_request};

/// Exit code when no server is running for the config.
const EXIT_NOT_RUNNING: u8 = 3;
/// Beyond the stop deadline the server reports: time for its process to exit.
const STOP_MARGIN: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(name = "hotsock", version, about = "A WebSocket server whose worker code can be replaced while it runs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground (logs to stderr; SIGTERM/SIGINT stop it gracefully).
    Start {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Watch the [reload.watch] paths: rebuild and reload on every change.
        #[arg(long)]
        watch: bool,
    },
    /// Stop a running server gracefully and wait until it has exited.
    Stop {
        /// The config file of the running server.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Replace the workers with a new generation of the worker executable, with no
    /// dropped connection or lost message.
    Reload {
        /// The config file of the running server.
        #[arg(short, long)]
        config: PathBuf,
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
        /// The config file of the running server.
        #[arg(short, long)]
        config: PathBuf,
        /// Wait for the outcome, print it, and exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// Show the server and its workers.
    Status {
        /// The config file of the running server.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List open client connections.
    Clients {
        /// The config file of the running server.
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and exit (non-zero with the key and line on error).
    Check {
        /// The config file.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Start { config, watch } => start(&config, watch),
        Command::Check { config } => check(&config),
        Command::Stop { config } => with_admin(&config, stop),
        Command::Reload { config, tasks, wait, canary } => {
            with_admin(&config, |c| reload(c, AdminRequest::Reload { tasks, wait, canary }))
        }
        Command::Rollback { config, wait } => with_admin(&config, |c| reload(c, AdminRequest::Rollback { wait })),
        Command::Status { config, json } => with_admin(&config, |c| status(c, json)),
        Command::Clients { config, json } => with_admin(&config, |c| clients(c, json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hotsock: {error:#}");
            if error.downcast_ref::<AdminError>().is_some_and(|e| matches!(e, AdminError::NotRunning(_))) {
                ExitCode::from(EXIT_NOT_RUNNING)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn start(path: &Path, watch: bool) -> Result<()> {
    let mut config = Config::load(path)?;
    if watch {
        match config.reload.watch.as_mut() {
            Some(section) => section.enabled = true,
            None => bail!("--watch needs a [reload.watch] section in {} (paths, build, ...)", path.display()),
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTSOCK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    runtime()?.block_on(async {
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await?;
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
    let program = config.worker_program();
    if program.components().count() > 1 && !program.exists() {
        bail!(
            "{}: `workers.command` names {}, which does not exist (build it first?)",
            path.display(),
            program.display()
        );
    }
    println!(
        "ok: {} ({} workers, dispatch {:?}, listen {}, run_dir {})",
        path.display(),
        config.workers.count,
        config.workers.dispatch,
        config.server.listen,
        config.run_dir().display()
    );
    Ok(())
}

fn with_admin(path: &Path, run: impl FnOnce(&Config) -> Result<()>) -> Result<()> {
    let config = Config::load(path)?;
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
    println!("stopped (pid {pid})");
    Ok(())
}

fn reload(config: &Config, request: AdminRequest) -> Result<()> {
    match ask(config, request)? {
        AdminResponse::ReloadQueued => {
            println!("reload requested (see `hotsock status` for the outcome)");
            Ok(())
        }
        AdminResponse::Reload(outcome) if outcome.ok => {
            println!(
                "ok: generation {} -> {} in {} ms: {}",
                outcome.from_generation, outcome.generation, outcome.duration_ms, outcome.message
            );
            Ok(())
        }
        AdminResponse::Reload(outcome) => {
            bail!("reload failed after {} ms: {}", outcome.duration_ms, outcome.message)
        }
        _ => bail!("unexpected reply to reload"),
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
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "hotsock pid {} listening on {}, up {}s{}; generation {}{}; {} connections (accepted {}, refused {})",
        status.pid,
        status.listen,
        status.uptime_s,
        if status.stopping { ", STOPPING" } else { "" },
        status.generation,
        status.reloading.as_ref().map(|r| format!(" (reloading: {r})")).unwrap_or_default(),
        status.connections,
        status.accepted_total,
        status.rejected_total
    );
    println!(
        "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8} {:>11} {:>11} {:>11} {:>7} {:>9} {:>9}  LAST EXIT",
        "SLOT",
        "ROLE",
        "PID",
        "GEN",
        "STATE",
        "INFLIGHT",
        "DISPATCHED",
        "ACKED",
        "REDELIVERED",
        "CRASHES",
        "RSS KiB",
        "HEARTBEAT"
    );
    let tasks = &status.tasks;
    if tasks.queued + tasks.completed as usize + tasks.failed as usize + tasks.refused as usize > 0
        || status.workers.iter().any(|w| w.role == "task")
    {
        println!(
            "tasks: {} queued or running, {} completed, {} failed, {} refused",
            tasks.queued, tasks.completed, tasks.failed, tasks.refused
        );
    }
    for table in &status.tables {
        println!("table {}: {} of {} rows", table.name, table.rows, table.capacity);
    }
    if let Some(watch) = &status.watch {
        println!(
            "watching {} ({}{}): {} changes, {} builds, {} failed{}",
            watch.paths.join(", "),
            watch.backend,
            watch.fallback_reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default(),
            watch.changes,
            watch.builds,
            watch.builds_failed,
            if watch.building { ", building now" } else { "" }
        );
        if let Some(build) = &watch.last_build {
            println!(
                "last build: {} ({}) in {} ms after a change to {}",
                if build.ok { "ok" } else { "FAILED" },
                build.exit,
                build.duration_ms,
                build.trigger
            );
            if !build.ok {
                for line in &build.output_tail {
                    println!("  | {line}");
                }
            }
        }
    }
    if let Some(last) = &status.last_reload {
        println!(
            "last reload: {} {} -> {} in {} ms: {}",
            if last.ok { "ok" } else { "FAILED" },
            last.from_generation,
            last.generation,
            last.duration_ms,
            last.message
        );
    }
    for w in &status.workers {
        println!(
            "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8} {:>11} {:>11} {:>11} {:>7} {:>9} {:>9}  {}{}",
            w.slot,
            w.role,
            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            w.generation,
            w.phase.name(),
            w.inflight,
            w.dispatched,
            w.acked,
            w.redelivered,
            w.crashes,
            w.rss_kib.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            w.heartbeat_age_ms.map(|ms| format!("{ms} ms")).unwrap_or_else(|| "-".into()),
            w.last_exit.as_deref().unwrap_or("-"),
            if w.crash_loop { " (CRASH LOOP)" } else { "" }
        );
        for d in &w.others {
            let phase = match d.phase {
                hotsock_server::WorkerPhase::Draining { deadline_in_ms } => {
                    format!("draining (killed in {deadline_in_ms} ms)")
                }
                phase => phase.name().to_owned(),
            };
            println!(
                "{:<5} {:<6} {:<8} {:<4} {:<9} {:>8}",
                "",
                "",
                d.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                d.generation,
                phase,
                d.inflight
            );
        }
    }
    Ok(())
}

fn clients(config: &Config, json: bool) -> Result<()> {
    let AdminResponse::Clients { clients } = ask(config, AdminRequest::Clients)? else { bail!("unexpected reply") };
    if json {
        println!("{}", serde_json::to_string_pretty(&clients)?);
        return Ok(());
    }
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64)?;
    println!("{:<8} {:<22} {:<6} {:<10} {:>8} {:>7}  PATH", "CONN", "PEER", "SLOT", "UID", "INFLIGHT", "AGE s");
    for c in &clients {
        println!(
            "{:<8} {:<22} {:<6} {:<10} {:>8} {:>7}  {}",
            c.conn,
            c.peer,
            c.slot,
            c.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            c.inflight,
            now_ms.saturating_sub(c.connected_at_unix_ms) / 1000,
            c.path
        );
    }
    println!("{} connections", clients.len());
    Ok(())
}
