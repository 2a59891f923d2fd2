//! Channels against the real binary: membership that survives reloads and
//! crashes, fan-out in offset order with nothing lost or doubled, recovery
//! after a cut connection, the limits, and join/leave events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hotsock_testkit::{Client, TempDir, TestServer, bin, connect, next_text, recv, send, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

fn config(extra: &str) -> String {
    format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n\n[channels]\nenvelope = \"json\"\n{extra}",
        bin("hotsock-testworker").display()
    )
}

/// A publication as the JSON envelope carries it.
#[derive(Debug, Clone, PartialEq)]
struct Publication {
    channel: String,
    epoch: String,
    offset: u64,
    data: String,
}

/// What one text message from the server is.
#[derive(Debug)]
enum Seen {
    Publication(Publication),
    /// The server's `subscribed` envelope: (channel, epoch, offset, recovered).
    Subscribed(String, String, u64, bool),
    Unsubscribed(String),
    /// Anything the worker pushed.
    Line(String),
}

fn classify(text: &str) -> Seen {
    let Ok(value) = serde_json::from_str::<Value>(text) else { return Seen::Line(text.to_owned()) };
    let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
    match value["type"].as_str() {
        Some("publication") => Seen::Publication(Publication {
            channel: field("channel"),
            epoch: field("epoch"),
            offset: value["offset"].as_u64().expect("offset"),
            data: field("data"),
        }),
        Some("subscribed") => Seen::Subscribed(
            field("channel"),
            field("epoch"),
            value["offset"].as_u64().expect("offset"),
            value["recovered"].as_bool().expect("recovered"),
        ),
        Some("unsubscribed") => Seen::Unsubscribed(field("channel")),
        _ => Seen::Line(text.to_owned()),
    }
}

/// Reads until a worker line starting with `prefix`; returns it and the
/// publications that came before it.
async fn until_line(client: &mut Client, prefix: &str) -> (String, Vec<Publication>) {
    let mut publications = Vec::new();
    loop {
        match classify(&recv(client).await) {
            Seen::Line(line) if line.starts_with(prefix) => return (line, publications),
            Seen::Publication(p) => publications.push(p),
            _ => {}
        }
    }
}

/// Connects with a handshake query and reads up to the `open` greeting:
/// the worker's `subscribed ...` lines and the server's envelopes.
async fn join(server: &TestServer, query: &str) -> (Client, Vec<String>, Vec<Seen>) {
    let mut client = connect(&server.url(&format!("/?{query}"))).await;
    let (mut lines, mut envelopes) = (Vec::new(), Vec::new());
    loop {
        match classify(&recv(&mut client).await) {
            Seen::Line(line) if line.starts_with("open ") => return (client, lines, envelopes),
            Seen::Line(line) => lines.push(line),
            other => envelopes.push(other),
        }
    }
}

/// `key=value` from a worker line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn sigkill(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill");
}

/// Membership is the server's: 40 members keep receiving a stream of
/// publications, each exactly once and in offset order, through 10 reloads
/// and a SIGKILL of every worker, and are all still members afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn membership_survives_reloads_and_killed_workers_under_traffic() {
    const MEMBERS: usize = 40;
    let server = TestServer::start(&config(""));
    let mut members = Vec::new();
    for _ in 0..MEMBERS {
        let (client, lines, _) = join(&server, "join=room").await;
        assert!(lines[0].starts_with("subscribed room"), "{lines:?}");
        members.push(client);
    }
    let publisher_url = server.url("/");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn(async move {
        let (mut publisher, _) = hotsock_testkit::open_testworker_url(&publisher_url).await;
        let mut sent = 0u64;
        while !*stop_rx.borrow_and_update() {
            send(&mut publisher, &format!("pub:room:{sent}")).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        send(&mut publisher, "pubr:room:last").await;
        let (line, _) = until_line(&mut publisher, "published").await;
        (publisher, sent, field(&line, "offset").parse::<u64>().expect("offset"))
    });
    let readers: Vec<_> = members
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let (sink, mut stream) = client.split();
                let mut offsets = Vec::new();
                let mut data = Vec::new();
                loop {
                    if let Seen::Publication(p) = classify(&next_text(&mut stream).await) {
                        offsets.push(p.offset);
                        if p.data == "last" {
                            return (sink, stream, offsets, data);
                        }
                        data.push(p.data);
                    }
                }
            })
        })
        .collect();
    for round in 0..10 {
        let output = server.cli(&["reload", "--wait"]);
        assert!(output.status.success(), "reload {round}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let pids: Vec<u32> = (0..2).map(|slot| server.worker_pid(slot)).collect();
    for pid in pids {
        sigkill(pid);
    }
    server.wait_ready();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).expect("stop publisher");
    let (mut publisher, sent, last) = publisher.await.expect("publisher");
    assert!(sent > 100, "only {sent} publications sent");
    let sent_data: HashSet<String> = (0..sent).map(|n| n.to_string()).collect();
    let mut clients = Vec::new();
    for reader in readers {
        let (sink, stream, offsets, data) = reader.await.expect("reader");
        let expected: Vec<u64> = (1..=last).collect();
        assert_eq!(offsets, expected, "a member saw a gap, a duplicate or disorder");
        // A redelivered `pub:` may publish twice (at least once, with its
        // own offset); none may be missing.
        let got: HashSet<String> = data.into_iter().collect();
        assert_eq!(got, sent_data, "a publication the publisher sent never arrived");
        clients.push((sink, stream));
    }
    // Every member is still one, with the members still connected.
    send(&mut publisher, "members:room").await;
    let members: Vec<Value> = serde_json::from_str(&recv(&mut publisher).await).expect("members json");
    assert_eq!(members.len(), MEMBERS, "membership after 10 reloads and a SIGKILL of every worker");
    assert_eq!(server.status()["channels"]["memberships"], MEMBERS as u64);
    drop(clients);
    let status = server.status();
    assert!(status["channels"]["publications"].as_u64().expect("publications") >= last);
}

/// 3 publishers × 20 channels × 200 members (each in 5 channels): every
/// member gets every publication of its channels once, in offset order,
/// each publisher's in the order sent; a member that leaves a channel gets
/// nothing of it afterwards, and a publisher's push after its publication
/// arrives after it.
#[tokio::test(flavor = "multi_thread")]
async fn fan_out_reaches_every_member_once_in_order_and_leavers_get_nothing_more() {
    const CHANNELS: usize = 20;
    const MEMBERS: usize = 200;
    const PER_PHASE: usize = 5;
    let server = TestServer::start(&config(""));
    let channels_of = |m: usize| -> Vec<String> { (0..5).map(|k| format!("c{}", (m + k) % CHANNELS)).collect() };
    let mut members = Vec::new();
    for m in 0..MEMBERS {
        let (client, lines, envelopes) = join(&server, &format!("join={}", channels_of(m).join(","))).await;
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(envelopes.len(), 5, "one subscribed envelope per channel");
        members.push(client);
    }
    let mut publishers = Vec::new();
    for _ in 0..3 {
        publishers.push(hotsock_testkit::open_testworker_url(&server.url("/")).await.0);
    }
    // Every member reads in its own task; leavers (m < 20) leave their
    // first channel once it reached PER_PHASE * 3 publications.
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(0u8);
    let readers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(m, client)| {
            let channels = channels_of(m);
            let mut phase_rx = phase_rx.clone();
            tokio::spawn(async move {
                let (mut sink, mut stream) = client.split();
                let leaver = m < 20;
                let left = channels[0].clone();
                let mut seen: BTreeMap<String, Vec<Publication>> = BTreeMap::new();
                let mut unsubscribed = false;
                let mut after_leave = Vec::new();
                let full = (3 * PER_PHASE * 2) as u64;
                let half = (3 * PER_PHASE) as u64;
                loop {
                    let done = channels.iter().all(|c| {
                        let want = if leaver && *c == left { half } else { full };
                        seen.get(c).and_then(|v| v.last()).is_some_and(|p| p.offset >= want)
                    });
                    if done && (!leaver || unsubscribed) {
                        break;
                    }
                    match classify(&next_text(&mut stream).await) {
                        Seen::Publication(p) => {
                            if unsubscribed && p.channel == left {
                                after_leave.push(p.clone());
                            }
                            let list = seen.entry(p.channel.clone()).or_default();
                            list.push(p);
                            if leaver && !unsubscribed && list.len() as u64 == half && list[0].channel == left {
                                sink.send(Message::text(format!("unsub:{left}"))).await.expect("unsub");
                            }
                        }
                        Seen::Unsubscribed(channel) => {
                            assert_eq!(channel, left);
                            unsubscribed = true;
                        }
                        _ => {}
                    }
                }
                if leaver {
                    // Everything accepted before the last publication of
                    // phase 2 reaches us before this echo.
                    phase_rx.wait_for(|p| *p == 2).await.expect("phase 2");
                    sink.send(Message::text("echo:fin")).await.expect("fin");
                    loop {
                        match classify(&next_text(&mut stream).await) {
                            Seen::Line(line) if line == "fin" => break,
                            Seen::Publication(p) if p.channel == left => after_leave.push(p),
                            _ => {}
                        }
                    }
                }
                (m, seen, after_leave)
            })
        })
        .collect();
    let publish = |publishers: &mut Vec<Client>, phase: usize| {
        let mut tasks = Vec::new();
        for (p, mut client) in publishers.drain(..).enumerate() {
            tasks.push(tokio::spawn(async move {
                for n in phase * PER_PHASE..(phase + 1) * PER_PHASE {
                    for c in 0..CHANNELS {
                        send(&mut client, &format!("pub:c{c}:p{p}-{n}")).await;
                    }
                }
                // Its publications are applied in order; this reply comes
                // once all of them are.
                send(&mut client, "pubr:none:x").await;
                until_line(&mut client, "published").await;
                client
            }));
        }
        tasks
    };
    for task in publish(&mut publishers, 0) {
        publishers.push(task.await.expect("publisher"));
    }
    // Phase 2 starts once the leavers have left (they leave at `half`).
    wait_for("leavers unsubscribed", || {
        let members: u64 = server.status()["channels"]["memberships"].as_u64()?;
        (members == (MEMBERS * 5 - 20) as u64).then_some(())
    });
    phase_tx.send(1).expect("phase");
    for task in publish(&mut publishers, 1) {
        publishers.push(task.await.expect("publisher"));
    }
    phase_tx.send(2).expect("phase");
    let mut epochs: HashMap<String, String> = HashMap::new();
    for reader in readers {
        let (m, seen, after_leave) = reader.await.expect("reader");
        assert!(after_leave.is_empty(), "member {m} got publications after leaving: {after_leave:?}");
        for (channel, list) in seen {
            let offsets: Vec<u64> = list.iter().map(|p| p.offset).collect();
            let expected: Vec<u64> = (1..=offsets.len() as u64).collect();
            assert_eq!(offsets, expected, "member {m}, {channel}: gap, duplicate or disorder");
            let epoch = epochs.entry(channel.clone()).or_insert_with(|| list[0].epoch.clone());
            assert!(list.iter().all(|p| p.epoch == *epoch), "one epoch per channel");
            for p in 0..3 {
                let mine: Vec<usize> = list
                    .iter()
                    .filter_map(|x| x.data.strip_prefix(&format!("p{p}-")).and_then(|n| n.parse().ok()))
                    .collect();
                let want: Vec<usize> = (0..mine.len()).collect();
                assert_eq!(mine, want, "member {m}, {channel}: publisher {p}'s order");
            }
        }
    }
    // A publisher in the channel: its publication, then its push.
    let mut publisher = publishers.pop().expect("publisher");
    send(&mut publisher, "sub:c0").await;
    until_line(&mut publisher, "subscribed c0").await;
    send(&mut publisher, "pubr:c0:mine").await;
    let (_, before) = until_line(&mut publisher, "published c0").await;
    assert_eq!(before.last().map(|p| p.data.as_str()), Some("mine"), "publication before the push after it");
    let status = server.status();
    assert_eq!(status["channels"]["channels"], CHANNELS + 1, "20 channels plus `none`: {}", status["channels"]);
}

/// Clients whose TCP connection is cut mid-stream reconnect with their last
/// offset and see every publication exactly once across both connections;
/// past the history they are told `recovered = false`; a new server has a
/// new epoch.
#[tokio::test(flavor = "multi_thread")]
async fn cut_clients_recover_without_gap_or_duplicate() {
    const CLIENTS: usize = 10;
    const PUBLICATIONS: u64 = 300;
    let server = TestServer::start(&config("history_size = 400\n"));
    let mut starts = Vec::new();
    for _ in 0..CLIENTS {
        let (client, lines, _) = join(&server, "join=feed").await;
        starts.push((client, lines[0].clone()));
    }
    let publisher_url = server.url("/");
    let publisher = tokio::spawn(async move {
        let (mut publisher, _) = hotsock_testkit::open_testworker_url(&publisher_url).await;
        for n in 1..=PUBLICATIONS {
            send(&mut publisher, &format!("pub:feed:{n}")).await;
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        send(&mut publisher, "pubr:feed:end").await;
        until_line(&mut publisher, "published").await;
        publisher
    });
    let mut tasks = Vec::new();
    for (i, (client, line)) in starts.into_iter().enumerate() {
        let server_url = server.url("/");
        let epoch = field(&line, "epoch").to_owned();
        tasks.push(tokio::spawn(async move {
            let mut client = client;
            let mut offsets = Vec::new();
            let cut_after = 20 + 25 * i as u64;
            // Read some, then vanish without a close frame.
            while offsets.len() < cut_after as usize {
                if let Seen::Publication(p) = classify(&recv(&mut client).await) {
                    offsets.push(p.offset);
                }
            }
            drop(client);
            let last = *offsets.last().expect("read some");
            let url = format!("{server_url}?since=feed.{epoch}.{last}");
            let mut client = connect(&url).await;
            let mut subscribed = None;
            loop {
                match classify(&recv(&mut client).await) {
                    Seen::Line(line) if line.starts_with("subscribed") => subscribed = Some(line),
                    Seen::Subscribed(channel, e, offset, recovered) => {
                        assert!(recovered && channel == "feed", "client {i}: not recovered");
                        assert_eq!((e.as_str(), offset), (epoch.as_str(), last), "continues after what it saw");
                    }
                    Seen::Publication(p) => {
                        offsets.push(p.offset);
                        if p.data == "end" {
                            break;
                        }
                    }
                    Seen::Line(_) | Seen::Unsubscribed(_) => {}
                }
            }
            let line = subscribed.expect("the worker's subscribe answer");
            assert_eq!(field(&line, "recovered"), "true", "{line}");
            (i, offsets)
        }));
    }
    for task in tasks {
        let (i, offsets) = task.await.expect("client");
        let expected: Vec<u64> = (1..=PUBLICATIONS + 1).collect();
        assert_eq!(offsets, expected, "client {i}: gap or duplicate across the reconnect");
    }
    let mut publisher = publisher.await.expect("publisher");
    let status = server.status();
    assert_eq!(status["channels"]["recovered"], CLIENTS as u64);

    // Past the history (400 kept, 301 published, so 501 more: 802):
    // a client that saw offset 10 cannot be caught up.
    send(&mut publisher, "sub:feed").await;
    let (line, _) = until_line(&mut publisher, "subscribed feed").await;
    let epoch = field(&line, "epoch").to_owned();
    for n in 0..500 {
        send(&mut publisher, &format!("pub:feed:more{n}")).await;
    }
    send(&mut publisher, "pubr:feed:more-end").await;
    until_line(&mut publisher, "published").await;
    let (_, lines, envelopes) = join(&server, &format!("since=feed.{epoch}.10")).await;
    assert_eq!(field(&lines[0], "recovered"), "false", "{lines:?}");
    assert_eq!(field(&lines[0], "replayed"), "0");
    assert!(
        matches!(&envelopes[0], Seen::Subscribed(_, e, 802, false) if *e == epoch),
        "the client learns where the live stream starts: {envelopes:?}"
    );
    // Within the history it still works.
    let (_, lines, _) = join(&server, &format!("since=feed.{epoch}.790")).await;
    assert_eq!((field(&lines[0], "recovered"), field(&lines[0], "replayed")), ("true", "12"));

    // Another server run (a restart): the epoch changed, recovery says so.
    drop(server);
    let server = TestServer::start(&config("history_size = 400\n"));
    let (_, lines, _) = join(&server, &format!("since=feed.{epoch}.802")).await;
    assert_eq!(field(&lines[0], "recovered"), "false", "{lines:?}");
    assert_ne!(field(&lines[0], "epoch"), epoch, "a restart must change the epoch");
}

/// Each bad request gets a typed error naming the limit; nothing crashes
/// and the members of the channels involved are unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn bad_channel_requests_get_typed_errors_and_harm_nobody() {
    let server = TestServer::start(&config("max_channels = 5\nmax_members = 3\nmax_channels_per_conn = 2\n"));
    let (mut member, lines, _) = join(&server, "join=lobby").await;
    let epoch = field(&lines[0], "epoch").to_owned();
    let (mut client, _) = hotsock_testkit::open_testworker_url(&server.url("/")).await;
    let long = "x".repeat(256);
    send(&mut client, &format!("sub:{long}")).await;
    let (line, _) = until_line(&mut client, "sub").await;
    assert!(line.contains("bad channel name") && line.contains("at most 255"), "{line}");
    send(&mut client, "sub:a").await;
    send(&mut client, "sub:b").await;
    send(&mut client, "sub:c").await;
    for expected in ["subscribed a", "subscribed b", "sub error"] {
        let (line, _) = until_line(&mut client, "sub").await;
        assert!(line.starts_with(expected), "{line}");
        if expected == "sub error" {
            assert!(line.contains("channels.max_channels_per_conn = 2"), "{line}");
        }
    }
    send(&mut client, "subfrom:lobby:0123456789abcdef:1000000").await;
    let (line, _) = until_line(&mut client, "sub").await;
    // Another epoch than lobby's: not ahead, just not recoverable; but the
    // connection is at its channel limit.
    assert!(line.contains("max_channels_per_conn"), "{line}");
    send(&mut client, "unsub:b").await;
    until_line(&mut client, "unsubscribed b").await;
    send(&mut client, "pubr:lobby:x").await;
    let (line, _) = until_line(&mut client, "published").await;
    let offset: u64 = field(&line, "offset").parse().expect("offset");
    // A position ahead of lobby's head, in lobby's epoch.
    send(&mut client, &format!("subfrom:lobby:{epoch}:{}", offset + 1000)).await;
    let (line, _) = until_line(&mut client, "sub").await;
    assert!(line.contains(&format!("ahead of the channel's latest offset {offset}")), "{line}");
    // max_members = 3: lobby has the member; two more fit, a third not.
    let (_second, lines, _) = join(&server, "join=lobby").await;
    assert!(lines[0].starts_with("subscribed lobby"), "{lines:?}");
    let (_third, lines, _) = join(&server, "join=lobby").await;
    assert!(lines[0].starts_with("subscribed lobby"), "{lines:?}");
    let (_fourth, lines, _) = join(&server, "join=lobby").await;
    assert!(lines[0].contains("channels.max_members = 3"), "{lines:?}");
    // max_channels = 5: lobby, a, none... fill up to the limit.
    for name in ["d", "e", "f", "g"] {
        send(&mut client, &format!("pubr:{name}:x")).await;
    }
    let mut refused = 0;
    for _ in 0..4 {
        let (line, _) = until_line(&mut client, "pub").await;
        if line.contains("channels.max_channels = 5") {
            refused += 1;
        }
    }
    // lobby and a exist (b went with its last member), so d, e and f fill
    // max_channels = 5 and g is refused.
    assert_eq!(refused, 1, "past max_channels a publish is refused");
    // The member still gets lobby's publications, in order.
    send(&mut client, "pubr:lobby:still").await;
    until_line(&mut client, "published").await;
    let publication = loop {
        if let Seen::Publication(p) = classify(&recv(&mut member).await)
            && p.data == "still"
        {
            break p;
        }
    };
    assert_eq!(publication.offset, offset + 1);
    assert!(server.status()["channels"]["refused"].as_u64().expect("refused") >= 5);
}

/// With `CHANNEL_EVENTS` the app hears joins and leaves, a closing
/// connection's leaves before its close; `channels` and `members` answer.
#[tokio::test(flavor = "multi_thread")]
async fn join_and_leave_events_reach_the_app_in_order() {
    let dir = TempDir::new("chlog");
    let log = dir.path().join("worker.log");
    let log_str = log.to_str().expect("utf-8 path");
    let server = TestServer::start_with_env(&config(""), &[("TESTWORKER_LOG", log_str)]);
    let (mut client, lines, _) = join(&server, "join=x,y&uid=77").await;
    assert_eq!(lines.len(), 2);
    send(&mut client, "channels").await;
    let (line, _) = until_line(&mut client, "[").await;
    let mut names: Vec<String> = serde_json::from_str(&line).expect("json");
    names.sort();
    assert_eq!(names, ["x", "y"]);
    send(&mut client, "members:x").await;
    let (line, _) = until_line(&mut client, "[").await;
    let members: Vec<(u64, Option<u64>)> = serde_json::from_str(&line).expect("json");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].1, Some(77));
    let conn = members[0].0;
    send(&mut client, "unsub:x").await;
    until_line(&mut client, "unsubscribed x").await;
    client.close(None).await.expect("close");
    let log_text = wait_for("close logged", || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains(&format!("close conn={conn}")).then_some(text)
    });
    let events: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains(&format!("conn={conn} ")) || l.ends_with(&format!("conn={conn}")))
        .map(|l| l.split(" slot=").next().unwrap_or(l))
        .collect();
    let expected = [
        format!("join conn={conn} ch=x"),
        format!("join conn={conn} ch=y"),
        format!("leave conn={conn} ch=x"),
        format!("leave conn={conn} ch=y"),
        format!("close conn={conn} code=1005"),
    ];
    assert_eq!(events, expected, "log:\n{log_text}");
    let status = server.status();
    assert_eq!(status["channels"]["memberships"], 0);
}
