//! The PHP SDK (`sdk/php`) through the real `hotsock` binary, beyond the
//! echo tests: stray output, a throwing handler, queries and channels,
//! tasks, table descriptors and every table operation, handoff, a blocked loop, and the watch loop
//! on examples/echo-php with no build step.

use std::path::Path;
use std::time::{Duration, Instant};

use hotsock_testkit::{
    TempDir, TestServer, close_code, connect, open_testworker, php, recv, repo_root, send, wait_for,
};

/// `[workers]` running the PHP test worker (`sdk/php/tests/testworker.php`).
fn testworker(count: usize, extra: &str) -> String {
    php();
    let script = repo_root().join("sdk/php/tests/testworker.php");
    format!("[workers]\ncommand = [\"php\", \"{}\"]\ncount = {count}\n{extra}", script.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn stray_output_from_a_handler_is_logged_and_breaks_nothing() {
    let server = TestServer::start(&testworker(1, ""));
    let (mut client, _) = open_testworker(&server, "/").await;
    for n in 0..3 {
        send(&mut client, &format!("stray:answer {n}")).await;
        assert_eq!(recv(&mut client).await, format!("answer {n}"));
    }
    send(&mut client, "echo:after").await;
    assert_eq!(recv(&mut client).await, "after");
    wait_for("stray output in the log", || {
        server.log().contains("stray output from user code (logged, sent to no client): oopsoops again").then_some(())
    });
    let status = server.status();
    assert_eq!(status["workers"][0]["crashes"], 0, "{status}");
    assert_eq!(status["workers"][0]["acked"], status["workers"][0]["dispatched"], "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throwing_handler_is_reported_and_the_worker_keeps_serving() {
    let server = TestServer::start(&testworker(1, ""));
    let (mut client, _) = open_testworker(&server, "/").await;
    let pid = server.worker_pid(0);
    send(&mut client, "panic").await;
    send(&mut client, "echo:still here").await;
    assert_eq!(recv(&mut client).await, "still here");
    let status = wait_for("the panic counted", || {
        let status = server.try_status()?;
        (status["workers"][0]["panics"] == 1).then_some(status)
    });
    assert_eq!(status["workers"][0]["pid"].as_u64(), Some(u64::from(pid)), "same process: {status}");
    assert_eq!(status["workers"][0]["crashes"], 0, "{status}");
    assert_eq!(server.status_cell(0, "PANICS").as_deref(), Ok("1"), "status shows the panic");
    assert!(server.log().contains("RuntimeException: test panic requested by conn"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn queries_channels_and_tasks_answer_through_the_php_ctx() {
    let server = TestServer::start(&testworker(2, "task_count = 1\n"));
    let (mut a, conn_a) = open_testworker(&server, "/a?x=1").await;
    let (mut b, conn_b) = open_testworker(&server, "/b").await;
    send(&mut a, "info").await;
    let info = recv(&mut a).await;
    assert!(info.starts_with(&format!("conn={conn_a} path=/a?x=1 uid=none slot=")), "{info}");
    send(&mut a, "list").await;
    assert_eq!(recv(&mut a).await, format!("{conn_a},{conn_b}"));
    send(&mut a, "sub:room").await;
    assert!(recv(&mut a).await.starts_with("subscribed room recovered=false epoch="));
    send(&mut b, "sub:room").await;
    assert!(recv(&mut b).await.starts_with("subscribed room recovered=false"));
    send(&mut b, "pubr:room:hello").await;
    assert_eq!(recv(&mut a).await, "hello");
    let (first, second) = (recv(&mut b).await, recv(&mut b).await);
    let mut got = [first, second];
    got.sort();
    assert_eq!(got, ["hello".to_owned(), "published room offset=1".to_owned()]);
    send(&mut a, "members:room").await;
    assert_eq!(recv(&mut a).await, format!("[[{conn_a},null],[{conn_b},null]]"));
    send(&mut a, "channels").await;
    assert_eq!(recv(&mut a).await, "room");
    send(&mut a, "task:job").await;
    assert_eq!(recv(&mut a).await, "task result done:job");
    send(&mut a, "binary:raw").await;
    assert_eq!(recv(&mut a).await, "raw");
}

/// One PHP test worker with `tables` declared, and a client of it.
async fn with_tables(tables: &str) -> (TestServer, hotsock_testkit::Client) {
    let server = TestServer::start(&format!("{}{tables}", testworker(1, "")));
    let (client, _) = open_testworker(&server, "/").await;
    (server, client)
}

/// Table segments arrive as descriptors on the preamble byte; the SDK
/// takes them (it reaches the rows through the server, the next test) and serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_php_worker_starts_with_shared_tables_declared() {
    let tables = "[tables.counters]\nrows = 16\ncolumns = { n = \"i64\" }\n[tables.names]\nrows = 4\ncolumns = { s = \"str:8\" }\n";
    let (_server, mut client) = with_tables(tables).await;
    send(&mut client, "tables").await;
    assert_eq!(recv(&mut client).await, "tables=counters,names files=2");
}

/// A handler's posted writes (`setLater`) are its own: the SDK runs one
/// handler after another in a pooled fiber, and the refusals of writes
/// one handler posted and never settled must not be thrown at the next
/// handler that fiber runs. Nobody else will see them, so they are logged.
#[tokio::test(flavor = "multi_thread")]
async fn posted_table_writes_belong_to_their_handler_not_its_fiber() {
    let tables = "[tables.counters]\nrows = 4\ncolumns = { n = \"i64\" }\n";
    let (server, mut client) = with_tables(tables).await;
    // Two of the six do not fit: refused, and nobody settles them.
    send(&mut client, "tpost:6").await;
    assert_eq!(recv(&mut client).await, "posted 6");
    for _ in 0..3 {
        send(&mut client, "tget:post-none").await;
        assert_eq!(recv(&mut client).await, "none");
    }
    send(&mut client, "tincr:post-none").await;
    assert!(recv(&mut client).await.starts_with("error: table full"), "the table really is full");
    let refused = "a posted write to table counters was refused and its handler ended without settle(): table full";
    hotsock_testkit::wait_for("both refusals logged", || (server.log().matches(refused).count() == 2).then_some(()));
}

/// Every table operation from PHP, through the server (kinds 0x60-0x67),
/// with the Rust SDK's answers and its errors, typed.
#[tokio::test(flavor = "multi_thread")]
async fn every_table_operation_answers_from_php_as_from_rust() {
    let tables = "[tables.kinds]\nrows = 2\ncolumns = { i = \"i64\", f = \"f64\", s = \"str:4\" }\n";
    let (_server, mut client) = with_tables(tables).await;
    send(&mut client, "tops").await;
    let answer: serde_json::Value = serde_json::from_str(&recv(&mut client).await).expect("json");
    let results: std::collections::HashMap<String, serde_json::Value> = answer
        .as_array()
        .expect("pairs")
        .iter()
        .map(|pair| (pair[0].as_str().expect("name").to_owned(), pair[1].clone()))
        .collect();
    let expect = |what: &str, value: serde_json::Value| assert_eq!(results[what], value, "{what}: {answer}");
    use serde_json::json;
    expect("missing table", json!(null));
    expect("insert", json!(true));
    expect("insert again", json!(false));
    expect("get", json!({"i": 1, "f": 0.5, "s": "ab"}));
    expect("get none", json!(null));
    expect("incr", json!(42));
    expect("incr float", json!(1.75));
    expect("cas miss", json!(false));
    expect("cas hit", json!(true));
    expect("cas no row", json!(false));
    expect("iterate", json!({"a": {"i": -7, "f": 1.75, "s": "cd"}}));
    expect("incr negative", json!(-10));
    expect("wrong type", json!(["error", 5, "column \"f\" holds f64 values", "f", 2, 0]));
    expect("too long", json!(["error", 6, "column \"s\" holds at most 4 bytes; got 5", "s", 5, 4]));
    expect("unknown column", json!(["error", 4, "no column named \"nope\"", "nope", 0, 0]));
    expect("bad key", json!(["error", 3, "key of 65 bytes; keys are 1 to 64 bytes", "", 65, 64]));
    expect("overflow", json!(["error", 7, "incrementing column \"i\" would overflow", "i", 0, 0]));
    expect("delete", json!(true));
    expect("delete again", json!(false));
    expect("fill", json!([true, true]));
    expect("full", json!(["error", 2, "table full: all 2 rows are in use", "", 2, 0]));
    assert_eq!(results.len(), 22, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_handed_to_the_next_php_generation() {
    let server = TestServer::start(&testworker(1, ""));
    let (mut client, _) = open_testworker(&server, "/").await;
    send(&mut client, "remember:apple").await;
    assert_eq!(recv(&mut client).await, "remembered");
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    send(&mut client, "recall").await;
    assert_eq!(recv(&mut client).await, "memory=apple", "generation 2 got generation 1's state");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_php_handler_that_blocks_its_loop_gets_the_worker_replaced() {
    let config = testworker(
        1,
        "heartbeat_ms = 100\nunresponsive_ms = 500\nmax_redeliveries = 1\nrestart_backoff_max_ms = 200\n",
    );
    let server = TestServer::start(&config);
    let (mut victim, _) = open_testworker(&server, "/").await;
    let (mut bystander, _) = open_testworker(&server, "/").await;
    // Ctx::sleep keeps answering heartbeats: three times unresponsive_ms.
    send(&mut bystander, "sleep:1500:slept").await;
    assert_eq!(recv(&mut bystander).await, "slept");
    assert_eq!(server.status()["workers"][0]["crashes"], 0);
    // usleep holds the loop: no Pong, killed, redelivered once, dropped.
    send(&mut victim, "block:60000").await;
    assert_eq!(close_code(&mut victim).await, Some(1011));
    assert!(server.log().contains("no heartbeat answer for"), "{}", server.log());
    wait_for("slot serving again", || (server.status()["workers"][0]["state"] == "ready").then_some(()));
    send(&mut bystander, "echo:after").await;
    assert_eq!(recv(&mut bystander).await, "after");
}

/// Copies `examples/echo-php/worker.php` into `dir`, pointing its
/// `require` at this repository's SDK.
fn copy_echo_php(dir: &Path) -> std::path::PathBuf {
    let source = std::fs::read_to_string(repo_root().join("examples/echo-php/worker.php")).expect("read worker.php");
    let require = "require __DIR__ . '/../../sdk/php/autoload.php';";
    assert!(source.contains(require), "examples/echo-php/worker.php changed; update this test");
    let autoload = repo_root().join("sdk/php/autoload.php");
    let script = dir.join("worker.php");
    std::fs::write(&script, source.replace(require, &format!("require '{}';", autoload.display()))).expect("write");
    script
}

/// The point of PHP workers: no build. Save the file and the next
/// generation runs it, on a connection opened before the edit.
#[tokio::test(flavor = "multi_thread")]
async fn editing_the_php_file_goes_live_without_a_build() {
    php();
    let project = TempDir::new("php-live");
    let script = copy_echo_php(project.path());
    let config = format!(
        "[workers]\ncommand = [\"php\", \"{}\"]\ncount = 2\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\ndebounce_ms = 100\n",
        script.display(),
        project.path().display()
    );
    let server = TestServer::start(&config);
    wait_for("watcher up", || server.try_status()?["watch"]["backend"].as_str().map(|_| ()));
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "before").await;
    assert_eq!(recv(&mut client).await, "v1:before");

    let text = std::fs::read_to_string(&script).expect("read");
    assert!(text.contains("$this->prefix = 'v1:';"), "the PHP echo example changed; update this test");
    let saved = Instant::now();
    std::fs::write(&script, text.replace("$this->prefix = 'v1:';", "$this->prefix = 'v2:';")).expect("edit");

    let within = hotsock_testkit::WAIT;
    hotsock_testkit::until_new_code_answers(&mut client, within, Duration::from_millis(50), || server.log()).await;
    println!("save to live: {:?}", saved.elapsed());
    let status = server.status();
    assert_eq!(status["generation"], 2, "one save, one reload: {status}");
    assert!(status["watch"]["last_build"].is_null(), "no build ran: {status}");
    assert_eq!(status["connections"], 1);

    // A save that does not parse never takes traffic: generation 2 keeps serving.
    std::fs::write(&script, "<?php this is not php;").expect("break");
    wait_for("the broken generation refused", || {
        let status = server.try_status()?;
        (status["last_reload"]["ok"] == false).then_some(())
    });
    send(&mut client, "still").await;
    assert_eq!(recv(&mut client).await, "v2:still");
}
