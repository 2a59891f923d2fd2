//! The CLI and the process lifecycle: stop, SIGTERM, check, status,
//! clients, process titles, the admin socket, parent death.

use std::process::{Command, Stdio};

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
