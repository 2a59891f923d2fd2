//! Every event and command of the worker SDK, end to end, through the real
//! binary and the test worker (`hotsock-testworker`).

use futures_util::SinkExt;
use hotsock_testkit::{TempDir, TestServer, bin, close_code, raw_http, recv, send, wait_for};
use serde_json::Value;

struct Setup {
    server: TestServer,
    log: std::path::PathBuf,
    _dir: TempDir,
}

fn start(workers_extra: &str, extra: &str) -> Setup {
    let dir = TempDir::new("sdk");
    let log = dir.path().join("worker.log");
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n{workers_extra}\n{extra}",
        bin("hotsock-testworker").display()
    );
    let server = TestServer::start_with_env(&config, &[("TESTWORKER_LOG", log.to_str().expect("utf8"))]);
    Setup { server, log, _dir: dir }
}

impl Setup {
    fn log_lines(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

use hotsock_testkit::open_testworker as open;

#[tokio::test(flavor = "multi_thread")]
async fn handshake_binds_uid_and_send_to_uid_reaches_every_connection_of_it() {
    let setup = start("", "");
    let server = &setup.server;
    let (mut a1, _) = open(server, "/?uid=7").await;
    let (mut a2, _) = open(server, "/?uid=7").await;
    let (mut b, b_id) = open(server, "/?uid=8").await;
    send(&mut b, "to_uid:7:for seven").await;
    assert_eq!(recv(&mut a1).await, "for seven");
    assert_eq!(recv(&mut a2).await, "for seven");
    // The `bind` command rebinds b from 8 to 9.
    send(&mut b, "bind:9").await;
    assert_eq!(recv(&mut b).await, "bound");
    send(&mut a1, "to_uid:9:for nine").await;
    assert_eq!(recv(&mut b).await, "for nine");
    send(&mut a1, "to_uid:8:nobody").await;
    send(&mut b, "echo:sync").await;
    assert_eq!(recv(&mut b).await, "sync", "uid 8 must no longer reach b");
    let clients = server.clients();
    let entry = clients.as_array().expect("list").iter().find(|c| c["conn"] == b_id).expect("b listed");
    assert_eq!(entry["uid"], 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_reaches_all_open_connections() {
    let setup = start("", "");
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(open(&setup.server, "/").await.0);
    }
    send(&mut clients[0], "broadcast:hello all").await;
    for client in &mut clients {
        assert_eq!(recv(client).await, "hello all");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn conn_info_and_list_describe_the_connections() {
    let setup = start("", "");
    let (mut a, a_id) = open(&setup.server, "/room?uid=42").await;
    let (_b, b_id) = open(&setup.server, "/other").await;
    send(&mut a, "info").await;
    let info: Value = serde_json::from_str(&recv(&mut a).await).expect("json");
    assert_eq!(info["conn"], a_id);
    assert_eq!(info["path"], "/room?uid=42");
    assert_eq!(info["uid"], 42);
    assert!(info["peer"].as_str().expect("peer").starts_with("127.0.0.1:"));
    send(&mut a, &format!("info_of:{}", b_id + 1000)).await;
    assert_eq!(recv(&mut a).await, "none");
    send(&mut a, "list").await;
    let ids: Vec<u64> = serde_json::from_str(&recv(&mut a).await).expect("json");
    assert_eq!(ids, vec![a_id, b_id]);
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_close_sends_code_after_earlier_pushes() {
    let setup = start("", "");
    let (mut a, _) = open(&setup.server, "/").await;
    send(&mut a, "close:4000:bye").await;
    assert_eq!(close_code(&mut a).await, Some(4000));
    let (mut b, b_id) = open(&setup.server, "/").await;
    send(&mut b, "push_close:last words").await;
    assert_eq!(recv(&mut b).await, "last words");
    assert_eq!(close_code(&mut b).await, Some(1000));
    // on_close ran with the code for the worker-initiated close.
    wait_for("on_close logged", || setup.log_lines().contains(&format!("close conn={b_id} code=1000")).then_some(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn client_close_code_reaches_on_close() {
    let setup = start("", "");
    let (mut a, a_id) = open(&setup.server, "/").await;
    a.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: 4321.into(), reason: "leaving".into() }))
        .await
        .expect("close");
    wait_for("on_close logged", || setup.log_lines().contains(&format!("close conn={a_id} code=4321")).then_some(()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_is_logged_and_the_worker_keeps_serving() {
    let setup = start("", "");
    let (mut a, a_id) = open(&setup.server, "/").await;
    let pid = setup.server.worker_pid((a_id % 2) as usize);
    send(&mut a, "panic").await;
    send(&mut a, "echo:after panic").await;
    assert_eq!(recv(&mut a).await, "after panic");
    assert_eq!(setup.server.worker_pid((a_id % 2) as usize), pid, "the worker process survived");
    assert!(setup.server.log().contains("handler panicked"), "{}", setup.server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_rejection_status_and_accept_headers_come_from_the_worker() {
    let setup = start("", "");
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    let rejected = raw_http(setup.server.addr, upgrade("/?status=401").as_bytes()).await;
    assert!(rejected.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{rejected}");
    assert!(rejected.ends_with("rejected by test worker with 401\n"), "{rejected}");
    let (_, response) = tokio_tungstenite::connect_async(setup.server.url("/")).await.expect("connect");
    assert_eq!(response.headers().get("x-testworker").map(|v| v.as_bytes()), Some(&b"yes"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_the_worker_does_not_decide_in_time_gets_503() {
    let setup = start("", "[server]\nhandshake_timeout_ms = 300\n");
    let upgrade = "GET /?slow=3000 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let response = raw_http(setup.server.addr, upgrade.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_callbacks_run_at_start_and_stop() {
    let mut setup = start("", "");
    let (mut a, _) = open(&setup.server, "/").await;
    send(&mut a, "binary:raw bytes").await;
    assert_eq!(recv(&mut a).await, "raw bytes");
    let log = setup.log_lines();
    assert!(log.contains("start slot=0 gen=1") && log.contains("start slot=1 gen=1"), "{log}");
    let output = setup.server.cli(&["stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(setup.server.wait_exit(), Some(0));
    let log = setup.log_lines();
    assert!(log.contains("stop slot=0") && log.contains("stop slot=1"), "{log}");
    assert_eq!(close_code(&mut a).await, Some(1001));
}

/// Every mode keeps one connection's events in order, even when the
/// connection's events could go to any slot.
async fn order_holds(dispatch: &str) {
    let setup = start(&format!("dispatch = \"{dispatch}\""), "");
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(open(&setup.server, "/?uid=5").await.0);
    }
    for client in &mut clients {
        for n in 0..100 {
            // Some events take a while, so later ones would overtake them
            // if the sticky rule did not hold.
            let message = if n % 10 == 0 { format!("sleep:5:{n}") } else { format!("echo:{n}") };
            client.send(tokio_tungstenite::tungstenite::Message::text(message)).await.expect("send");
        }
    }
    for client in &mut clients {
        for n in 0..100 {
            assert_eq!(recv(client).await, n.to_string(), "dispatch = {dispatch}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn order_holds_with_dispatch_uid() {
    order_holds("uid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_holds_with_dispatch_round_robin() {
    order_holds("round-robin").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn order_holds_with_dispatch_least_busy() {
    order_holds("least-busy").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_one_connection_over_slots_when_idle() {
    let setup = start("dispatch = \"round-robin\"", "");
    let (mut a, _) = open(&setup.server, "/").await;
    let mut slots = std::collections::HashSet::new();
    for n in 0..6 {
        send(&mut a, &format!("seq:{n}")).await;
        let reply = recv(&mut a).await;
        slots.insert(reply.rsplit('=').next().expect("slot").to_owned());
    }
    assert_eq!(slots.len(), 2, "an idle connection's events rotate over both slots");
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_threads_sets_the_worker_runtime_size() {
    // Default: one event loop, so the worker process is a single thread.
    let single = start("", "");
    let (mut client, _) = open(&single.server, "/").await;
    send(&mut client, "threads").await;
    assert_eq!(recv(&mut client).await, "threads 1");
    // threads = 3: the main thread plus three runtime threads, and handlers
    // still run and answer.
    let multi = start("threads = 3", "");
    let (mut client, _) = open(&multi.server, "/").await;
    send(&mut client, "threads").await;
    let reply = recv(&mut client).await;
    let threads: usize = reply.strip_prefix("threads ").and_then(|n| n.parse().ok()).expect("a thread count");
    assert!(threads >= 4, "{reply}");
    send(&mut client, "echo:still serving").await;
    assert_eq!(recv(&mut client).await, "still serving");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_to_a_client_that_stops_reading_arrive_whole_and_in_order_once_it_reads_again() {
    // 8 MB of pushes to a client that reads nothing for a while: more than
    // loopback's socket buffers hold, so the server's direct writes to the
    // idle connection's socket stop mid-frame and its task finishes those
    // frames and writes the rest. The limit is raised so that waiting is
    // not the slow-reader close.
    let setup = start("", "[limits]\noutput_buffer_bytes = 16777216");
    let (mut client, _) = open(&setup.server, "/").await;
    const PUSHES: usize = 400;
    const SIZE: usize = 20_000;
    send(&mut client, &format!("count:{PUSHES}:{SIZE}")).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for i in 0..PUSHES {
        let reply = recv(&mut client).await;
        let (n, pad) = reply.split_once(':').unwrap_or(("", ""));
        assert_eq!(n, i.to_string(), "push {i} out of order: {}", &reply[..reply.len().min(20)]);
        assert!(pad.len() == SIZE && pad.bytes().all(|b| b == b'x'), "push {i} damaged: {} bytes", pad.len());
    }
    send(&mut client, "echo:after").await;
    assert_eq!(recv(&mut client).await, "after");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_pushes_arrive_complete_and_in_order_across_write_batches() {
    // 3,000 pushes of 200 bytes: about ten of the server's write batches.
    let setup = start("", "");
    let (mut client, _) = open(&setup.server, "/").await;
    // Nothing else is sent until all have arrived: a push left behind in a
    // batch would have nothing to push it out.
    send(&mut client, "count:3000:200").await;
    for i in 0..3000 {
        let reply = recv(&mut client).await;
        let n = reply.split_once(':').map(|(n, _)| n).unwrap_or("");
        assert_eq!(n, i.to_string(), "push {i} out of order: {}", &reply[..reply.len().min(20)]);
        assert_eq!(reply.len(), i.to_string().len() + 1 + 200);
    }
    send(&mut client, "echo:after").await;
    assert_eq!(recv(&mut client).await, "after");
}
