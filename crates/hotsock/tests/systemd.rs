//! systemd's notify protocol, against a notify socket the test makes: the
//! states come in order (READY, RELOADING and READY around a reload,
//! STOPPING), and the watchdog is pinged at half its interval.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use hotsock_testkit::{TempDir, TestServer, WAIT, bin};

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
    let output = server.cli(&["stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    states_until(&socket, "STOPPING=1", &mut seen, &mut pings);
    assert_eq!(server.wait_exit(), Some(0));
    assert_eq!(seen.len(), 4, "{seen:?}");
}
