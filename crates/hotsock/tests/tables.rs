//! Shared tables through the real server: every worker sees the same rows,
//! which outlive reloads and crashes; limits come back as errors. Each test
//! runs against the Rust test worker (the segment mapped in the worker)
//! and the PHP one (every operation run by the server, kinds 0x60-0x67).

#[macro_use]
mod each_sdk;

use each_sdk::Sdk;
use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{TestServer, bin, recv, send, wait_for};
use tokio_tungstenite::tungstenite::Message;

fn start(sdk: Sdk, rows: u32) -> TestServer {
    let command = sdk.command("hotsock-testworker", "sdk/php/tests/testworker.php");
    TestServer::start(&format!(
        "[workers]\ncommand = {command}\ncount = 2\n[tables.counters]\nrows = {rows}\ncolumns = {{ n = \"i64\", label = \"str:8\" }}\n"
    ))
}

each_sdk!(
    workers_share_rows_and_counters_stay_exact,
    rows_survive_reloads_and_crashes,
    a_full_table_is_an_error_the_worker_sees,
    table_round_trips_per_second
);

async fn client(server: &TestServer) -> hotsock_testkit::Client {
    hotsock_testkit::open_testworker(server, "/").await.0
}

async fn workers_share_rows_and_counters_stay_exact(sdk: Sdk) {
    let server = start(sdk, 64);
    // Four connections (two per slot) increment the same key concurrently.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client(&server).await;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            for _ in 0..250 {
                sink.send(Message::text("tincr:shared")).await.expect("send");
            }
            for _ in 0..250 {
                let reply = hotsock_testkit::next_text(&mut stream).await;
                assert!(reply.parse::<i64>().is_ok(), "{reply}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let mut reader = client(&server).await;
    send(&mut reader, "tget:shared").await;
    assert_eq!(recv(&mut reader).await, "1000");
    let status = server.status();
    assert_eq!(status["tables"][0]["name"], "counters");
    assert_eq!(status["tables"][0]["rows"], 1);
    assert_eq!(status["tables"][0]["capacity"], 64);
}

async fn rows_survive_reloads_and_crashes(sdk: Sdk) {
    let server = start(sdk, 64);
    let mut a = client(&server).await;
    for _ in 0..5 {
        send(&mut a, "tincr:persist").await;
        recv(&mut a).await;
    }
    assert!(server.cli(&["reload", "--wait"]).status.success());
    send(&mut a, "tget:persist").await;
    assert_eq!(recv(&mut a).await, "5", "written before the reload, read after it");
    // A crash of a worker changes nothing either.
    for slot in 0..2 {
        let pid = server.worker_pid(slot);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        wait_for("replacement", || {
            let worker = server.try_status()?["workers"][slot].clone();
            (worker["crashes"] == 1 && worker["state"] == "ready").then_some(())
        });
    }
    send(&mut a, "tincr:persist").await;
    assert_eq!(recv(&mut a).await, "6");
}

async fn a_full_table_is_an_error_the_worker_sees(sdk: Sdk) {
    let server = start(sdk, 2);
    let mut a = client(&server).await;
    for key in ["one", "two"] {
        send(&mut a, &format!("tincr:{key}")).await;
        assert_eq!(recv(&mut a).await, "1");
    }
    send(&mut a, "tincr:three").await;
    assert_eq!(recv(&mut a).await, "error: table full: all 2 rows are in use");
    send(&mut a, &format!("tincr:{}", "k".repeat(65))).await;
    assert!(recv(&mut a).await.starts_with("error: key of 65 bytes"));
}

/// What a table operation costs from each SDK: a Rust worker's `incr` is
/// a few atomics on its own mapping, a PHP worker's is a round trip
/// through the server (printed, for docs/protocol.md; bounded so a broken
/// path that stalls is caught, not so that a loaded host fails).
async fn table_round_trips_per_second(sdk: Sdk) {
    const OPS: u32 = 20_000;
    let server = start(sdk, 64);
    let mut a = client(&server).await;
    send(&mut a, &format!("tbench:{OPS}")).await;
    let answer = recv(&mut a).await;
    let us: f64 = answer
        .strip_prefix(&format!("{OPS} ops in "))
        .and_then(|rest| rest.strip_suffix(" us"))
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {answer:?}"));
    let per_second = f64::from(OPS) / (us.max(1.0) / 1e6);
    println!("{sdk:?} worker: {OPS} incr in {us} us, {per_second:.0} ops/s, {:.2} us each", us / f64::from(OPS));
    send(&mut a, "tget:bench").await;
    assert_eq!(recv(&mut a).await, OPS.to_string(), "every increment landed");
    assert!(per_second > 1_000.0, "{per_second:.0} ops/s");
}

#[test]
fn bad_table_declarations_name_the_key() {
    let dir = hotsock_testkit::TempDir::new("tables");
    let config = dir.path().join("hotsock.toml");
    std::fs::write(&config, "[workers]\ncommand = [\"x\"]\n[tables.players]\nrows = 10\ncolumns = { uid = \"i32\" }\n")
        .expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&config).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(":5: `tables.players.columns`") && stderr.contains("i32"), "{stderr}");
    std::fs::write(&config, "[workers]\ncommand = [\"x\"]\n[tables.players]\nrows = 0\ncolumns = { uid = \"i64\" }\n")
        .expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&config).output().expect("run");
    assert!(String::from_utf8_lossy(&output.stderr).contains("`tables.players.rows` is 0"));
}
