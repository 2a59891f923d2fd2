//! `hotsock upgrade` against the real binary: the server process is
//! replaced by another build under traffic, five times, with no connection
//! closed and no message lost, doubled or reordered; uids, channels and
//! table rows survive; new connections are accepted throughout; and an
//! upgrade to a binary that cannot start leaves the old server serving.

#[macro_use]
mod each_sdk;
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{Client, TempDir, TestServer, bin, open_testworker_url, recv, send, stamped_hotsock};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The acceptance load: 50 connections, a message every 10 ms each.
const CONNS: usize = 50;
const INTERVAL: Duration = Duration::from_millis(10);
const UPGRADES: usize = 5;
const ROOMS: usize = 5;
/// Messages per write of the bursting connections.
const BURST: usize = 8;

fn config() -> String {
    config_with("")
}

fn config_with(extra: &str) -> String {
    format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n\n[tables.counters]\nrows = 64\ncolumns = {{ n = \"i64\" }}\n{extra}",
        bin("hotsock-testworker").display()
    )
}

/// What one soak connection saw.
struct Seen {
    c: usize,
    sent: usize,
    /// Echo replies, in arrival order (`true`: marked redelivered).
    replies: Vec<(usize, bool)>,
    /// Publications of its room, in arrival order.
    publications: Vec<String>,
    _client: Client,
}

async fn soak_conn(server_url: String, c: usize, stop: Arc<AtomicBool>) -> Seen {
    let url = format!("{server_url}?uid={}&join=room{}", 1000 + c, c % ROOMS);
    let client = hotsock_testkit::connect(&url).await;
    let (mut sink, mut stream) = client.split();
    // Every fifth connection writes bursts of padded messages in one
    // segment, more than the server's 1 KiB read buffer takes at once, so
    // when it parks the server has read past the boundary: those bytes
    // move as the connection's leftover.
    let (burst, pad) = if c.is_multiple_of(5) { (BURST, 200) } else { (1, 0) };
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            for _ in 0..burst {
                let message = format!("echo:{c}:{n}{:pad$}", "");
                sink.feed(Message::text(message)).await.expect("send: the connection was dropped");
                n += 1;
            }
            sink.flush().await.expect("send: the connection was dropped");
        }
        sink.send(Message::text(format!("echo:{c}:end"))).await.expect("send");
        (sink, n)
    });
    let (mut replies, mut publications) = (Vec::new(), Vec::new());
    loop {
        let text = hotsock_testkit::next_text(&mut stream).await;
        if text.starts_with("subscribed ") || text.starts_with("open ") {
            continue;
        }
        if text.starts_with("pub-") {
            publications.push(text);
            continue;
        }
        let (redelivered, text) = match text.strip_prefix("[redelivered]") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, text),
        };
        let (conn, n) = text.split_once(':').unwrap_or_else(|| panic!("unexpected message {text:?}"));
        assert_eq!(conn, c.to_string(), "a reply meant for another connection: {text}");
        if n == "end" {
            break;
        }
        replies.push((n.trim_end().parse().expect("n"), redelivered));
    }
    let (sink, sent) = sender.await.expect("sender");
    Seen { c, sent, replies, publications, _client: sink.reunite(stream).expect("same connection") }
}

/// Opens a new connection every 20 ms and checks it answers, until told
/// to stop; returns how many it opened. Any refused connection fails.
fn newcomers(server_url: String, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) -> JoinHandle<Vec<Client>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (mut client, _) = open_testworker_url(&server_url).await;
            send(&mut client, "echo:new").await;
            assert_eq!(recv(&mut client).await, "new");
            opened.fetch_add(1, Ordering::Relaxed);
            kept.push(client);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kept
    })
}

/// `hotsock upgrade --wait` to the same binary, on a blocking thread.
fn upgrade_in_background(server: &TestServer) -> JoinHandle<std::process::Output> {
    let config = server.config.clone();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin("hotsock"))
            .args(["upgrade", "--wait", "-c"])
            .arg(&config)
            .output()
            .expect("hotsock upgrade")
    })
}

fn upgrade(server: &TestServer, binary: &std::path::Path) -> std::process::Output {
    server.cli(&["upgrade", "--wait", "--binary", binary.to_str().expect("utf8")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_traffic_lose_nothing_and_keep_every_connection() {
    let dir = TempDir::new("upgrade");
    let server = TestServer::start(&config());
    let old_version = server.status()["server_version"].as_str().expect("version").to_owned();
    let builds = [stamped_hotsock(dir.path(), "b"), bin("hotsock")];
    let url = server.url("/");
    // A row written before the first upgrade.
    let (mut checker, _) = open_testworker_url(&url).await;
    for _ in 0..3 {
        send(&mut checker, "tincr:kept").await;
        recv(&mut checker).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut soak = Vec::new();
    for c in 0..CONNS {
        soak.push(tokio::spawn(soak_conn(url.clone(), c, stop.clone())));
    }
    let opened = Arc::new(AtomicUsize::new(0));
    let newcomers = newcomers(url.clone(), stop.clone(), opened.clone());
    hotsock_testkit::wait_for("every soak connection open", || {
        (server.status()["connections"].as_u64()? as usize > CONNS).then_some(())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut pids = vec![server.server_pid().expect("pid")];
    for round in 0..UPGRADES {
        let binary = &builds[round % 2];
        let output = upgrade(&server, binary);
        assert!(
            output.status.success(),
            "upgrade {round} failed: {}\nlog:\n{}",
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = hotsock_testkit::wait_for("the new server answering", || {
            let status = server.try_status()?;
            (status["pid"].as_u64()? as u32 != *pids.last()?).then_some(status)
        });
        pids.push(status["pid"].as_u64().expect("pid") as u32);
        let expected = if round % 2 == 0 { format!("{old_version}+b") } else { old_version.clone() };
        assert_eq!(status["server_version"], expected.as_str(), "round {round}: {said}");
        let upgrade = &status["upgrade"];
        assert_eq!(upgrade["phase"], "done", "{upgrade}");
        assert!(upgrade["connections"].as_u64().expect("moved") as usize > CONNS, "{upgrade}");
        eprintln!("upgrade {round}: {said}");
        hotsock_testkit::wait_for("the old server gone", || {
            (!hotsock_testkit::alive(pids[pids.len() - 2])).then_some(())
        });

        // Uids, channels and table rows as they were.
        let clients = hotsock_testkit::wait_for("clients", || {
            let output = server.cli(&["clients", "--json"]);
            output.status.success().then(|| serde_json::from_slice::<Value>(&output.stdout).ok()).flatten()
        });
        let uids: Vec<u64> = clients.as_array().expect("list").iter().filter_map(|c| c["uid"].as_u64()).collect();
        for c in 0..CONNS {
            assert!(uids.contains(&(1000 + c as u64)), "round {round}: uid {} lost", 1000 + c);
        }
        send(&mut checker, &format!("members:room{}", round % ROOMS)).await;
        let members: Vec<(u64, Option<u64>)> = serde_json::from_str(&recv(&mut checker).await).expect("members");
        assert_eq!(members.len(), CONNS / ROOMS, "round {round}: room members {members:?}");
        send(&mut checker, "tget:kept").await;
        assert_eq!(recv(&mut checker).await, "3", "round {round}: the table row");
        for room in 0..ROOMS {
            send(&mut checker, &format!("pubr:room{room}:pub-{round}")).await;
            let line = recv(&mut checker).await;
            assert!(line.starts_with(&format!("published room{room}")), "{line}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    stop.store(true, Ordering::Relaxed);
    let kept = newcomers.await.expect("newcomers");
    let mut answered = 0;
    for task in soak {
        let seen = task.await.expect("soak connection");
        let ns: Vec<usize> = seen.replies.iter().map(|(n, _)| *n).collect();
        assert!(seen.replies.iter().all(|(_, r)| !r), "conn {}: a redelivery (nothing may be in flight)", seen.c);
        assert_eq!(ns, (0..seen.sent).collect::<Vec<_>>(), "conn {}: lost, doubled or reordered", seen.c);
        let expected: Vec<String> = (0..UPGRADES).map(|r| format!("pub-{r}")).collect();
        assert_eq!(seen.publications, expected, "conn {}: its room's publications", seen.c);
        answered += seen.sent;
    }
    assert!(kept.len() >= UPGRADES, "new connections throughout: {}", kept.len());
    // The totals go on across the upgrades (they are not reset to the last
    // server's share).
    let status = server.status();
    let counted = status["messages_in_total"].as_u64().expect("messages in");
    assert!(counted as usize >= answered, "messages_in_total {counted} < {answered} answered");
    assert!(status["accepted_total"].as_u64().expect("accepted") as usize > CONNS + kept.len(), "{status}");
    eprintln!(
        "{answered} messages answered over {UPGRADES} upgrades; {} new connections",
        opened.load(Ordering::Relaxed)
    );
    let counts: HashMap<u32, ()> = pids.iter().map(|p| (*p, ())).collect();
    assert_eq!(counts.len(), UPGRADES + 1, "a new process each time: {pids:?}");
    checker.close(None).await.ok();
}

/// A binary that exits at start, and one whose config does not load: the
/// upgrade fails with the reason, and the old server keeps every
/// connection and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_server_serving() {
    let dir = TempDir::new("upgrade-fail");
    let server = TestServer::start(&config());
    let pid = server.server_pid().expect("pid");
    let (mut client, _) = open_testworker_url(&server.url("/?uid=7")).await;

    let exits = dir.path().join("exits.sh");
    std::fs::write(&exits, "#!/bin/sh\necho 'new binary: giving up' >&2\nexit 3\n").expect("script");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[workers]\ncommand = [\"x\"]\ncount = 0\n").expect("broken config");
    let bad_config = dir.path().join("bad-config.sh");
    std::fs::write(
        &bad_config,
        format!("#!/bin/sh\nexec {} start -c {}\n", bin("hotsock").display(), broken.display()),
    )
    .expect("script");
    for script in [&exits, &bad_config] {
        std::fs::set_permissions(script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    }

    for (binary, reason) in [(&exits, "exited before it was ready"), (&bad_config, "workers.count")] {
        let output = upgrade(&server, binary);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "an upgrade to {} succeeded", binary.display());
        assert!(stderr.contains(reason), "the reason ({reason}) in: {stderr}");
        assert!(stderr.contains("serves on"), "{stderr}");
        let status = server.status();
        assert_eq!(status["pid"].as_u64(), Some(u64::from(pid)), "the old server serves");
        assert_eq!(status["upgrade"]["phase"], "failed");
        send(&mut client, "echo:still here").await;
        assert_eq!(recv(&mut client).await, "still here");
    }
    // A binary that is not there is the CLI's to say, before the server is asked.
    let missing = upgrade(&server, &dir.path().join("no-such-hotsock"));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("--binary") && stderr.contains("cannot find it"), "{stderr}");
    let clients = server.clients();
    assert_eq!(clients[0]["uid"], 7, "{clients}");
    let text = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("upgrade") && text.contains("failed after") && text.contains("serves on"), "{text}");
}

/// A connection caught with an event in flight and more messages already
/// read from its socket: it parks once the event is acknowledged, at the
/// end of the message it is reading, and the bytes read beyond move with
/// it (without them the last replies never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_caught_mid_burst_moves_with_its_unread_bytes() {
    let server = TestServer::start(&config_with("[limits]\nmax_inflight_per_conn = 1\n"));
    let (mut client, _) = open_testworker_url(&server.url("/")).await;
    // One write: a slow event, then padded messages past the server's
    // 1 KiB read buffer.
    client.feed(Message::text("sleep:400:first")).await.expect("send");
    for k in 0..7 {
        client.feed(Message::text(format!("echo:{k}{:300}", ""))).await.expect("send");
    }
    client.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let upgrade = upgrade_in_background(&server);
    assert_eq!(recv(&mut client).await, "first");
    for k in 0..7 {
        assert_eq!(recv(&mut client).await.trim_end(), k.to_string(), "message {k}");
    }
    let output = upgrade.await.expect("upgrade");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let moved = &server.status()["upgrade"];
    assert_eq!(moved["phase"], "done");
    assert_eq!(moved["connections"], 1, "{moved}");
    send(&mut client, "echo:after").await;
    assert_eq!(recv(&mut client).await, "after");
}

/// An event that outlasts `reload.upgrade_pause_max_ms`: no quiet point,
/// so the upgrade is abandoned and every parked connection serves on; the
/// slow event's reply still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quiet_point_in_time_aborts_and_every_connection_serves_on() {
    let server = TestServer::start(&config_with("[reload]\nupgrade_pause_max_ms = 500\n"));
    let pid = server.server_pid().expect("pid");
    let (mut slow, _) = open_testworker_url(&server.url("/")).await;
    let (mut idle, _) = open_testworker_url(&server.url("/?uid=9")).await;
    send(&mut slow, "sleep:2500:slow done").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pending = upgrade_in_background(&server);
    // While it runs, reloads are refused (the new server is starting the
    // generation serving now) and so is a second upgrade.
    hotsock_testkit::wait_for("the upgrade under way", || {
        (server.status()["upgrade"]["phase"].as_str()? != "failed").then_some(())
    });
    let reload = server.cli(&["reload", "--wait"]);
    let refused = String::from_utf8_lossy(&reload.stderr);
    assert!(!reload.status.success() && refused.contains("a binary upgrade is under way"), "{refused}");
    let second = upgrade(&server, &bin("hotsock"));
    let refused = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && refused.contains("already under way"), "{refused}");
    let output = pending.await.expect("upgrade");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "upgraded with an event in flight");
    assert!(stderr.contains("no quiet point") && stderr.contains("upgrade_pause_max_ms"), "{stderr}");
    assert_eq!(server.status()["pid"].as_u64(), Some(u64::from(pid)));
    send(&mut idle, "echo:idle").await;
    assert_eq!(recv(&mut idle).await, "idle");
    assert_eq!(recv(&mut slow).await, "slow done");
    send(&mut slow, "echo:again").await;
    assert_eq!(recv(&mut slow).await, "again");
    // A later upgrade, with nothing in flight, goes through.
    let output = upgrade(&server, &bin("hotsock"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    send(&mut idle, "echo:moved").await;
    assert_eq!(recv(&mut idle).await, "moved");
    // The idle connection went ahead of the other: its uid came with it.
    let clients = server.clients();
    let uids: Vec<&Value> = clients.as_array().expect("list").iter().map(|c| &c["uid"]).collect();
    assert!(uids.contains(&&Value::from(9)), "{clients}");
    let text = String::from_utf8_lossy(&server.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("upgrade ") && text.contains(": done in ") && text.contains("2 connections moved"), "{text}");
    // The new server stops like any other, and leaves no run files.
    let stopped = server.cli(&["stop"]);
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(!server.dir.path().join("run").join("hotsock.sock").exists(), "the admin socket is removed");
}

/// `hotsock_messages_direct_total` from the metrics listener.
async fn direct_writes(metrics: std::net::SocketAddr) -> u64 {
    let response =
        hotsock_testkit::raw_http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let value = response.lines().find_map(|l| l.strip_prefix("hotsock_messages_direct_total ")?.trim().parse().ok());
    value.unwrap_or_else(|| panic!("no hotsock_messages_direct_total in {response}"))
}

/// Twenty echoes on `client`; how many of the replies were written by the
/// thread that read them from the worker (the connection's task idle).
async fn direct_echoes(client: &mut Client, metrics: std::net::SocketAddr) -> u64 {
    let before = direct_writes(metrics).await;
    for i in 0..20 {
        send(client, &format!("echo:{i}")).await;
        assert_eq!(recv(client).await, i.to_string());
    }
    direct_writes(metrics).await - before
}

/// A connection parked for an upgrade that is then abandoned serves on as
/// before the park, its replies written directly again (not only by its
/// task, which would work too, but wake a task per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_parked_by_an_aborted_upgrade_get_direct_writes_back() {
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], hotsock_testkit::free_port()));
    let extra = format!("[reload]\nupgrade_pause_max_ms = 300\n\n[metrics]\nlisten = \"{metrics}\"\n");
    let server = TestServer::start(&config_with(&extra));
    let (mut slow, _) = open_testworker_url(&server.url("/")).await;
    let (mut idle, _) = open_testworker_url(&server.url("/")).await;
    let before = direct_echoes(&mut idle, metrics).await;
    assert!(before >= 10, "before any park, {before} of 20 replies written directly");
    send(&mut slow, "sleep:1500:slow done").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let output = upgrade_in_background(&server).await.expect("upgrade");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("no quiet point"), "{stderr}");
    assert_eq!(recv(&mut slow).await, "slow done");
    let after = direct_echoes(&mut idle, metrics).await;
    assert!(after >= 10, "after the aborted upgrade, {after} of 20 replies written directly (before: {before})");
}

/// Channel histories move with their epochs and offsets: a client that
/// saw part of a channel before an upgrade recovers the rest from the new
/// server, nothing twice; a position ahead of the head is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_recovered_from_the_new_server_at_the_position_seen_before() {
    let server = TestServer::start(&config());
    let (mut publisher, _) = open_testworker_url(&server.url("/")).await;
    send(&mut publisher, "sub:news").await;
    let line = recv(&mut publisher).await;
    let epoch = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("epoch="))
        .unwrap_or_else(|| panic!("no epoch in {line:?}"))
        .to_owned();
    for k in 1..=3 {
        send(&mut publisher, &format!("pubx:news:m{k}")).await;
    }
    send(&mut publisher, "pubr:news:m4").await;
    assert_eq!(recv(&mut publisher).await, "m4", "the publisher is a member too");
    assert_eq!(recv(&mut publisher).await, "published news offset=4");

    let output = upgrade(&server, &bin("hotsock"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Saw up to offset 1 before the upgrade: 2, 3 and 4 are replayed.
    let (mut late, _) = open_testworker_url(&server.url("/")).await;
    send(&mut late, &format!("subfrom:news:{epoch}:1")).await;
    let got: Vec<String> = [recv(&mut late).await, recv(&mut late).await, recv(&mut late).await, recv(&mut late).await]
        .into_iter()
        .collect();
    assert_eq!(&got[..3], ["m2", "m3", "m4"], "{got:?}");
    assert!(got[3].contains(&format!("recovered=true epoch={epoch} offset=4 replayed=3")), "{got:?}");
    // The moved member still gets what is published now, at the next offset.
    send(&mut late, "pubr:news:m5").await;
    assert_eq!(recv(&mut late).await, "m5");
    assert_eq!(recv(&mut late).await, "published news offset=5");
    assert_eq!(recv(&mut publisher).await, "m5");
    let (mut ahead, _) = open_testworker_url(&server.url("/")).await;
    send(&mut ahead, &format!("subfrom:news:{epoch}:9")).await;
    let refused = recv(&mut ahead).await;
    assert!(refused.starts_with("sub error") && refused.contains('9'), "{refused}");

    // SIGURG upgrades too (to the binary the server was started from).
    let before = server.server_pid().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before as i32), nix::sys::signal::Signal::SIGURG).expect("kill");
    let status = hotsock_testkit::wait_for("the upgrade by signal", || {
        let status = server.try_status()?;
        (status["pid"].as_u64()? != u64::from(before) && status["upgrade"]["phase"] == "done").then_some(status)
    });
    assert_eq!(status["upgrade"]["from_pid"].as_u64(), Some(u64::from(before)));
    send(&mut late, "echo:after the signal").await;
    assert_eq!(recv(&mut late).await, "after the signal");
}

/// A client in the middle of a message when parking begins: the
/// connection reads on to the end of that message (the rest comes 300 ms
/// later), answers it, and only then parks and moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_caught_mid_message_finishes_it_and_then_moves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(&config());
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("response"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    assert!(server_text(&mut tcp).await.starts_with("open "), "the greeting");
    let frame = masked_text("echo:split in two");
    tcp.write_all(&frame[..9]).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pending = upgrade_in_background(&server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "the upgrade waits for the message to end");
    tcp.write_all(&frame[9..]).await.expect("second half");
    assert_eq!(server_text(&mut tcp).await, "split in two");
    let output = pending.await.expect("upgrade");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    tcp.write_all(&masked_text("echo:after")).await.expect("after");
    assert_eq!(server_text(&mut tcp).await, "after", "the new server answers on the same socket");
}

/// A client's text frame (masked, short).
fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The next server text frame (unmasked, short).
async fn server_text(tcp: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut header = [0u8; 2];
        tcp.read_exact(&mut header).await.expect("frame header");
        assert_eq!(header[0], 0x81, "a final text frame");
        let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
        tcp.read_exact(&mut payload).await.expect("frame payload");
        String::from_utf8(payload).expect("utf8")
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("a frame in time")
}

each_sdk!(an_upgrade_keeps_every_connection_with_either_sdk);

/// Both worker SDKs across upgrades: the new server starts the same
/// generation of the Rust or the PHP echo worker, and 10 connections
/// talking in lockstep through two upgrades lose nothing.
async fn an_upgrade_keeps_every_connection_with_either_sdk(worker: common::EchoWorker) {
    let server = TestServer::start(&worker.config(2, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let mut talkers = Vec::new();
    for c in 0..10 {
        let (url, stop) = (server.url("/"), stop.clone());
        talkers.push(tokio::spawn(async move {
            let mut client = hotsock_testkit::connect(&url).await;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                send(&mut client, &format!("{c}:{n}")).await;
                assert_eq!(recv(&mut client).await, format!("v1:{c}:{n}"), "conn {c}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            n
        }));
    }
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let output = upgrade(&server, &bin("hotsock"));
        assert!(output.status.success(), "upgrade {round}: {}", String::from_utf8_lossy(&output.stderr));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for talker in talkers {
        assert!(talker.await.expect("talker") > 10, "each connection kept talking");
    }
    assert_eq!(server.status()["upgrade"]["connections"], 10);
}
