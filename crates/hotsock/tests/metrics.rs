//! The metrics listener: Prometheus text that `promtool check metrics`
//! accepts and whose counters move with traffic, refusals, reloads and
//! crashes; `/healthz` and `/readyz` with the answers a load balancer needs.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use hotsock_testkit::{TestServer, bin, free_port, open_testworker, raw_http, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn config(extra: &str) -> (String, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n{extra}\n[metrics]\nlisten = \"{metrics}\"\n",
        bin("hotsock-testworker").display()
    );
    (text, metrics)
}

/// `GET path` on the metrics listener: (status code, body); status 0 when
/// nothing answers (yet).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of one sample, `name{labels}` exactly as rendered (labels in
/// the order the server writes them), or `name` alone.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_move_with_traffic_refusals_reloads_and_crashes() {
    let (text, metrics) = config("");
    let server = TestServer::start(&text);
    let (status, body) = get(metrics, "/metrics");
    assert_eq!(status, 200, "{body}");
    let (ok, said) = hotsock_testkit::promtool_check(&body);
    assert!(ok, "promtool check metrics: {said}\n{body}");
    assert_eq!(sample(&body, "hotsock_generation"), Some(1.0));
    assert_eq!(sample(&body, r#"hotsock_worker_phase{slot="0",role="event",phase="ready"}"#), Some(1.0), "{body}");

    let (mut client, _) = open_testworker(&server, "/").await;
    for n in 0..10 {
        send(&mut client, &format!("echo:{n}")).await;
        assert_eq!(recv(&mut client).await, n.to_string());
    }
    // A channel with one member and one publication.
    send(&mut client, "sub:news").await;
    assert!(recv(&mut client).await.starts_with("subscribed news"));
    send(&mut client, "pub:news:hello").await;
    assert_eq!(recv(&mut client).await, "hello");
    // A plain request to the WebSocket port is refused with 426.
    assert!(raw_http(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.starts_with("HTTP/1.1 426"));
    let output = server.cli(&["reload", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let victim = server.worker_pid(0);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).expect("kill");
    let body = wait_for("the crash counted", || {
        let (_, body) = get(metrics, "/metrics");
        (sample(&body, r#"hotsock_worker_exits_total{slot="0",cause="crashed"}"#) == Some(1.0)).then_some(body)
    });
    let (ok, said) = hotsock_testkit::promtool_check(&body);
    assert!(ok, "promtool after traffic, a reload and a crash: {said}\n{body}");
    assert!(sample(&body, r#"hotsock_messages_total{direction="in"}"#).is_some_and(|n| n >= 10.0), "{body}");
    assert!(sample(&body, r#"hotsock_messages_total{direction="out"}"#).is_some_and(|n| n >= 11.0), "{body}");
    assert!(sample(&body, r#"hotsock_message_bytes_total{direction="in"}"#).is_some_and(|n| n >= 60.0), "{body}");
    assert_eq!(sample(&body, r#"hotsock_connections_refused_total{reason="not_upgrade"}"#), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_connections_accepted_total"), Some(1.0), "{body}");
    assert!(sample(&body, "hotsock_handshake_duration_seconds_count").is_some_and(|n| n >= 1.0), "{body}");
    assert_eq!(sample(&body, r#"hotsock_reloads_total{kind="workers",outcome="ok"}"#), Some(1.0), "{body}");
    assert_eq!(sample(&body, r#"hotsock_reload_duration_seconds_count{kind="workers"}"#), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_generation"), Some(2.0), "{body}");
    assert!(sample(&body, r#"hotsock_worker_exits_total{slot="0",cause="stopped"}"#).is_some(), "{body}");
    assert_eq!(sample(&body, r#"hotsock_worker_crashes_total{slot="0",role="event"}"#), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_channels"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_channel_memberships"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_channel_publications_total"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "hotsock_channel_deliveries_total"), Some(1.0), "{body}");
    assert!(sample(&body, "hotsock_channel_history_bytes").is_some_and(|n| n >= 5.0), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_why_during_a_failed_start_and_while_stopping() {
    // Workers that never say Ready: the server is up (healthz) but not
    // ready, and says which slot holds it back, until it gives up.
    let (text, metrics) = config("[reload]\nready_timeout_ms = 3000\n");
    let mut failing = TestServer::spawn(&text, &[("TESTWORKER_MODE", "noready")]);
    let (status, body) = wait_for("the metrics listener", || Some(get(metrics, "/readyz")).filter(|(s, _)| *s != 0));
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready:") && body.contains("starting"), "{body}");
    // Once the supervisor has started them, the answer names the slot.
    let body = wait_for("a slot named", || Some(get(metrics, "/readyz").1).filter(|b| b.contains("slot")));
    assert!(body.starts_with("not ready: slot") && body.contains("is starting"), "{body}");
    assert_eq!(get(metrics, "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(failing.wait_exit(), Some(1));

    let (text, metrics) = config("[reload]\nmax_wait_ms = 10000\n[server]\nclose_timeout_ms = 3000\n");
    let server = TestServer::start(&text);
    assert_eq!(get(metrics, "/readyz"), (200, "ready\n".to_owned()));
    assert_eq!(get(metrics, "/nope").0, 404);
    // A handler that runs for a while keeps the stop busy long enough to
    // look at it.
    let (mut client, _) = open_testworker(&server, "/").await;
    send(&mut client, "sleep:3000:done").await;
    let config_path = server.config.clone();
    let stopper = std::thread::spawn(move || {
        Command::new(bin("hotsock")).args(["stop", "-c"]).arg(config_path).output().expect("stop")
    });
    let (status, body) =
        wait_for("readyz during the stop", || Some(get(metrics, "/readyz")).filter(|(s, _)| *s == 503));
    assert_eq!((status, body.as_str()), (503, "not ready: the server is stopping\n"));
    assert!(stopper.join().expect("stopper").status.success());
}

/// The dashboard in headless Chromium: the workers, and a reload shown live
/// (the screenshot lands in target/dashboard-during-reload.png).
#[test]
fn the_dashboard_shows_workers_and_a_reload_live() {
    use std::io::BufRead;
    let chromium = hotsock_testkit::chromium();
    let node = hotsock_testkit::node();
    let (text, metrics) = config("[reload]\nmax_wait_ms = 3000\n");
    let server = TestServer::start(&text);
    assert_eq!(get(metrics, "/status.json").0, 200);
    let screenshot = hotsock_testkit::repo_root().join("target/dashboard-during-reload.png");
    let mut child = Command::new(node)
        .arg(hotsock_testkit::repo_root().join("tests/node/dashboard_page.js"))
        .arg(format!("http://{metrics}/"))
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    while !seen.ends_with("ready\n") {
        if stdout.read_line(&mut seen).expect("read node's stdout") == 0 {
            break;
        }
    }
    if seen.ends_with("ready\n") {
        // Traffic for the rate chart, then the reload the page must show.
        // and a slow event, so the old worker drains while the page looks.
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let _client = runtime.block_on(async {
            let (mut client, _) = open_testworker(&server, "/").await;
            for n in 0..20 {
                send(&mut client, &format!("echo:{n}")).await;
                assert_eq!(recv(&mut client).await, n.to_string());
            }
            send(&mut client, "sleep:2500:slow").await;
            client
        });
        let output = server.cli(&["reload", "--wait"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read node's stdout");
    seen.push_str(&rest);
    let output = child.wait_with_output().expect("wait for node");
    assert!(
        output.status.success() && seen.ends_with("done\n"),
        "dashboard page: {seen}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(screenshot.exists());
}
