//! Redelivery blames only what was running, and only for deaths the worker
//! caused: drain-deadline kills during reloads close no connection and lose,
//! duplicate or reorder nothing, however often they repeat; a real poison
//! event is dropped alone and what was queued behind it is delivered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{TestServer, bin, close_code, connect, next_text, open_testworker, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The echo example with drain deadlines far below its handlers' 5 s.
fn slow_echo() -> TestServer {
    let config =
        format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n[reload]\nmax_wait_ms = 1000\n", bin("echo").display());
    TestServer::start(&config)
}

/// Four reloads 1.5 s apart, alternating `hotsock reload --wait` and
/// SIGUSR1: each one's drain deadline kills workers that are mid-handler.
fn four_reloads(server: &TestServer) {
    for k in 0..4u32 {
        std::thread::sleep(Duration::from_millis(1500));
        let before = server.status()["generation"].as_u64().expect("generation");
        if k.is_multiple_of(2) {
            let output = server.cli(&["reload", "--wait"]);
            assert!(output.status.success(), "reload {k}: {}", String::from_utf8_lossy(&output.stderr));
        } else {
            let pid = server.child.as_ref().expect("server").id();
            kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("SIGUSR1");
            wait_for("reload by SIGUSR1", || {
                let status = server.try_status()?;
                (status["generation"].as_u64()? > before && status["reloading"].is_null()).then_some(())
            });
        }
    }
}

fn slot_total(status: &Value, key: &str) -> u64 {
    status["workers"].as_array().expect("workers").iter().filter_map(|w| w[key].as_u64()).sum()
}

fn exit_causes(status: &Value) -> Vec<String> {
    let workers = status["workers"].as_array().expect("workers");
    workers
        .iter()
        .flat_map(|w| w["exits"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["cause"]["kind"].as_str().map(str::to_owned))
        .collect()
}

/// The scenario from the issue: 10 connections each send a 5 s message
/// every 10 s while four reloads with a 1 s drain deadline arrive 1.5 s
/// apart. Every message is answered exactly once, in order, the killed
/// runs marked redelivered; no connection closes.
#[tokio::test(flavor = "multi_thread")]
async fn drain_deadline_kills_during_reloads_close_nothing_and_lose_nothing() {
    const CONNS: usize = 10;
    let server = Arc::new(slow_echo());
    let mut clients = Vec::new();
    for c in 0..CONNS {
        let mut client = connect(&server.url("/slow")).await;
        send(&mut client, &format!("sleep:5000:{c}:0")).await;
        clients.push(client);
    }
    let started = Instant::now();
    let reloader = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || four_reloads(&server))
    };
    // While the first reload's old workers drain (their handlers outlast
    // the 1 s deadline), status shows them as draining, with the deadline.
    let draining = wait_for("a draining worker in status", || {
        let status = server.try_status()?;
        let others =
            status["workers"].as_array()?.iter().flat_map(|w| w["others"].as_array().cloned().unwrap_or_default());
        others.into_iter().find(|o| o["state"] == "draining")
    });
    assert!(draining["deadline_in_ms"].as_u64().is_some_and(|ms| ms <= 1000), "{draining}");
    let text = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("draining") && text.contains("killed in"), "status shows the drain:\n{text}");
    // The second message of each connection, 10 s after the first, queued
    // behind it.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed())).await;
    for (c, client) in clients.iter_mut().enumerate() {
        send(client, &format!("sleep:5000:{c}:1")).await;
    }
    reloader.await.expect("reloads");
    let mut redelivered = 0;
    for (c, client) in clients.iter_mut().enumerate() {
        for n in 0..2 {
            let reply = recv(client).await;
            let body = reply.strip_prefix("[redelivered]").inspect(|_| redelivered += 1).unwrap_or(&reply);
            assert_eq!(body, format!("v1:{c}:{n}"), "conn {c}: message {n} answered once, in order");
        }
    }
    // The first messages were running at the first drain deadline.
    assert!(redelivered >= CONNS, "{redelivered} redelivered replies");
    let status = server.status();
    assert_eq!(status["connections"], CONNS as u64, "no connection closed: {status}");
    assert_eq!(slot_total(&status, "dropped"), 0, "{status}");
    assert_eq!(status["generation"], 5);
    let causes = exit_causes(&status);
    assert!(causes.iter().any(|c| c == "drain_deadline"), "status names the drain deadline: {causes:?}");
    assert!(!causes.iter().any(|c| c == "crashed"), "a drain deadline is not a crash: {causes:?}");
    assert_eq!(slot_total(&status, "crashes"), 0, "{status}");
    let text = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("recent exits:") && text.contains("drain deadline"), "status names the causes:\n{text}");
    // Nothing else arrives: no late duplicate.
    for client in &mut clients {
        send(client, "last").await;
        assert_eq!(recv(client).await, "v1:last");
    }
}

/// The same reloads with 50 connections sending every 10 ms for 10 s behind
/// the slow handlers: thousands of events queued in the killed workers are
/// redelivered with no strike, none is dropped, no connection closes, and
/// every reply arrives once and in order (late, not lost).
#[tokio::test(flavor = "multi_thread")]
async fn queued_traffic_behind_slow_handlers_survives_repeated_drain_kills() {
    const CONNS: usize = 50;
    const MESSAGES: usize = 1000;
    let server = Arc::new(slow_echo());
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let client = connect(&server.url("/busy")).await;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            let sender = tokio::spawn(async move {
                sink.send(Message::text(format!("sleep:5000:{c}:slow"))).await.expect("send");
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                for n in 0..MESSAGES {
                    tick.tick().await;
                    sink.send(Message::text(format!("{c}:{n}"))).await.expect("send: connection dropped");
                }
                sink.send(Message::text(format!("{c}:end"))).await.expect("send");
                sink
            });
            let mut expected = 0;
            let mut slow_seen = false;
            loop {
                let text = next_text(&mut stream).await;
                let body = text.trim_start_matches("[redelivered]").trim_start_matches("v1:");
                if body == format!("{c}:slow") {
                    assert!(!slow_seen && expected == 0, "conn {c}: the slow reply twice or late: {text}");
                    slow_seen = true;
                    continue;
                }
                if body == format!("{c}:end") {
                    break;
                }
                let n: usize = body.strip_prefix(&format!("{c}:")).and_then(|n| n.parse().ok()).expect("c:n");
                assert!(slow_seen, "conn {c}: {n} overtook the slow message");
                assert_eq!(n, expected, "conn {c}: replies in order, each once");
                expected += 1;
            }
            assert_eq!(expected, MESSAGES, "conn {c}: every reply arrived");
            (sender.await.expect("sender"), stream)
        }));
    }
    let reloader = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || four_reloads(&server))
    };
    reloader.await.expect("reloads");
    let during = server.status();
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client"));
    }
    let status = server.status();
    assert_eq!(slot_total(&status, "dropped"), 0, "no event dropped: {status}");
    assert_eq!(status["connections"], CONNS as u64, "no connection closed: {status}");
    assert!(slot_total(&status, "redelivered") > CONNS as u64, "queued events were redelivered: {status}");
    assert_eq!(slot_total(&during, "crashes"), 0, "{during}");
}

/// A real poison event still ends after max_redeliveries + 1 crashes, with
/// 1011 on its own connection only; the event queued behind it on that
/// connection is then delivered (it was never running, so never struck).
#[tokio::test(flavor = "multi_thread")]
async fn a_poison_event_is_dropped_alone_and_the_event_behind_it_is_delivered() {
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\nmax_redeliveries = 2\nrestart_backoff_max_ms = 200\n",
        bin("hotsock-testworker").display()
    );
    let server = TestServer::start(&config);
    let (mut victim, _) = open_testworker(&server, "/").await;
    let (mut bystander, _) = open_testworker(&server, "/").await;
    // Both frames leave in one write, so the worker holds both when the
    // first one kills it.
    victim.feed(Message::text("exit")).await.expect("feed");
    victim.feed(Message::text("broadcast:after the poison")).await.expect("feed");
    victim.flush().await.expect("flush");
    assert_eq!(close_code(&mut victim).await, Some(1011));
    assert_eq!(recv(&mut bystander).await, "after the poison", "the queued event was delivered");
    let status = server.status();
    let slot = &status["workers"][0];
    assert_eq!(slot["dropped"], 1, "only the poison was dropped: {status}");
    assert_eq!(slot["crashes"], 3, "max_redeliveries + 1 crashes: {status}");
    // The text view shows the loss too, not only --json.
    assert_eq!(server.status_cell(0, "DROPPED").as_deref(), Ok("1"));
    assert_eq!(server.status_cell(0, "CRASHES").as_deref(), Ok("3"));
    let causes = exit_causes(&status);
    assert_eq!(causes, vec!["crashed"; 3], "{status}");
    let detail = slot["exits"][0]["detail"].as_str().expect("detail");
    assert!(detail.contains("exit code 3"), "{detail}");
    send(&mut bystander, "echo:unharmed").await;
    assert_eq!(recv(&mut bystander).await, "unharmed");
}

/// A finished event just before the poison, in the same burst, is not the
/// one dropped: at worst a first crash strikes it once (its ack was still in
/// the worker), its redelivery is acknowledged, and the poison goes.
#[tokio::test(flavor = "multi_thread")]
async fn the_event_finished_just_before_a_poison_is_never_the_one_dropped() {
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\nmax_redeliveries = 2\nrestart_backoff_max_ms = 200\n",
        bin("hotsock-testworker").display()
    );
    let server = TestServer::start(&config);
    let (mut victim, _) = open_testworker(&server, "/").await;
    victim.feed(Message::text("echo:before")).await.expect("feed");
    victim.feed(Message::text("exit")).await.expect("feed");
    victim.flush().await.expect("flush");
    let mut replies = Vec::new();
    let code = loop {
        match hotsock_testkit::next(&mut victim).await {
            Some(Message::Text(text)) => replies.push(text.to_string()),
            Some(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(code, Some(1011), "{replies:?}");
    assert!(replies.iter().any(|r| r.ends_with("before")), "the finished event was answered: {replies:?}");
    let status = server.status();
    assert_eq!(status["workers"][0]["dropped"], 1, "only the poison was dropped: {status}");
}

/// A handler panic that takes the process down is named as one.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_that_aborts_the_worker_is_reported_as_a_handler_panic() {
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 1\n", bin("hotsock-testworker").display());
    let server = TestServer::start(&config);
    let (mut client, _) = open_testworker(&server, "/").await;
    send(&mut client, "panic_abort").await;
    let status = wait_for("the worker's exit recorded", || {
        let status = server.try_status()?;
        (!status["workers"][0]["exits"].as_array()?.is_empty()).then_some(status)
    });
    let exit = &status["workers"][0]["exits"][0];
    assert_eq!(exit["cause"]["kind"], "handler_panic", "{status}");
    assert_eq!(exit["cause"]["signal"], 6, "{status}");
    assert!(exit["detail"].as_str().expect("detail").contains("panicked at"), "{status}");
    let output = server.cli(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("handler panic"), "status names the cause:\n{text}");
    // The connection stays open; its event, redelivered, kills the next
    // worker too, and after max_redeliveries it is dropped with 1011.
    assert_eq!(close_code(&mut client).await, Some(1011));
}
