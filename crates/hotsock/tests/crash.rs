//! Workers that die or misbehave: connections survive, events are
//! redelivered in order, bad workers are contained. The SIGKILL soak runs
//! once per worker language (`common::EchoWorker`).

#[macro_use]
mod each_sdk;
mod common;

use std::time::Duration;

use common::EchoWorker;
use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{TempDir, TestServer, bin, close_code, connect, next_text, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite::Message;

fn config(program: &str, extra: &str) -> String {
    format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n{extra}", bin(program).display())
}

each_sdk!(sigkill_under_load_loses_nothing_and_keeps_order);

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
}

/// The acceptance scenario: 50 connections each send a numbered message
/// every 10 ms while a worker is SIGKILLed. No connection closes, every
/// message is answered, only redelivered events may be answered twice, and
/// per-connection order holds.
async fn sigkill_under_load_loses_nothing_and_keeps_order(worker: EchoWorker) {
    const CONNS: usize = 50;
    const MESSAGES: usize = 150;
    let server = TestServer::start(&worker.config(2, ""));
    let victim = server.worker_pid(0);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let url = server.url("/load");
        tasks.push(tokio::spawn(async move {
            let client = connect(&url).await;
            let (mut sink, mut stream) = client.split();
            let sender = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for n in 0..MESSAGES {
                    tick.tick().await;
                    // Every message takes a little work, so the worker
                    // always holds some unacknowledged events.
                    sink.send(Message::text(format!("sleep:5:{c}:{n}"))).await.expect("send");
                }
                sink
            });
            let mut replies = Vec::new();
            let mut seen = std::collections::HashSet::new();
            while seen.len() < MESSAGES {
                let text = next_text(&mut stream).await;
                let redelivered = text.starts_with("[redelivered]");
                let body = text.trim_start_matches("[redelivered]").trim_start_matches("v1:");
                let (conn, n) = body.split_once(':').expect("c:n");
                assert_eq!(conn, c.to_string(), "reply for another connection");
                let n: usize = n.parse().expect("n");
                let first_time = seen.insert(n);
                assert!(first_time || redelivered, "conn {c}: message {n} answered twice without the redelivered mark");
                replies.push((n, redelivered, first_time));
            }
            // A last message: per-connection order means any late duplicate
            // of an earlier answer arrives before its reply.
            let mut sink = sender.await.expect("sender");
            sink.send(Message::text(format!("{c}:end"))).await.expect("send");
            loop {
                let text = next_text(&mut stream).await;
                if text.ends_with(":end") {
                    break;
                }
                assert!(text.starts_with("[redelivered]"), "unexpected late reply {text}");
                replies.push((usize::MAX, true, false));
            }
            (replies, sink, stream)
        }));
    }
    // Kill once slot 0 is in the middle of message traffic (past the
    // handshakes and opens) holding events it has not acknowledged. It is
    // stopped first, so the events dispatched to it stay unacknowledged
    // until the kill: between a status reply that shows some in flight and
    // the kill, a running worker could have answered them all (seen once
    // in CI under load: nothing was redelivered, so nothing was tested).
    wait_for("slot 0 busy with messages", || (server.status()["workers"][0]["acked"].as_u64()? > 1000).then_some(()));
    kill(Pid::from_raw(victim as i32), Signal::SIGSTOP).expect("stop");
    wait_for("events in flight to the stopped worker", || {
        (server.status()["workers"][0]["inflight"].as_u64()? > 0).then_some(())
    });
    sigkill(victim);
    let mut redelivered_replies = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let (replies, sink, stream) = task.await.expect("client task");
        clients.push((sink, stream));
        // Order: the first answer to each message comes in sending order.
        let firsts: Vec<usize> = replies.iter().filter(|r| r.2).map(|r| r.0).collect();
        assert_eq!(firsts.len(), MESSAGES);
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(firsts, sorted, "per-connection order broken");
        redelivered_replies += replies.iter().filter(|r| r.1).count();
    }
    let status = server.status();
    let slot0 = &status["workers"][0];
    assert_eq!(slot0["crashes"], 1, "{status}");
    assert_ne!(slot0["pid"].as_u64(), Some(u64::from(victim)), "slot 0 has a replacement");
    assert!(slot0["redelivered"].as_u64().expect("n") > 0, "{status}");
    assert!(redelivered_replies > 0, "the replacement answered the dead worker's events: {status}\n{}", server.log());
    assert_eq!(status["connections"], CONNS as u64, "no connection closed");
    assert_eq!(status["workers"][1]["crashes"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_sending_a_malformed_frame_is_replaced_and_nothing_else_notices() {
    let dir = TempDir::new("garbage");
    let marker = dir.path().join("armed");
    let mode = format!("garbage-once={}", marker.display());
    let server = TestServer::start_with_env(&config("hotsock-testworker", ""), &[("TESTWORKER_MODE", &mode)]);
    let pids = [server.worker_pid(0), server.worker_pid(1)];
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = connect(&server.url("/")).await;
        send(&mut client, "echo:hi").await;
        clients.push(client);
    }
    let status = wait_for("the bad worker replaced", || {
        let status = server.try_status()?;
        let crashed = status["workers"].as_array()?.iter().any(|w| w["crashes"] == 1);
        crashed.then_some(status)
    });
    let bad = status["workers"].as_array().expect("workers").iter().position(|w| w["crashes"] == 1).expect("bad");
    let good = 1 - bad;
    assert_eq!(status["workers"][good]["pid"].as_u64(), Some(u64::from(pids[good])), "the other worker is untouched");
    assert_eq!(status["workers"][good]["crashes"], 0);
    assert!(status["workers"][bad]["last_exit"].as_str().expect("exit").contains("malformed frame"), "{status}");
    // Every client's first event was answered: the bad worker's by its
    // replacement (the bad worker never answered, so open and message
    // events were redelivered).
    for client in &mut clients {
        let first = recv(client).await;
        let reply = if first.starts_with("open ") { recv(client).await } else { first };
        assert!(reply.ends_with("hi"), "{reply}");
        send(client, "echo:still open").await;
        assert_eq!(recv(client).await, "still open");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_that_kills_every_worker_is_dropped_after_max_redeliveries() {
    let server = TestServer::start(&config(
        "hotsock-testworker",
        "max_redeliveries = 2\ncrash_loop_count = 3\ncrash_loop_window_ms = 60000\nrestart_backoff_max_ms = 200\n",
    ));
    let mut victim = connect(&server.url("/")).await;
    assert!(recv(&mut victim).await.starts_with("open "));
    let mut bystander = connect(&server.url("/")).await;
    assert!(recv(&mut bystander).await.starts_with("open "));
    send(&mut victim, "exit").await;
    // Held by three dying workers (the first plus two redeliveries): dropped,
    // and its connection closed with 1011.
    assert_eq!(close_code(&mut victim).await, Some(1011));
    let status = server.status();
    let slot = status["workers"].as_array().expect("w").iter().find(|w| w["dropped"] == 1).expect("slot").clone();
    assert_eq!(slot["crashes"], 3, "{status}");
    assert_eq!(slot["crash_loop"], true, "three crashes within the window is a crash loop: {status}");
    assert!(server.log().contains("dropping an event that crashed 3 workers"), "{}", server.log());
    wait_for("slot serving again", || {
        (server.status()["workers"][slot["slot"].as_u64()? as usize]["state"] == "ready").then_some(())
    });
    send(&mut bystander, "echo:unharmed").await;
    assert_eq!(recv(&mut bystander).await, "unharmed");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_fails_clearly_when_the_worker_speaks_another_protocol_version() {
    let mut server = TestServer::spawn(&config("hotsock-testworker", ""), &[("TESTWORKER_MODE", "badversion")]);
    assert_eq!(server.wait_exit(), Some(1));
    let log = server.log();
    assert!(log.contains("worker speaks protocol version 99, this server speaks 1"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_fails_clearly_when_workers_never_say_ready() {
    let mut server = TestServer::spawn(
        &config("hotsock-testworker", "[reload]\nready_timeout_ms = 300\n"),
        &[("TESTWORKER_MODE", "noready")],
    );
    assert_eq!(server.wait_exit(), Some(1));
    assert!(server.log().contains("no Ready within reload.ready_timeout_ms = 300"), "{}", server.log());
    let mut server = TestServer::spawn(&config("hotsock-testworker", ""), &[("TESTWORKER_MODE", "crash")]);
    assert_eq!(server.wait_exit(), Some(1));
    assert!(server.log().contains("exited before Ready (exit code 2)"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_does_not_read_is_closed_and_memory_stays_bounded() {
    let server = TestServer::start(&config("hotsock-testworker", "[limits]\noutput_buffer_bytes = 65536\n"));
    let mut slow = connect(&server.url("/")).await;
    assert!(recv(&mut slow).await.starts_with("open "));
    // 40 MB of pushes: far beyond the socket buffers and the 64 KiB cap.
    send(&mut slow, "flood:40000:1000").await;
    wait_for("slow reader closed", || server.log().contains("closing slow reader").then_some(()));
    wait_for("slow reader gone", || (server.status()["connections"] == 0).then_some(()));
    // The client sees some of the flood and then the end, never all of it.
    let mut received = 0;
    loop {
        match hotsock_testkit::next(&mut slow).await {
            Some(Message::Text(_)) => received += 1,
            Some(_) => {}
            None => break,
        }
    }
    assert!(received < 40_000, "received {received}");
    let mut other = connect(&server.url("/")).await;
    assert!(recv(&mut other).await.starts_with("open "));
}

/// A worker that dies while the server is stopping is still replaced until
/// every event is handled: the stop loses nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_during_a_graceful_stop_is_replaced_until_its_events_are_handled() {
    let dir = TempDir::new("stopcrash");
    let log = dir.path().join("worker.log");
    let mut server = TestServer::start_with_env(
        &config("hotsock-testworker", "[reload]\nmax_wait_ms = 20000\n"),
        &[("TESTWORKER_LOG", log.to_str().expect("utf8"))],
    );
    let mut conns = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut client = connect(&server.url("/")).await;
        let conn: u64 = recv(&mut client).await.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("id");
        send(&mut client, "sleep:1000:x").await;
        conns.push(conn);
        readers.push(tokio::spawn(async move { close_code(&mut client).await }));
    }
    let victim = server.worker_pid(0);
    let config_path = server.config.clone();
    let stopper = std::thread::spawn(move || {
        std::process::Command::new(bin("hotsock")).args(["stop", "-c"]).arg(config_path).output().expect("stop")
    });
    wait_for("stop under way", || (server.try_status()?["stopping"] == true).then_some(()));
    // Slot 0 still holds unacknowledged events (the sleeps, then the Close
    // events of its connections).
    sigkill(victim);
    let output = stopper.join().expect("stopper");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(server.wait_exit(), Some(0));
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), Some(1001));
    }
    let log = std::fs::read_to_string(&log).expect("worker log");
    for conn in conns {
        assert!(log.contains(&format!("close conn={conn} code=1001")), "on_close missing for {conn}:\n{log}");
    }
}

fn heartbeat_config() -> String {
    config(
        "hotsock-testworker",
        "heartbeat_ms = 100\nunresponsive_ms = 500\nmax_redeliveries = 1\nrestart_backoff_max_ms = 200\n",
    )
    .replace("count = 2", "count = 1")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_blocks_its_event_loop_gets_the_worker_replaced() {
    let server = TestServer::start(&heartbeat_config());
    let mut victim = connect(&server.url("/")).await;
    assert!(recv(&mut victim).await.starts_with("open "));
    let mut bystander = connect(&server.url("/")).await;
    assert!(recv(&mut bystander).await.starts_with("open "));
    send(&mut bystander, "echo:before").await;
    assert_eq!(recv(&mut bystander).await, "before");
    let blocked_at = std::time::Instant::now();
    // Never yields for a minute: the worker stops answering heartbeats, is
    // killed and replaced; the event is redelivered once, blocks the
    // replacement too, and is then dropped with 1011.
    send(&mut victim, "block:60000").await;
    assert_eq!(close_code(&mut victim).await, Some(1011));
    assert!(blocked_at.elapsed() < Duration::from_secs(20), "took {:?}", blocked_at.elapsed());
    let log = server.log();
    assert!(log.contains("no heartbeat answer for") && log.contains("workers.unresponsive_ms"), "{log}");
    assert_eq!(server.status()["workers"][0]["crashes"], 2, "{}", server.status());
    // The other connection was never dropped and is served by the third worker.
    wait_for("slot serving again", || (server.status()["workers"][0]["state"] == "ready").then_some(()));
    send(&mut bystander, "echo:after").await;
    assert_eq!(recv(&mut bystander).await, "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_await_longer_than_unresponsive_ms_is_not_a_blocked_loop() {
    let server = TestServer::start(&heartbeat_config());
    let mut client = connect(&server.url("/")).await;
    assert!(recv(&mut client).await.starts_with("open "));
    // An async wait three times unresponsive_ms: the loop keeps answering.
    send(&mut client, "sleep:1500:slept").await;
    assert_eq!(recv(&mut client).await, "slept");
    let status = server.status();
    assert_eq!(status["workers"][0]["crashes"], 0, "{status}");
    // Status shows how long ago the worker last answered: recently.
    let age = status["workers"][0]["heartbeat_age_ms"].as_u64().expect("heartbeat age");
    assert!(age < 500, "{status}");
    assert!(!server.log().contains("no heartbeat answer"), "{}", server.log());
}
