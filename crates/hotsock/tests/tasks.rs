//! Task workers: results come back exactly once, through task-worker
//! reloads and kills; a full queue is an error; failures are reported.

use std::collections::HashSet;

use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{TestServer, bin, connect, next_text, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_tungstenite::tungstenite::Message;

fn start(extra: &str) -> TestServer {
    TestServer::start(&format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\ntask_count = 2\n{extra}",
        bin("hotsock-testworker").display()
    ))
}

async fn client(server: &TestServer) -> hotsock_testkit::Client {
    hotsock_testkit::open_testworker(server, "/").await.0
}

/// The acceptance scenario: 1,000 tasks from 10 connections while the task
/// workers are reloaded five times; each task's result arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_tasks_through_five_task_reloads_all_finish_once() {
    const CONNS: usize = 10;
    const TASKS: usize = 100;
    let server = start("[reload]\nmax_wait_ms = 500\n");
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let client = client(&server).await;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            for n in 0..TASKS {
                sink.send(Message::text(format!("task:sleep:5:{c}-{n}"))).await.expect("send");
            }
            let mut seen = HashSet::new();
            for _ in 0..TASKS {
                let reply = next_text(&mut stream).await;
                let reply = reply.trim_start_matches("[redelivered]");
                let tag = reply.strip_prefix("done did ").unwrap_or_else(|| panic!("unexpected reply {reply}"));
                assert!(seen.insert(tag.to_owned()), "task {tag} finished twice");
            }
            (sink, stream, seen.len())
        }));
    }
    for k in 0..5 {
        let output = server.cli(&["reload", "--tasks", "--wait"]);
        assert!(output.status.success(), "reload {k}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let mut clients = Vec::new();
    for task in tasks {
        let (sink, stream, finished) = task.await.expect("client");
        assert_eq!(finished, TASKS);
        clients.push((sink, stream));
    }
    let status = server.status();
    assert_eq!(status["tasks"]["completed"], (CONNS * TASKS) as u64, "{status}");
    assert_eq!(status["tasks"]["queued"], 0);
    assert_eq!(status["generation"], 1, "event workers were not reloaded");
    let task_slots: Vec<_> = status["workers"].as_array().expect("w").iter().filter(|w| w["role"] == "task").collect();
    assert_eq!(task_slots.len(), 2);
    assert!(task_slots.iter().all(|w| w["generation"] == 6), "{status}");
    assert_eq!(status["connections"], CONNS as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_task_worker_has_its_tasks_redelivered() {
    let server = start("");
    let mut a = client(&server).await;
    send(&mut a, "task:sleep:1000:slow").await;
    wait_for("task running", || {
        let status = server.try_status()?;
        status["workers"].as_array()?.iter().any(|w| w["role"] == "task" && w["inflight"] == 1).then_some(())
    });
    let status = server.status();
    let busy = status["workers"]
        .as_array()
        .expect("w")
        .iter()
        .find(|w| w["role"] == "task" && w["inflight"] == 1)
        .expect("busy");
    kill(Pid::from_raw(busy["pid"].as_u64().expect("pid") as i32), Signal::SIGKILL).expect("kill");
    assert_eq!(recv(&mut a).await, "done did slow", "the replacement ran it again; the result came once");
    assert_eq!(server.status()["tasks"]["completed"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_task_queue_is_an_error_and_nothing_hangs() {
    let server = start("task_queue_max = 2\n");
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut c = client(&server).await;
        send(&mut c, "task:sleep:500:x").await;
        clients.push(c);
    }
    let mut refused = 0;
    let mut done = 0;
    for c in &mut clients {
        match recv(c).await.as_str() {
            "done did x" => done += 1,
            reply if reply.starts_with("task error: task refused: task queue full (workers.task_queue_max = 2)") => {
                refused += 1
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((done, refused), (2, 2));
    assert_eq!(server.status()["tasks"]["refused"], 2);
    send(&mut clients[0], "task:again").await;
    assert_eq!(recv(&mut clients[0]).await, "done did again", "room again once the queue drained");
}

#[tokio::test(flavor = "multi_thread")]
async fn fire_and_forget_results_reach_on_finish_and_failures_are_reported() {
    let server = start("");
    let mut a = client(&server).await;
    send(&mut a, "ftask:later").await;
    let queued = recv(&mut a).await;
    let id = queued.strip_prefix("queued ").expect("queued id");
    assert_eq!(recv(&mut a).await, format!("finished {id} did later orphaned=false"));
    send(&mut a, "task:panic").await;
    assert_eq!(recv(&mut a).await, "task error: task failed: task panic requested");
    assert_eq!(server.status()["tasks"]["failed"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_task_workers_a_task_is_refused_and_sigusr2_blocks_nothing() {
    let server =
        TestServer::start(&format!("[workers]\ncommand = [\"{}\"]\ncount = 1\n", bin("hotsock-testworker").display()));
    let mut a = client(&server).await;
    send(&mut a, "task:x").await;
    assert_eq!(recv(&mut a).await, "task error: task refused: no task workers are configured (workers.task_count = 0)");
    let pid = server.child.as_ref().expect("server").id();
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    wait_for("SIGUSR2 handled", || server.log().contains("no task workers are configured").then_some(()));
    send(&mut a, "echo:fine").await;
    assert_eq!(recv(&mut a).await, "fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigusr2_reloads_only_the_task_workers() {
    let server = start("");
    let pid = server.child.as_ref().expect("server").id();
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR2).expect("SIGUSR2");
    let status = wait_for("task reload", || {
        let status = server.try_status()?;
        let tasks_done =
            status["workers"].as_array()?.iter().filter(|w| w["role"] == "task").all(|w| w["generation"] == 2);
        tasks_done.then_some(status)
    });
    for worker in status["workers"].as_array().expect("w").iter().filter(|w| w["role"] == "event") {
        assert_eq!(worker["generation"], 1, "{status}");
    }
    let mut a = client(&server).await;
    send(&mut a, "task:after").await;
    assert_eq!(recv(&mut a).await, "done did after");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_draining_dispatcher_still_gets_its_results_and_a_dead_ones_go_to_its_successor() {
    let server = start("");
    let mut a = client(&server).await;
    // Fire and forget, then reload the event workers while it runs: the old
    // worker drains but stays until the result is back, and reports it.
    send(&mut a, "ftask:sleep:800:kept").await;
    let id = recv(&mut a).await.strip_prefix("queued ").expect("queued").to_owned();
    assert!(server.cli(&["reload", "--wait"]).status.success());
    assert_eq!(recv(&mut a).await, format!("finished {id} did kept orphaned=false"));
    // Now kill the dispatcher while its task runs: the slot's next worker
    // gets the result, flagged orphaned (it broadcasts what it cannot place).
    send(&mut a, "ftask:sleep:800:orphan").await;
    let id = recv(&mut a).await.strip_prefix("queued ").expect("queued").to_owned();
    let slot = server.clients()[0]["slot"].as_u64().expect("slot") as usize;
    kill(Pid::from_raw(server.worker_pid(slot) as i32), Signal::SIGKILL).expect("kill");
    assert_eq!(recv(&mut a).await, format!("finished {id} did orphan orphaned=true"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tasks_example_reports_done_while_the_connection_keeps_answering() {
    let server = TestServer::start(&format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\ntask_count = 2\n",
        bin("tasks").display()
    ));
    let mut client = connect(&server.url("/")).await;
    send(&mut client, r#"{"cmd":"report","args":{"seconds":1,"name":"sales"}}"#).await;
    let accepted: serde_json::Value = serde_json::from_str(&recv(&mut client).await).expect("json");
    assert_eq!(accepted["type"], "accepted");
    // The report takes a second; the connection answers meanwhile.
    for _ in 0..3 {
        send(&mut client, r#"{"cmd":"ping"}"#).await;
        assert_eq!(recv(&mut client).await, r#"{"type":"pong"}"#);
    }
    let done: serde_json::Value = serde_json::from_str(&recv(&mut client).await).expect("json");
    assert_eq!(done["type"], "done", "{done}");
    assert_eq!(done["task"], accepted["task"]);
    assert_eq!(done["result"]["name"], "sales");
    assert!(done["result"]["took_ms"].as_u64().expect("ms") >= 1000);
    send(&mut client, "not json").await;
    assert!(recv(&mut client).await.contains("send JSON text"));
}

#[tokio::test(flavor = "multi_thread")]
async fn task_workers_are_recycled_after_task_max_requests_without_losing_a_task() {
    let server = start("task_max_requests = 10\n");
    let mut a = client(&server).await;
    for n in 0..60 {
        send(&mut a, &format!("task:t{n}")).await;
        assert_eq!(recv(&mut a).await, format!("done did t{n}"));
    }
    let status = server.status();
    let recycled: u64 = status["workers"]
        .as_array()
        .expect("w")
        .iter()
        .filter(|w| w["role"] == "task")
        .filter_map(|w| w["recycled"].as_u64())
        .sum();
    assert!(recycled >= 2, "{status}");
    assert_eq!(status["tasks"]["completed"], 60);
}

/// Task workers exist for work that blocks: by default a task that holds
/// its worker's loop longer than `unresponsive_ms` is not treated as a hung
/// worker; `task_unresponsive_ms` opts in.
#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_task_is_not_a_hung_task_worker_unless_asked() {
    let server = start("heartbeat_ms = 100\nunresponsive_ms = 400\n");
    let mut c = client(&server).await;
    send(&mut c, "task:block:1200:long job").await;
    assert_eq!(recv(&mut c).await, "done did long job");
    let status = server.status();
    let crashes: u64 =
        status["workers"].as_array().expect("workers").iter().filter_map(|w| w["crashes"].as_u64()).sum();
    assert_eq!(crashes, 0, "{status}");
    // Heartbeats run for event slots only (status shows their age).
    for worker in status["workers"].as_array().expect("workers") {
        assert_eq!(worker["heartbeat_age_ms"].is_u64(), worker["role"] == "event", "{status}");
    }

    let strict = start("heartbeat_ms = 100\nunresponsive_ms = 400\ntask_unresponsive_ms = 400\nmax_redeliveries = 0\n");
    let mut c = client(&strict).await;
    send(&mut c, "task:block:60000:stuck").await;
    let reply = recv(&mut c).await;
    assert!(reply.starts_with("task error") || reply.contains("crashed"), "{reply}");
    assert!(strict.log().contains("workers.task_unresponsive_ms"), "{}", strict.log());
}
