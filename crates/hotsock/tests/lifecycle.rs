//! The CLI and the process lifecycle: stop, SIGTERM, check, status,
//! clients, process titles, the admin socket, parent death.

use std::process::{Command, Stdio};

use hotsock_table::sched::{self, Policy};
use hotsock_testkit::{TempDir, TestServer, alive, bin, close_code, connect, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

fn echo_config() -> String {
    format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("echo").display())
}

fn worker_pids(server: &TestServer) -> Vec<u32> {
    (0..2).map(|slot| server.worker_pid(slot)).collect()
}

async fn stop_is_graceful(use_signal: bool) {
    let mut server = TestServer::start(&echo_config());
    let pids = worker_pids(&server);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = connect(&server.url("/")).await;
        send(&mut client, "hi").await;
        assert_eq!(recv(&mut client).await, "v1:hi");
        clients.push(client);
    }
    // Read concurrently so the clients answer the server's close frames.
    let readers: Vec<_> =
        clients.into_iter().map(|mut c| tokio::spawn(async move { close_code(&mut c).await })).collect();
    if use_signal {
        let pid = server.child.as_ref().expect("child").id();
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    } else {
        let output = server.cli(&["stop"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("stopped"));
    }
    assert_eq!(server.wait_exit(), Some(0));
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), Some(1001));
    }
    for pid in pids {
        assert!(!alive(pid), "worker {pid} outlived the server");
    }
    let run_dir = server.dir.path().join("run");
    assert!(!run_dir.join("hotsock.sock").exists() && !run_dir.join("hotsock.pid").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn hotsock_stop_closes_clients_with_1001_and_leaves_no_worker() {
    stop_is_graceful(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_clients_with_1001_and_leaves_no_worker() {
    stop_is_graceful(true).await;
}

#[test]
fn check_names_a_typod_key_and_its_line() {
    let dir = TempDir::new("check");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:9501\"\nrun_dri = \"run\"\n[workers]\ncommand = [\"x\"]\n")
        .expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&config).output().expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("run_dri") && stderr.contains("line 3"), "{stderr}");

    std::fs::write(&config, "[workers]\ncommand = [\"./missing-worker\"]\ncount = 2\n").expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&config).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));

    let example = hotsock_testkit::repo_root().join("examples/echo/hotsock.toml");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&example).output().expect("run");
    // The example points at the release build, which may not exist here;
    // either way the config itself must parse.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() || stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn cli_against_no_server_says_so_with_exit_3() {
    let dir = TempDir::new("none");
    let config = dir.path().join("hotsock.toml");
    std::fs::write(&config, "[workers]\ncommand = [\"x\"]\n").expect("write");
    for command in ["status", "clients", "stop"] {
        let output =
            std::process::Command::new(bin("hotsock")).args([command, "-c"]).arg(&config).output().expect("run");
        assert_eq!(output.status.code(), Some(3), "{command}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("no hotsock server is running"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_clients_and_process_titles_describe_the_server() {
    let server = TestServer::start(&echo_config());
    let _a = connect(&server.url("/first?x=1&token=s3cret")).await;
    let clients = wait_for("client listed", || {
        let clients = server.clients();
        (clients.as_array()?.len() == 1).then_some(clients)
    });
    // Query values are credentials often enough (the matchmaker's token)
    // that they are hidden unless asked for.
    assert_eq!(clients[0]["path"], "/first?x=…&token=…");
    let table = String::from_utf8(server.cli(&["clients"]).stdout).expect("utf8");
    assert!(table.contains("/first?x=…&token=…") && !table.contains("s3cret"), "{table}");
    assert!(table.ends_with("\n1 connection\n"), "{table}");
    let full: Value = serde_json::from_slice(&server.cli(&["clients", "--json", "--show-query"]).stdout).expect("json");
    assert_eq!(full[0]["path"], "/first?x=1&token=s3cret");
    assert!(clients[0]["peer"].as_str().expect("peer").starts_with("127.0.0.1:"));
    let table = String::from_utf8(server.cli(&["status"]).stdout).expect("utf8");
    assert!(table.contains("STATE") && table.contains("ready"), "{table}");
    let status = server.status();
    for (slot, worker) in status["workers"].as_array().expect("workers").iter().enumerate() {
        let pid = worker["pid"].as_u64().expect("pid");
        assert!(worker["rss_kib"].as_u64().expect("rss") > 0);
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(cmdline.starts_with(&format!("hotsock-worker event slot={slot} gen=1")), "{cmdline}");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        assert_eq!(comm.trim(), format!("hs-event-{slot}-g1"));
    }
    let socket = server.dir.path().join("run/hotsock.sock");
    let mode =
        std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).expect("meta");
    assert_eq!(mode & 0o777, 0o600, "admin socket is owner-only");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_run_dir_refuses_to_start() {
    let server = TestServer::start(&echo_config());
    let output =
        std::process::Command::new(bin("hotsock")).args(["start", "-c"]).arg(&server.config).output().expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    // The first server is unharmed.
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "x").await;
    assert_eq!(recv(&mut client).await, "v1:x");
}

#[test]
fn workers_die_with_a_killed_server() {
    let mut server = TestServer::start(&echo_config());
    let pids = worker_pids(&server);
    let child = server.child.as_mut().expect("child");
    child.kill().expect("SIGKILL server");
    let _ = child.wait();
    server.child = None;
    for pid in pids {
        wait_for("worker exit after parent death", || (!alive(pid)).then_some(()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_as_a_summary_then_the_worker_table_then_sections() {
    let server = TestServer::start(&format!("{}[tables.seen]\nrows = 4\ncolumns = {{ n = \"i64\" }}\n", echo_config()));
    let _client = connect(&server.url("/")).await;
    wait_for("one connection counted", || (server.try_status()?["connections"] == 1).then_some(()));
    let text = String::from_utf8(server.cli(&["status"]).stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() == 8, "{text}");
    assert!(lines[0].starts_with("hotsock pid ") && lines[0].contains("; 1 connection (accepted "), "{text}");
    assert_eq!(lines[1], "", "{text}");
    assert!(lines[2].starts_with("SLOT ") && lines[2].contains("STATE"), "{text}");
    assert!(lines[3].starts_with("0 ") && lines[4].starts_with("1 "), "the worker rows follow the header:\n{text}");
    assert_eq!(lines[5], "", "{text}");
    assert_eq!(lines[6], "table seen: 0 of 4 rows in use", "{text}");
    assert!(lines[7].starts_with("workers start at the "), "{text}");
}

/// `hotsock status | head -1`: the reader goes away; the CLI must end
/// quietly, not panic with "failed printing to stdout".
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    let server = TestServer::start(&echo_config());
    for args in [&["status"][..], &["status", "--json"], &["clients"], &["clients", "--json"]] {
        // The read end is closed before the CLI writes anything, so its
        // first write fails with EPIPE every time (a real `head` may race).
        let (reader, writer) = nix::unistd::pipe().expect("pipe");
        drop(reader);
        let output = Command::new(bin("hotsock"))
            .args(args)
            .arg("-c")
            .arg(&server.config)
            .stdout(Stdio::from(writer))
            .output()
            .expect("run hotsock");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} printed: {stderr}");
    }
}

#[test]
fn the_config_defaults_to_hotsock_toml_in_the_current_directory() {
    let server = TestServer::start(&echo_config());
    assert_eq!(server.config.file_name().and_then(|n| n.to_str()), Some("hotsock.toml"));
    let output = Command::new(bin("hotsock")).args(["status", "--json"]).current_dir(server.dir.path()).output();
    let output = output.expect("run hotsock");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(status["pid"].as_u64(), server.child.as_ref().map(|c| u64::from(c.id())));

    let empty = TempDir::new("noconfig");
    let output = Command::new(bin("hotsock")).arg("status").current_dir(empty.path()).output().expect("run hotsock");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("-c FILE") && stderr.contains("./hotsock.toml does not exist"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_missing_config_names_the_file_and_its_reason_once() {
    let dir = TempDir::new("missing");
    let config = dir.path().join("absent.toml");
    for command in ["check", "status", "start"] {
        let output = Command::new(bin("hotsock")).args([command, "-c"]).arg(&config).output().expect("run hotsock");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
        assert!(stderr.contains("absent.toml"), "{command}: {stderr}");
        assert_eq!(stderr.matches("No such file or directory").count(), 1, "{command}: {stderr}");
    }
}

/// `server.threads` sets how many threads the server's runtime has (as
/// `status` reports it, from the runtime itself), and the server serves on
/// one as on several.
#[tokio::test(flavor = "multi_thread")]
async fn server_threads_sets_the_runtime_threads() {
    for threads in [1, 3] {
        let server = TestServer::start(&format!("[server]\nthreads = {threads}\n{}", echo_config()));
        assert_eq!(server.status()["runtime_threads"], threads, "server.threads = {threads}");
        let mut client = connect(&server.url("/")).await;
        send(&mut client, "hi").await;
        assert!(recv(&mut client).await.ends_with("hi"));
    }
}

/// The policy of process `pid`'s main thread.
fn policy(pid: u32) -> Option<Policy> {
    sched::thread_policy(pid, pid).expect("worker stat")
}

/// The pid of the server's one worker process once it is spawned, found
/// through `/proc` (independently of `status`).
fn starting_worker(server: &TestServer) -> u32 {
    let server_pid = server.child.as_ref().expect("child").id();
    wait_for("the worker spawned", || {
        let tasks = std::fs::read_dir(format!("/proc/{server_pid}/task")).ok()?;
        tasks.flatten().find_map(|task| {
            let children = std::fs::read_to_string(task.path().join("children")).ok()?;
            children.split_whitespace().filter_map(|pid| pid.parse::<u32>().ok()).find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with("hotsock-worker"))
            })
        })
    })
}

fn slow_worker_config(start_idle_ms: u64) -> String {
    format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\nstart_idle_ms = {start_idle_ms}\n",
        bin("hotsock-testworker").display()
    )
}

/// A starting worker runs at the idle CPU policy, so the serving workers
/// and the server preempt it, and gets the normal one at Ready or, if its
/// start-up takes longer, at `workers.start_idle_ms`. `status` says which
/// policy workers start at; without the right to give the normal policy
/// back (here: CAP_SYS_NICE dropped) they start normally and it says why.
#[test]
fn workers_start_at_the_idle_policy_until_ready_or_the_bound() {
    if sched::idle_start_available().is_err() {
        // Unprivileged, the server must not start workers idle at all; the
        // last case below checks that either way.
        eprintln!("idle start not permitted here: checking the fallback only");
    } else {
        // Slow start-up (testworker sleeps 5 s before Hello): idle, then
        // normal at the 1.5 s bound, long before Ready.
        let server = TestServer::spawn(&slow_worker_config(1500), &[("TESTWORKER_MODE", "slowstart=5000")]);
        let pid = starting_worker(&server);
        assert_eq!(policy(pid), Some(Policy::Idle), "a starting worker runs idle");
        // `status` names the starting process too.
        wait_for("the starting worker's pid in status", || {
            (server.try_status()?["workers"][0]["pid"] == pid).then_some(())
        });
        assert_eq!(server.status()["workers"][0]["state"], "starting");
        wait_for("normal policy at the bound", || (policy(pid) == Some(Policy::Normal)).then_some(()));
        assert_eq!(server.status()["workers"][0]["state"], "starting", "the bound, not Ready, ended it");
        assert_eq!(server.status()["worker_start"], serde_json::json!({"policy": "idle", "max_ms": 1500}));
        // A worker that is Ready before the bound has the normal policy at once.
        let server = TestServer::start(&slow_worker_config(10_000));
        assert_eq!(policy(server.worker_pid(0)), Some(Policy::Normal), "normal from Ready on");
    }
    // 0 turns it off.
    let server = TestServer::spawn(&slow_worker_config(0), &[("TESTWORKER_MODE", "slowstart=1500")]);
    assert_eq!(policy(starting_worker(&server)), Some(Policy::Normal));
    assert_eq!(
        server.status()["worker_start"],
        serde_json::json!({"policy": "normal", "why": "workers.start_idle_ms = 0"})
    );
    // Not permitted: the server says so and starts workers normally.
    let server = TestServer::spawn_through(
        &["setpriv", "--bounding-set=-sys_nice"],
        None,
        &slow_worker_config(400),
        &[("TESTWORKER_MODE", "slowstart=1500")],
    );
    assert_eq!(policy(starting_worker(&server)), Some(Policy::Normal));
    let start = &server.status()["worker_start"];
    assert_eq!(start["policy"], "normal", "{start}");
    assert!(start["why"].as_str().is_some_and(|why| why.contains("CAP_SYS_NICE")), "{start}");
    let text = String::from_utf8(server.cli(&["status"]).stdout).expect("utf8");
    assert!(text.contains("workers start at the normal CPU policy: cannot give a thread SCHED_OTHER back"), "{text}");
}

/// SIGTERM while the workers are still starting: the server stops them and
/// exits 0 without serving (it used to poll the spent signal again and
/// panic).
#[test]
fn sigterm_before_the_workers_are_ready_stops_cleanly() {
    let mut server = TestServer::spawn(&slow_worker_config(50), &[("TESTWORKER_MODE", "slowstart=3000")]);
    let worker = starting_worker(&server);
    let pid = server.child.as_ref().expect("child").id();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(server.wait_exit(), Some(0), "{}", server.log());
    let log = server.log();
    assert!(log.contains("stop requested by signal before the workers were ready"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    wait_for("the starting worker gone", || (!alive(worker)).then_some(()));
}

/// Busy threads, one per `count`, that spin until dropped or for at most
/// `limit`: a machine whose CPUs are all taken.
struct Busy(std::sync::Arc<std::sync::atomic::AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl Busy {
    fn start(count: usize, limit: std::time::Duration) -> Busy {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = std::time::Instant::now() + limit;
                    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Busy(stop, threads)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.1.drain(..) {
            let _ = thread.join();
        }
    }
}

/// On a machine whose CPUs are all busy, an idle start would get almost no
/// CPU time: the bound covers the spawn too, so a reload is delayed by at
/// most the bound per worker, and the new workers run the normal policy.
#[test]
fn a_saturated_machine_delays_an_idle_start_by_the_bound_only() {
    if sched::idle_start_available().is_err() {
        eprintln!("idle start not permitted here: nothing to check");
        return;
    }
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 2\nstart_idle_ms = 50\n", bin("echo").display());
    let server = TestServer::start(&config);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let busy = Busy::start(4 * cores, std::time::Duration::from_secs(30));
    for _ in 0..2 {
        let output = server.cli(&["reload", "--wait"]);
        assert!(output.status.success(), "{}{}", String::from_utf8_lossy(&output.stderr), server.log());
        // Two workers, each idle for at most 50 ms, then a normal start
        // among the busy threads: 143-159 ms measured; idle spawns without
        // the bound took 1.8-2.4 s.
        let took = server.status()["last_reload"]["duration_ms"].as_u64().expect("duration");
        assert!(took < 800, "a reload under full CPU load took {took} ms");
    }
    drop(busy);
    for slot in 0..2 {
        assert_eq!(policy(server.worker_pid(slot)), Some(Policy::Normal), "slot {slot}");
    }
}
