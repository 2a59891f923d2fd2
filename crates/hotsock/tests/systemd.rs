//! systemd's notify protocol, against a notify socket the test makes: the
//! states come in order (READY, RELOADING and READY around a reload,
//! STOPPING), and the watchdog is pinged at half its interval. Socket
//! activation through Debian's `systemd-socket-activate`: clients connect
//! to the socket it passes (not `server.listen`), status and `/metrics`
//! work, and workers inherit neither the socket nor the LISTEN_* variables.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use hotsock_testkit::{TempDir, TestServer, WAIT, bin, connect, free_port, raw_http, recv, send};

/// Reads notify datagrams until `until` is among them; returns the
/// non-watchdog states in order and the count of watchdog pings.
fn states_until(socket: &UnixDatagram, until: &str, seen: &mut Vec<String>, pings: &mut usize) {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|s| s.starts_with(until)) {
        assert!(Instant::now() < deadline, "no {until} among {seen:?}");
        let Ok(n) = socket.recv(&mut buf) else { continue };
        let state = String::from_utf8_lossy(&buf[..n]).into_owned();
        if state == "WATCHDOG=1" {
            *pings += 1;
        } else {
            seen.push(state);
        }
    }
}

#[test]
fn notify_states_arrive_in_order_and_the_watchdog_is_pinged() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("echo").display());
    let notify = path.to_str().expect("utf8");
    let mut server = TestServer::start_with_env(&config, &[("NOTIFY_SOCKET", notify), ("WATCHDOG_USEC", "200000")]);
    let (mut seen, mut pings) = (Vec::new(), 0);
    states_until(&socket, "READY=1", &mut seen, &mut pings);
    assert!(seen[0].starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"), "{seen:?}");
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    states_until(&socket, "READY=1\nSTATUS=serving generation 2", &mut seen, &mut pings);
    assert!(seen[1].starts_with("RELOADING=1\nMONOTONIC_USEC="), "{seen:?}");
    let usec: u64 = seen[1].rsplit('=').next().and_then(|u| u.parse().ok()).expect("usec");
    assert!(usec > 0);
    // The watchdog keeps pinging while the server serves.
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    while pings < 3 {
        assert!(Instant::now() < deadline, "only {pings} watchdog pings");
        if let Ok(n) = socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1", "no other state while serving");
            pings += 1;
        }
    }
    // An upgrade hands the service to the new process: MAINPID first (from
    // the old one, the service's main process), then the new one's READY.
    let output = server.cli(&["upgrade", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    states_until(&socket, "MAINPID=", &mut seen, &mut pings);
    let new_pid = server.server_pid().expect("the new server's pid");
    assert!(seen[3].starts_with(&format!("MAINPID={new_pid}\n")), "{seen:?}");
    // The new server's READY (the first one's text again).
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while seen.len() < 5 {
        assert!(Instant::now() < deadline, "no READY from the new server: {seen:?}");
        if let Ok(n) = socket.recv(&mut buf) {
            let state = String::from_utf8_lossy(&buf[..n]).into_owned();
            if state != "WATCHDOG=1" {
                seen.push(state);
            }
        }
    }
    assert!(seen[4].starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"), "{seen:?}");
    assert_eq!(server.wait_exit(), Some(0), "the old server exits 0 after handing over");
    let output = server.cli(&["stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    states_until(&socket, "STOPPING=1", &mut seen, &mut pings);
    assert_eq!(seen.len(), 6, "{seen:?}");
}

/// Debian's socket activator (package `systemd`).
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// The `socket:[inode]` links among a process's descriptors.
fn sockets_of(pid: u32) -> Vec<String> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir");
    entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|link| link.display().to_string())
        .filter(|link| link.starts_with("socket:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_activation_serves_on_the_passed_socket_and_workers_inherit_nothing() {
    assert!(std::path::Path::new(SOCKET_ACTIVATE).exists(), "missing {SOCKET_ACTIVATE}: apt-get install systemd");
    let activated = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config =
        format!("[workers]\ncommand = [\"{}\"]\ncount = 1\n[metrics]\nlisten = \"{metrics}\"\n", bin("echo").display());
    let activate = ["-l".to_owned(), activated.to_string()];
    let launcher = [SOCKET_ACTIVATE, &activate[0], &activate[1]];
    let mut server = TestServer::spawn_through(&launcher, Some(activated), &config, &[]);
    // systemd-socket-activate starts hotsock on the first connection to its
    // socket (here a bare TCP one, once the socket is there); connections
    // wait in the socket's backlog until hotsock accepts them.
    let _first = hotsock_testkit::wait_for("the activator's socket", || std::net::TcpStream::connect(activated).ok());
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "through fd 3").await;
    assert_eq!(recv(&mut client).await, "v1:through fd 3");
    server.wait_ready();

    let status = server.status();
    assert_eq!(status["listen"], activated.to_string());
    assert!(server.log().contains("listening on the socket systemd passed (fd 3"), "{}", server.log());
    let configured: SocketAddr = std::fs::read_to_string(&server.config)
        .expect("config")
        .lines()
        .find_map(|l| {
            l.strip_prefix("listen = \"").and_then(|rest| rest.strip_suffix('"')).and_then(|a| a.parse().ok())
        })
        .expect("server.listen in the config");
    assert!(std::net::TcpStream::connect(configured).is_err(), "server.listen {configured} must not be bound");
    let scrape = raw_http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(scrape.starts_with("HTTP/1.1 200") && scrape.contains("hotsock_connections_accepted_total 1"), "{scrape}");

    // The worker has neither the listening socket nor the variables.
    let server_pid = status["pid"].as_u64().expect("pid") as u32;
    let listener = std::fs::read_link(format!("/proc/{server_pid}/fd/3")).expect("fd 3").display().to_string();
    let worker = server.worker_pid(0);
    assert!(!sockets_of(worker).contains(&listener), "worker {worker} inherited the listener {listener}");
    let environ = std::fs::read(format!("/proc/{worker}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.split('\0').any(|v| v.starts_with("LISTEN_")), "worker environment: {environ}");

    // Across an upgrade: the same passed socket (and the metrics listener)
    // serve, the open connection stays, new ones are accepted.
    let output = server.cli(&["upgrade", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(server.wait_exit(), Some(0), "the old server exits 0 after handing over");
    send(&mut client, "still here").await;
    assert_eq!(recv(&mut client).await, "v1:still here");
    let mut later = connect(&server.url("/")).await;
    send(&mut later, "after the upgrade").await;
    assert_eq!(recv(&mut later).await, "v1:after the upgrade");
    let status = server.status();
    assert_eq!(status["listen"], activated.to_string());
    assert_ne!(status["pid"].as_u64(), Some(u64::from(server_pid)));
    let scrape = raw_http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(scrape.starts_with("HTTP/1.1 200") && scrape.contains("hotsock_connections_accepted_total 2"), "{scrape}");
    let new_pid = status["pid"].as_u64().expect("pid") as u32;
    let environ = std::fs::read(format!("/proc/{new_pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.split('\0').any(|v| v.starts_with("LISTEN_")), "new server environment: {environ}");

    let output = server.cli(&["stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `hotsock start` with LISTEN_PID naming it (a shell that execs keeps its
/// pid) and `setup` run first; its exit code and stderr.
fn start_activated(setup: &str, fds: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("activation");
    let config = dir.path().join("hotsock.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[workers]\ncommand = [\"{}\"]\n",
        free_port(),
        bin("echo").display()
    );
    std::fs::write(&config, text).expect("config");
    let script = format!("{setup}; LISTEN_PID=$$ LISTEN_FDS={fds} exec \"$0\" start -c \"$1\"");
    let output = Command::new("sh").arg("-c").arg(script).arg(bin("hotsock")).arg(&config).output().expect("start");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_passed_descriptor_that_is_not_one_listening_tcp_socket_is_refused() {
    let (code, stderr) = start_activated("exec 3</dev/null", "1");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("socket activation: fd 3 (from LISTEN_FDS) is not a socket"), "{stderr}");
    let (code, stderr) = start_activated("exec 3</dev/null 4</dev/null", "2");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("LISTEN_FDS=2: hotsock takes exactly one socket"), "{stderr}");
}
