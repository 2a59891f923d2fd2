//! The server's log: a file that SIGHUP reopens after logrotate moved it,
//! JSON lines for collectors, and a SIGHUP that never kills the server.

use hotsock_testkit::{TestServer, bin, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn config(log: &str) -> String {
    format!("[workers]\ncommand = [\"{}\"]\ncount = 1\n[log]\n{log}\n", bin("echo").display())
}

fn signal(server: &TestServer, signal: Signal) {
    let pid = server.child.as_ref().expect("server").id();
    kill(Pid::from_raw(pid as i32), signal).expect("signal");
}

fn reload(server: &TestServer) {
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn sighup_reopens_the_log_file_after_it_was_moved() {
    let server = TestServer::start(&config("file = \"hotsock.log\""));
    let log = server.dir.path().join("hotsock.log");
    let moved = server.dir.path().join("hotsock.log.1");
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    wait_for("the start in the log file", || read(&log).contains("hotsock is serving").then_some(()));
    assert!(!server.log().contains("hotsock is serving"), "the file, not stderr");
    std::fs::rename(&log, &moved).expect("mv, as logrotate does");
    reload(&server);
    assert!(read(&moved).contains("reload done"), "before SIGHUP, lines go to the moved file");
    signal(&server, Signal::SIGHUP);
    wait_for("the reopened file", || read(&log).contains("SIGHUP: log file reopened").then_some(()));
    reload(&server);
    wait_for("the next reload in the new file", || read(&log).contains("reload done").then_some(()));
    assert_eq!(read(&moved).matches("reload done").count(), 1, "the old file gets nothing more");
}

#[test]
fn json_lines_for_collectors_and_sighup_without_a_file_is_harmless() {
    let server = TestServer::start(&config("format = \"json\""));
    signal(&server, Signal::SIGHUP);
    wait_for("the SIGHUP logged", || server.log().contains("no log.file to reopen").then_some(()));
    reload(&server);
    let log = wait_for("the reload logged", || Some(server.log()).filter(|log| log.contains("reload done")));
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string() && event["timestamp"].is_string(), "{line}");
        messages.push(event["fields"]["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m == "hotsock is serving"), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("reload done")), "{messages:?}");
    assert_eq!(server.status()["generation"], 2, "alive after SIGHUP");
}

#[test]
fn a_bad_log_level_is_named() {
    let mut server = TestServer::spawn(&config("level = \"info,=\""), &[]);
    assert_eq!(server.wait_exit(), Some(1));
    assert!(server.log().contains("`log.level` = \"info,=\" is not a filter"), "{}", server.log());
}
