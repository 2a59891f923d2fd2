//! Hot reload under traffic: no dropped connection, no lost, duplicated or
//! reordered message, the new code answering after each reload, and broken
//! generations that never take traffic. The echo tests run once per worker
//! language (`common::EchoWorker`: Rust and PHP).

#[macro_use]
mod each_sdk;
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::EchoWorker;
use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{Client, TempDir, TestServer, bin, connect, next_text, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

struct Echo {
    server: TestServer,
    prefix: PathBuf,
    _dir: TempDir,
}

fn start_echo(worker: EchoWorker, extra: &str) -> Echo {
    let dir = TempDir::new("reload");
    let prefix = dir.path().join("prefix");
    std::fs::write(&prefix, "p0:").expect("write prefix");
    let config = worker.config(2, extra);
    let server = TestServer::start_with_env(&config, &[("ECHO_PREFIX_FILE", prefix.to_str().expect("utf8"))]);
    Echo { server, prefix, _dir: dir }
}

/// One reply: which message, which prefix (generation's code) answered it,
/// and whether it was a redelivery.
#[derive(Debug)]
struct Reply {
    n: usize,
    prefix: String,
    redelivered: bool,
}

struct ConnResult {
    c: usize,
    sent: usize,
    replies: Vec<Reply>,
    /// The connection, kept open so the test can check nothing dropped it.
    _client: Client,
}

/// Clients sending numbered messages at a fixed interval until stopped.
struct Soak {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<ConnResult>>,
}

impl Soak {
    async fn start(server: &TestServer, conns: usize, interval: Duration, message: fn(usize, usize) -> String) -> Soak {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for c in 0..conns {
            let client = connect(&server.url("/soak")).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(run_conn(client, c, interval, message, stop)));
        }
        Soak { stop, tasks }
    }

    /// Stops sending, collects every connection's replies, and checks the
    /// contract: every message answered, first answers in sending order,
    /// repeats only for redelivered events.
    async fn finish(self) -> Vec<ConnResult> {
        self.stop.store(true, Ordering::Relaxed);
        let mut results = Vec::new();
        for task in self.tasks {
            let result = task.await.expect("client task");
            let mut next = 0;
            for reply in &result.replies {
                if reply.n == next {
                    next += 1;
                } else {
                    assert!(
                        reply.n < next && reply.redelivered,
                        "conn {}: got {} after {} ({reply:?})",
                        result.c,
                        reply.n,
                        next
                    );
                }
            }
            assert_eq!(next, result.sent, "conn {}: {} sent, {} answered in order", result.c, result.sent, next);
            results.push(result);
        }
        results
    }
}

async fn run_conn(
    client: Client,
    c: usize,
    interval: Duration,
    message: fn(usize, usize) -> String,
    stop: Arc<AtomicBool>,
) -> ConnResult {
    let (mut sink, mut stream) = client.split();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            sink.send(Message::text(message(c, n))).await.expect("send: connection dropped");
            n += 1;
        }
        // Per-connection order: every reply to an earlier message (and any
        // redelivered repeat) comes before the reply to this one.
        sink.send(Message::text(format!("{c}:end"))).await.expect("send");
        (sink, n)
    });
    let mut replies = Vec::new();
    loop {
        let text = next_text(&mut stream).await;
        let (redelivered, text) = match text.strip_prefix("[redelivered]") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, text.to_string()),
        };
        let (prefix, body) = text.split_once(':').expect("prefix:body");
        let (conn, n) = body.split_once(':').expect("c:n");
        assert_eq!(conn, c.to_string(), "a reply for another connection");
        if n == "end" {
            break;
        }
        replies.push(Reply { n: n.parse().expect("n"), prefix: prefix.to_owned(), redelivered });
    }
    let (sink, sent) = sender.await.expect("sender");
    let client = sink.reunite(stream).expect("same connection");
    ConnResult { c, sent, replies, _client: client }
}

impl Echo {
    fn set_prefix(&self, prefix: &str) {
        std::fs::write(&self.prefix, prefix).expect("write prefix");
    }

    fn generation(&self) -> u64 {
        self.server.status()["generation"].as_u64().expect("generation")
    }

    /// `hotsock reload --wait`; panics unless it succeeds.
    fn reload_cli(&self) {
        let output = self.server.cli(&["reload", "--wait"]);
        assert!(
            output.status.success(),
            "reload failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGUSR1, then waits until the next generation serves.
    fn reload_signal(&self) {
        let before = self.generation();
        let pid = self.server.child.as_ref().expect("server").id();
        kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("SIGUSR1");
        wait_for("reload by SIGUSR1", || {
            let status = self.server.try_status()?;
            (status["generation"].as_u64()? > before && status["reloading"].is_null()).then_some(())
        });
    }
}

/// 20 reloads, alternating CLI and SIGUSR1, with the prefix file changed
/// before each; after each, a probe connection sees the new prefix.
async fn soak_with_reloads(
    worker: EchoWorker,
    extra: &str,
    conns: usize,
    interval: Duration,
    message: fn(usize, usize) -> String,
) {
    let echo = start_echo(worker, extra);
    let mut probe = connect(&echo.server.url("/probe")).await;
    let soak = Soak::start(&echo.server, conns, interval, message).await;
    for k in 1..=20 {
        echo.set_prefix(&format!("p{k}:"));
        if k % 2 == 1 {
            echo.reload_cli();
        } else {
            echo.reload_signal();
        }
        assert_eq!(echo.generation(), k + 1);
        send(&mut probe, "probe:x").await;
        assert_eq!(recv(&mut probe).await, format!("p{k}:probe:x"), "after reload {k}");
    }
    let results = soak.finish().await;
    let total: usize = results.iter().map(|r| r.sent).sum();
    let redelivered: usize = results.iter().map(|r| r.replies.iter().filter(|x| x.redelivered).count()).sum();
    assert_eq!(redelivered, 0, "a graceful reload redelivers nothing");
    let prefixes: std::collections::HashSet<&str> =
        results.iter().flat_map(|r| r.replies.iter().map(|x| x.prefix.as_str())).collect();
    assert!(prefixes.len() > 10, "replies came from many generations: {prefixes:?}");
    let status = echo.server.status();
    assert_eq!(status["connections"], conns as u64 + 1, "no connection dropped");
    println!("{total} messages over 20 reloads, {} prefixes", prefixes.len());
}

each_sdk!(
    soak_20_reloads_loses_duplicates_and_reorders_nothing,
    soak_20_reloads_with_work_in_flight_at_every_switch,
    soak_with_all_at_once_strategy,
    old_workers_past_max_wait_are_killed_and_their_events_redelivered,
    a_generation_that_fails_at_start_never_takes_traffic,
    sigusr2_without_task_workers_blocks_nothing,
    rollback_returns_to_the_previous_generation,
    workers_are_recycled_after_max_requests_without_loss,
);

async fn soak_20_reloads_loses_duplicates_and_reorders_nothing(worker: EchoWorker) {
    soak_with_reloads(worker, "", 50, Duration::from_millis(10), |c, n| format!("{c}:{n}")).await;
}

async fn soak_20_reloads_with_work_in_flight_at_every_switch(worker: EchoWorker) {
    soak_with_reloads(worker, "", 50, Duration::from_millis(60), |c, n| format!("sleep:50:{c}:{n}")).await;
}

async fn soak_with_all_at_once_strategy(worker: EchoWorker) {
    soak_with_reloads(worker, "[reload]\nstrategy = \"all-at-once\"\n", 20, Duration::from_millis(10), |c, n| {
        format!("{c}:{n}")
    })
    .await;
}

async fn old_workers_past_max_wait_are_killed_and_their_events_redelivered(worker: EchoWorker) {
    let echo = start_echo(worker, "[reload]\nmax_wait_ms = 1000\n");
    let mut clients = Vec::new();
    for c in 0..10 {
        let mut client = connect(&echo.server.url("/")).await;
        send(&mut client, &format!("sleep:5000:{c}:0")).await;
        clients.push(client);
    }
    wait_for("events in flight", || {
        let status = echo.server.status();
        let held: u64 = status["workers"].as_array()?.iter().filter_map(|w| w["inflight"].as_u64()).sum();
        (held == 10).then_some(())
    });
    echo.set_prefix("p1:");
    echo.reload_cli();
    for (c, client) in clients.iter_mut().enumerate() {
        // Killed after 1 s holding the event; the new generation runs it again.
        assert_eq!(recv(client).await, format!("[redelivered]p1:{c}:0"));
    }
    let status = echo.server.status();
    let redelivered: u64 =
        status["workers"].as_array().expect("w").iter().filter_map(|w| w["redelivered"].as_u64()).sum();
    assert_eq!(redelivered, 10, "{status}");
    assert_eq!(status["connections"], 10);
}

async fn a_generation_that_fails_at_start_never_takes_traffic(worker: EchoWorker) {
    let echo = start_echo(worker, "");
    let soak = Soak::start(&echo.server, 20, Duration::from_millis(10), |c, n| format!("{c}:{n}")).await;
    // The echo worker panics in on_worker_start when its prefix file is gone.
    std::fs::remove_file(&echo.prefix).expect("remove");
    let output = echo.server.cli(&["reload", "--wait"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("generation 1 keeps serving"), "{stderr}");
    assert!(stderr.contains("exited before Ready"), "{stderr}");
    assert!(stderr.contains("cannot read ECHO_PREFIX_FILE"), "the worker's own stderr is reported: {stderr}");
    assert_eq!(echo.generation(), 1);
    let status = echo.server.status();
    assert_eq!(status["last_reload"]["ok"], false);
    // The next good build goes live.
    echo.set_prefix("p2:");
    echo.reload_cli();
    assert_eq!(echo.generation(), 3);
    let results = soak.finish().await;
    assert!(results.iter().all(|r| r.replies.iter().all(|x| x.prefix == "p0" || x.prefix == "p2")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_that_never_says_ready_is_aborted_and_undone() {
    let dir = TempDir::new("noready");
    let mode = dir.path().join("mode");
    std::fs::write(&mode, "").expect("write");
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 3\n[reload]\nready_timeout_ms = 500\n",
        bin("hotsock-testworker").display()
    );
    let server = TestServer::start_with_env(&config, &[("TESTWORKER_MODE_FILE", mode.to_str().expect("utf8"))]);
    let mut client = connect(&server.url("/")).await;
    assert!(recv(&mut client).await.starts_with("open "));
    std::fs::write(&mode, "noready").expect("write");
    let output = server.cli(&["reload", "--wait"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no Ready within reload.ready_timeout_ms = 500"), "{stderr}");
    let status = server.status();
    assert_eq!(status["generation"], 1);
    for worker in status["workers"].as_array().expect("workers") {
        assert_eq!(worker["generation"], 1, "{status}");
        assert_eq!(worker["state"], "ready", "{status}");
    }
    send(&mut client, "echo:still here").await;
    assert_eq!(recv(&mut client).await, "still here");
    // Slot 0's worker handed over its state for the successor that never
    // came: it must serve again, not stay suspended (three consecutive
    // connections cover the three slots).
    for _ in 0..3 {
        let mut other = connect(&server.url("/")).await;
        assert!(recv(&mut other).await.starts_with("open "));
        send(&mut other, "echo:served").await;
        assert_eq!(recv(&mut other).await, "served");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reloads_are_coalesced_and_all_answered() {
    // Each worker takes 300 ms to start, so the five requests (separate CLI
    // processes started together) arrive while the first reload runs.
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("hotsock-testworker").display());
    let server = TestServer::start_with_env(&config, &[("TESTWORKER_MODE", "slowstart=300")]);
    let config = server.config.clone();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || {
                std::process::Command::new(bin("hotsock"))
                    .args(["reload", "--wait", "-c"])
                    .arg(config)
                    .output()
                    .expect("reload")
            })
        })
        .collect();
    for caller in callers {
        let output = caller.join().expect("caller");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).starts_with("ok: generation"));
    }
    let generation = server.status()["generation"].as_u64().expect("generation");
    assert!((2..=3).contains(&generation), "five requests, at most two reloads: generation {generation}");
}

async fn sigusr2_without_task_workers_blocks_nothing(worker: EchoWorker) {
    let echo = start_echo(worker, "");
    let pid = echo.server.child.as_ref().expect("server").id();
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    wait_for("SIGUSR2 handled", || echo.server.log().contains("no task workers are configured").then_some(()));
    echo.set_prefix("p1:");
    echo.reload_signal();
    assert_eq!(echo.generation(), 2);
    let mut client = connect(&echo.server.url("/")).await;
    send(&mut client, "x").await;
    assert_eq!(recv(&mut client).await, "p1:x");
}

async fn rollback_returns_to_the_previous_generation(worker: EchoWorker) {
    let echo = start_echo(worker, "");
    echo.set_prefix("p1:");
    echo.reload_cli();
    echo.set_prefix("p9:");
    let output = echo.server.cli(&["rollback", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(echo.generation(), 1);
    let mut client = connect(&echo.server.url("/")).await;
    send(&mut client, "x").await;
    // Fresh processes of generation 1's executable, which read the prefix
    // file when they started.
    assert_eq!(recv(&mut client).await, "p9:x");
    assert_eq!(echo.server.status()["previous_generation"], 2);
    if worker == EchoWorker::Rust {
        // A PHP worker's program is `php` from PATH: nothing of ours to copy.
        let run = echo.server.dir.path().join("run/generations");
        assert!(run.join("1/echo").exists() && run.join("2/echo").exists());
    }
}

/// A test-worker server whose generations can be made to panic.
fn start_testworker(workers: usize, extra: &str) -> (TestServer, TempDir) {
    let dir = TempDir::new("gens");
    let config =
        format!("[workers]\ncommand = [\"{}\"]\ncount = {workers}\n{extra}", bin("hotsock-testworker").display());
    let server = TestServer::start_with_env(&config, &[("TESTWORKER_GEN_DIR", dir.path().to_str().expect("utf8"))]);
    (server, dir)
}

/// Clients that keep sending `echo:` messages until stopped.
async fn traffic(server: &TestServer, conns: usize) -> (Arc<AtomicBool>, Vec<JoinHandle<Client>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut client = connect(&server.url("/")).await;
        assert!(recv(&mut client).await.starts_with("open "));
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            let reader = tokio::spawn(async move {
                // Replies are not checked here (panicking handlers send none);
                // reading keeps the connection healthy.
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = &message
                        && text.as_str() == "stop-reading"
                    {
                        break;
                    }
                }
                stream
            });
            while !stop.load(Ordering::Relaxed) {
                sink.send(Message::text("echo:x")).await.expect("connection dropped");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            sink.send(Message::text("echo:stop-reading")).await.expect("connection dropped");
            let stream = reader.await.expect("reader");
            sink.reunite(stream).expect("same connection")
        }));
    }
    (stop, tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generation_that_panics_is_rolled_back_automatically() {
    let (server, dir) = start_testworker(2, "[reload]\nrollback_failures = 3\nrollback_window_ms = 30000\n");
    let (stop, tasks) = traffic(&server, 6).await;
    std::fs::write(dir.path().join("gen2"), "panic-from=10").expect("write");
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status = wait_for("automatic rollback", || {
        let status = server.try_status()?;
        (status["last_reload"]["kind"] == "rollback" && status["reloading"].is_null()).then_some(status)
    });
    assert_eq!(status["last_reload"]["ok"], true, "{status}");
    let message = status["last_reload"]["message"].as_str().expect("message");
    assert!(message.starts_with("automatic rollback: generation 2 had"), "{message}");
    assert_eq!(status["generation"], 1);
    assert!(server.log().contains("automatic rollback"), "reported in the log");
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for task in tasks {
        let mut client = task.await.expect("client");
        send(&mut client, "echo:after rollback").await;
        assert_eq!(recv(&mut client).await, "after rollback", "every connection survived and is served");
        clients.push(client);
    }
    assert_eq!(server.status()["connections"], 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_canary_is_rolled_back_after_touching_one_slot() {
    let (server, dir) = start_testworker(3, "[reload]\ncanary_ms = 5000\n");
    let (stop, tasks) = traffic(&server, 9).await;
    std::fs::write(dir.path().join("gen2"), "panic-from=1").expect("write");
    let output = server.cli(&["reload", "--wait", "--canary", "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("canary slot") && stderr.contains("handler panic"), "{stderr}");
    assert!(stderr.contains("undone, generation 1 keeps serving"), "{stderr}");
    let log = server.log();
    let generation_2_started = log.lines().filter(|l| l.contains("worker ready") && l.contains("generation=2")).count();
    assert_eq!(generation_2_started, 1, "only the canary slot got the new generation:\n{log}");
    let status = server.status();
    assert_eq!(status["generation"], 1);
    for worker in status["workers"].as_array().expect("workers") {
        assert_eq!(worker["generation"], 1, "{status}");
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let mut client = task.await.expect("client");
        send(&mut client, "echo:after canary").await;
        assert_eq!(recv(&mut client).await, "after canary");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_canary_completes_the_reload() {
    let (server, _dir) = start_testworker(3, "[reload]\ncanary_ms = 300\n");
    let (stop, tasks) = traffic(&server, 6).await;
    let output = server.cli(&["reload", "--wait", "--canary", "1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status = server.status();
    assert_eq!(status["generation"], 2);
    assert!(status["last_reload"]["duration_ms"].as_u64().expect("ms") >= 300, "the canary was watched: {status}");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client");
    }
}

async fn workers_are_recycled_after_max_requests_without_loss(worker: EchoWorker) {
    let echo = start_echo(worker, "max_requests = 200\n");
    let soak = Soak::start(&echo.server, 10, Duration::from_millis(5), |c, n| format!("{c}:{n}")).await;
    wait_for("several recycles", || {
        let status = echo.server.try_status()?;
        let recycled: u64 = status["workers"].as_array()?.iter().filter_map(|w| w["recycled"].as_u64()).sum();
        (recycled >= 4).then_some(())
    });
    let results = soak.finish().await;
    assert!(results.iter().all(|r| r.replies.iter().all(|x| !x.redelivered)));
    let status = echo.server.status();
    assert_eq!(status["generation"], 1, "recycling keeps the generation");
    assert_eq!(status["connections"], 10);
    for worker in status["workers"].as_array().expect("workers") {
        assert_eq!(worker["crashes"], 0, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_handed_to_the_next_generation_of_the_same_slot() {
    let dir = TempDir::new("handoff");
    let log = dir.path().join("worker.log");
    let config = format!("[workers]\ncommand = [\"{}\"]\ncount = 2\n", bin("hotsock-testworker").display());
    let server = TestServer::start_with_env(&config, &[("TESTWORKER_LOG", log.to_str().expect("utf8"))]);
    let mut a = connect(&server.url("/")).await;
    assert!(recv(&mut a).await.starts_with("open "));
    send(&mut a, "remember:apple").await;
    assert_eq!(recv(&mut a).await, "remembered");
    // Traffic on other connections while the slots hand over.
    let (stop, tasks) = traffic(&server, 4).await;
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    send(&mut a, "recall").await;
    assert_eq!(recv(&mut a).await, "memory=apple", "generation 2 of the slot got generation 1's state");
    // And again through recycling-free rollback: the state keeps moving.
    send(&mut a, "remember:pear").await;
    assert_eq!(recv(&mut a).await, "remembered");
    let output = server.cli(&["rollback", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    send(&mut a, "recall").await;
    assert_eq!(recv(&mut a).await, "memory=apple,pear");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("gen=2") && text.contains("handoff=apple"), "{text}");
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn handoff_state_over_the_limit_is_dropped_and_reported() {
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\n[reload]\nhandoff_max_bytes = 16\n",
        bin("hotsock-testworker").display()
    );
    let server = TestServer::start(&config);
    let mut a = connect(&server.url("/")).await;
    assert!(recv(&mut a).await.starts_with("open "));
    send(&mut a, "remember:exactly-16-bytes").await; // 16 bytes: at the limit
    assert_eq!(recv(&mut a).await, "remembered");
    assert!(server.cli(&["reload", "--wait"]).status.success());
    send(&mut a, "recall").await;
    assert_eq!(recv(&mut a).await, "memory=exactly-16-bytes", "state at the limit is handed over");
    send(&mut a, "remember:x").await; // now 18 bytes
    assert_eq!(recv(&mut a).await, "remembered");
    assert!(server.cli(&["reload", "--wait"]).status.success(), "the reload itself still succeeds");
    send(&mut a, "recall").await;
    assert_eq!(recv(&mut a).await, "memory=", "state over the limit is dropped");
    assert!(server.log().contains("handoff state over reload.handoff_max_bytes = 16"), "{}", server.log());
}
