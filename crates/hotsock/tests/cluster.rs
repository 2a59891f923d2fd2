//! Cluster mode against the real binary: three `hotsock` nodes on
//! 127.0.0.1 sharing a real `redis-server` started by the test.

use std::collections::HashMap;
use std::time::Duration;

use hotsock_testkit::{Client, RedisServer, TestServer, bin, open_testworker, recv, send, wait_for};
use serde_json::Value;

fn node_config(redis: &RedisServer, node: &str, extra: &str) -> String {
    format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 2\n\n[channels]\nenvelope = \"json\"\n\n[cluster]\nredis = \"{}\"\nnode_id = \"{node}\"\nheartbeat_ms = 100\nnode_ttl_ms = 600\n{extra}",
        bin("hotsock-testworker").display(),
        redis.url()
    )
}

fn nodes(redis: &RedisServer, count: usize) -> Vec<TestServer> {
    (0..count).map(|i| TestServer::start(&node_config(redis, &format!("n{i}"), ""))).collect()
}

fn cluster_status(server: &TestServer) -> Value {
    server.status()["cluster"].clone()
}

/// Reads until a message satisfying `wanted` arrives (others are kept out
/// of the way), failing after a few seconds.
async fn recv_until(client: &mut Client, wanted: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let text = recv(client).await;
            if wanted(&text) {
                return text;
            }
        }
    })
    .await
    .expect("the expected message within 5 s")
}

#[macro_use]
mod each_sdk;
use each_sdk::Sdk;

each_sdk!(uid_sends_reach_only_the_nodes_holding_the_uid_and_broadcasts_reach_all);

/// Both SDKs' test workers: routing and presence are the server's, and the
/// PHP SDK speaks the cluster's frames (presence) like the Rust one.
async fn uid_sends_reach_only_the_nodes_holding_the_uid_and_broadcasts_reach_all(sdk: Sdk) {
    let redis = RedisServer::start();
    let command = sdk.command("hotsock-testworker", "sdk/php/tests/testworker.php");
    let cluster: Vec<TestServer> = (0..3)
        .map(|i| {
            let config = node_config(&redis, &format!("n{i}"), "");
            let rust = format!("command = [\"{}\"]", bin("hotsock-testworker").display());
            assert!(config.contains(&rust), "the node config names the Rust test worker: {config}");
            let config = config.replacen(&rust, &format!("command = {command}"), 1);
            TestServer::start(&config)
        })
        .collect();
    let mut clients = Vec::new();
    for (i, server) in cluster.iter().enumerate() {
        let (mut client, _) = open_testworker(server, "/").await;
        send(&mut client, &format!("bind:{}", 100 + i)).await;
        recv_until(&mut client, |t| t.starts_with("bound")).await;
        clients.push(client);
    }
    wait_for("every node to see three live nodes", || {
        cluster.iter().all(|s| cluster_status(s)["nodes"] == 3).then_some(())
    });
    // From node 1 to uid 100, held by node 0 only.
    send(&mut clients[1], "to_uid:100:hello from n1").await;
    assert_eq!(recv(&mut clients[0]).await, "hello from n1");
    wait_for("node 0 to count the delivery", || (cluster_status(&cluster[0])["received"] == 1).then_some(()));
    assert_eq!(cluster_status(&cluster[1])["routed"], 1, "one node reached");
    assert_eq!(cluster_status(&cluster[2])["received"], 0, "node 2 holds no uid 100 and gets nothing");
    // A broadcast from node 2 reaches every node's connections, once.
    send(&mut clients[2], "broadcast:to everyone").await;
    for client in &mut clients {
        assert_eq!(recv(client).await, "to everyone");
    }
    // Presence, asked on node 2, of a uid held by node 0.
    send(&mut clients[2], "presence:100").await;
    let presence: Value = serde_json::from_str(&recv(&mut clients[2]).await).expect("json");
    assert_eq!(presence[0][0], "n0", "{presence}");
    assert_eq!(presence.as_array().map(Vec::len), Some(1), "{presence}");
    // A channel with members on node 0 only: nodes 1 and 2 get none of
    // its traffic (they do not follow it).
    send(&mut clients[0], "sub:only-here").await;
    recv_until(&mut clients[0], |t| t.starts_with("subscribed ")).await;
    let before: Vec<Value> = cluster.iter().map(|s| cluster_status(s)["received"].clone()).collect();
    send(&mut clients[1], "pubr:only-here:x").await;
    recv_until(&mut clients[1], |t| t.starts_with("published ")).await;
    recv_until(&mut clients[0], |t| publication(t).is_some()).await;
    wait_for("node 0 to count the publication", || {
        (cluster_status(&cluster[0])["received"].as_u64() > before[0].as_u64()).then_some(())
    });
    for node in 1..3 {
        assert_eq!(cluster_status(&cluster[node])["received"], before[node], "node {node} follows no such channel");
    }
    // Nothing arrived twice.
    for client in &mut clients {
        send(client, "echo:done").await;
        assert_eq!(recv_until(client, |t| publication(t).is_none()).await, "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_removes_presence_at_once() {
    let redis = RedisServer::start();
    // A long TTL: only the stop itself can explain a quick disappearance.
    let long = |id: &str| node_config(&redis, id, "").replace("node_ttl_ms = 600", "node_ttl_ms = 30000");
    let (first, mut second) = (TestServer::start(&long("n0")), TestServer::start(&long("n1")));
    let (mut asker, _) = open_testworker(&first, "/").await;
    let (_held, _) = open_testworker(&second, "/?uid=31").await;
    send(&mut asker, "presence:31").await;
    assert!(recv(&mut asker).await.contains("\"n1\""));
    let output = second.cli(&["stop"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stopped = std::time::Instant::now();
    let _ = second.wait_exit();
    send(&mut asker, "presence:31").await;
    assert_eq!(recv(&mut asker).await, "[]", "gone with the stop, {:?} after it", stopped.elapsed());
    assert!(stopped.elapsed() < Duration::from_secs(10));
    wait_for("one live node", || (cluster_status(&first)["nodes"] == 1).then_some(()));
}

#[test]
fn an_unreachable_redis_at_start_is_a_clear_error() {
    let port = hotsock_testkit::free_port();
    let config = format!(
        "[workers]\ncommand = [\"{}\"]\n\n[cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nconnect_timeout_ms = 500\n",
        bin("hotsock-testworker").display()
    );
    let mut server = TestServer::spawn(&config, &[]);
    let code = server.wait_exit();
    assert_ne!(code, Some(0), "the node must not start without its cluster");
    let log = server.log();
    // The line of `cluster.redis` in the file the test wrote (line 7:
    // after the two lines the testkit adds and the workers section).
    assert!(log.contains("hotsock.toml:7: cannot reach"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
}

#[test]
fn a_node_id_in_use_by_a_running_node_is_refused() {
    let redis = RedisServer::start();
    let _first = TestServer::start(&node_config(&redis, "same", ""));
    let mut second = TestServer::spawn(&node_config(&redis, "same", ""), &[]);
    assert_ne!(second.wait_exit(), Some(0));
    let log = second.log();
    assert!(log.contains("\"same\" is in use by a running node"), "{log}");
}

/// A publication as the JSON envelope carries it: (channel, epoch, offset, data).
fn publication(text: &str) -> Option<(String, String, u64, String)> {
    let value: Value = serde_json::from_str(text).ok()?;
    if value["type"] != "publication" {
        return None;
    }
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    Some((field("channel")?, field("epoch")?, value["offset"].as_u64()?, field("data")?))
}

/// Opens a member of `channel` on `server` and waits for its subscribe.
async fn member(server: &TestServer, channel: &str) -> Client {
    let (mut client, _) = open_testworker(server, "/").await;
    send(&mut client, &format!("sub:{channel}")).await;
    recv_until(&mut client, |t| t.starts_with("subscribed ") || t.starts_with("sub error")).await;
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_publications_from_every_node_reach_every_member_once_in_one_order() {
    const MEMBERS_PER_NODE: usize = 200;
    const CHANNELS: usize = 10;
    const PER_NODE_PER_CHANNEL: usize = 5;
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3);
    let mut members = Vec::new();
    for (node, server) in cluster.iter().enumerate() {
        for k in 0..MEMBERS_PER_NODE {
            let channel = format!("room{}", k % CHANNELS);
            members.push((node, channel.clone(), member(server, &channel).await));
        }
    }
    // Publishers on every node, all at once, into every channel.
    let mut publishers = Vec::new();
    for server in &cluster {
        publishers.push(open_testworker(server, "/").await.0);
    }
    let sending = publishers.into_iter().enumerate().map(|(node, mut client)| {
        tokio::spawn(async move {
            for j in 0..PER_NODE_PER_CHANNEL {
                for c in 0..CHANNELS {
                    send(&mut client, &format!("pub:room{c}:n{node}-{j}")).await;
                }
            }
            client
        })
    });
    let publishers: Vec<Client> =
        futures_util::future::join_all(sending).await.into_iter().map(|joined| joined.expect("publisher")).collect();
    let expected = 3 * PER_NODE_PER_CHANNEL;
    let reading = members.into_iter().map(|(node, channel, mut client)| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while seen.len() < expected {
                let text = recv_until(&mut client, |t| publication(t).is_some()).await;
                let (got_channel, epoch, offset, data) = publication(&text).expect("publication");
                assert_eq!(got_channel, channel);
                seen.push((epoch, offset, data));
            }
            // Nothing more: an echo comes back next.
            send(&mut client, "echo:end").await;
            assert_eq!(recv(&mut client).await, "end", "a publication arrived twice on node {node}");
            (channel, seen)
        })
    });
    let mut orders: HashMap<String, Vec<(String, u64, String)>> = HashMap::new();
    for joined in futures_util::future::join_all(reading).await {
        let (channel, seen) = joined.expect("member");
        let offsets: Vec<u64> = seen.iter().map(|(_, o, _)| *o).collect();
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "offsets in order, no gap: {offsets:?}");
        match orders.get(&channel) {
            Some(order) => assert_eq!(order, &seen, "every member of {channel} sees one order"),
            None => {
                orders.insert(channel, seen);
            }
        }
    }
    assert_eq!(orders.len(), CHANNELS);
    for (channel, order) in &orders {
        let mut data: Vec<&str> = order.iter().map(|(_, _, d)| d.as_str()).collect();
        data.sort_unstable();
        data.dedup();
        assert_eq!(data.len(), expected, "{channel}: every publication, once");
    }
    drop(publishers);
}

/// Publishes `count` messages `PREFIX-i` into `channel` and waits for each
/// reply: the replies (`published ... offset=N` or `pub error: ...`).
async fn publish(client: &mut Client, channel: &str, prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let mut replies = Vec::new();
    for i in range {
        send(client, &format!("pubr:{channel}:{prefix}-{i}")).await;
        replies.push(recv_until(client, |t| t.starts_with("published ") || t.starts_with("pub error")).await);
    }
    replies
}

/// Reads `count` publications.
async fn publications(client: &mut Client, count: usize) -> Vec<(String, u64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let text = recv_until(client, |t| publication(t).is_some()).await;
        let (_, epoch, offset, data) = publication(&text).expect("publication");
        seen.push((epoch, offset, data));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_reported_local_traffic_goes_on_and_nothing_arrives_twice() {
    let mut redis = RedisServer::start();
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], hotsock_testkit::free_port()));
    let cluster = [
        TestServer::start(&node_config(&redis, "n0", &format!("\n[metrics]\nlisten = \"{metrics}\"\n"))),
        TestServer::start(&node_config(&redis, "n1", "")),
    ];
    let readyz = || async move {
        let request = b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        hotsock_testkit::raw_http(metrics, request).await
    };
    assert!(readyz().await.starts_with("HTTP/1.1 200"));
    let (mut publisher, _) = open_testworker(&cluster[0], "/").await;
    let (mut remote, _) = open_testworker(&cluster[1], "/?uid=77").await;
    let mut member = self::member(&cluster[1], "live").await;
    let before = publish(&mut publisher, "live", "before", 0..20).await;
    assert!(before.iter().all(|r| r.starts_with("published live")), "{before:?}");
    let first = publications(&mut member, 20).await;

    redis.stop();
    wait_for("both nodes to report Redis unreachable", || {
        cluster.iter().all(|s| cluster_status(s)["redis_connected"] == false).then_some(())
    });
    let view = String::from_utf8_lossy(&cluster[0].cli(&["status"]).stdout).into_owned();
    assert!(view.contains("redis unreachable"), "{view}");
    let answer = readyz().await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("cluster: redis unreachable"), "{answer}");
    let scrape =
        hotsock_testkit::raw_http(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(scrape.contains("hotsock_cluster_redis_up 0"), "{scrape}");
    let body = scrape.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let (passed, said) = hotsock_testkit::promtool_check(body);
    assert!(passed, "promtool: {said}");
    // What the docs say: publish and presence fail at once, uid sends to
    // other nodes are dropped and counted, local traffic goes on.
    let during = publish(&mut publisher, "live", "during", 0..3).await;
    assert!(during.iter().all(|r| r.contains("the cluster is unavailable")), "{during:?}");
    send(&mut publisher, "presence:77").await;
    assert!(recv(&mut publisher).await.contains("the cluster is unavailable"));
    let dropped = cluster_status(&cluster[0])["dropped"].as_u64().expect("dropped");
    send(&mut publisher, "to_uid:77:lost in the outage").await;
    send(&mut publisher, "echo:local still works").await;
    assert_eq!(recv(&mut publisher).await, "local still works");
    wait_for("the drop to be counted", || {
        (cluster_status(&cluster[0])["dropped"].as_u64() > Some(dropped)).then_some(())
    });

    redis.restart();
    wait_for("both nodes to be back and registered", || {
        cluster
            .iter()
            .all(|s| cluster_status(s)["redis_connected"] == true && cluster_status(s)["nodes"] == 2)
            .then_some(())
    });
    assert!(cluster_status(&cluster[0])["outages"].as_u64() >= Some(1));
    assert!(readyz().await.starts_with("HTTP/1.1 200"), "ready again with Redis back");
    // Presence was put back: the uid send reaches node 1 again.
    send(&mut publisher, "to_uid:77:after the outage").await;
    assert_eq!(recv(&mut remote).await, "after the outage", "the outage's send must not arrive late");
    // The member still follows the channel (resubscribed) and gets what is
    // published now, in a new epoch (Redis came back empty), once.
    let after = publish(&mut publisher, "live", "after", 0..20).await;
    assert!(after.iter().all(|r| r.starts_with("published live")), "{after:?}");
    let second = publications(&mut member, 20).await;
    let data: Vec<&str> = first.iter().chain(&second).map(|(_, _, d)| d.as_str()).collect();
    let expected: Vec<String> =
        (0..20).map(|i| format!("before-{i}")).chain((0..20).map(|i| format!("after-{i}"))).collect();
    assert_eq!(data, expected);
    assert_ne!(first[0].0, second[0].0, "a Redis that lost the channel starts a new epoch");
    assert_eq!(second.iter().map(|(_, o, _)| *o).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    send(&mut member, "echo:end").await;
    assert_eq!(recv(&mut member).await, "end", "nothing arrived twice");
    let none_lost = cluster.iter().all(|s| cluster_status(s)["lost"] == 0);
    assert!(none_lost, "no message was lost in Redis while it was up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_presence_expires_and_its_clients_recover_on_another_node() {
    let redis = RedisServer::start();
    let mut cluster = nodes(&redis, 2);
    let (mut publisher, _) = open_testworker(&cluster[0], "/").await;
    let mut player = hotsock_testkit::connect(&cluster[1].url("/?uid=55&join=game")).await;
    recv_until(&mut player, |t| t.starts_with("open ")).await;
    send(&mut publisher, "presence:55").await;
    assert!(recv(&mut publisher).await.contains("\"n1\""));
    publish(&mut publisher, "game", "m", 0..10).await;
    let seen = publications(&mut player, 10).await;
    let (epoch, last, _) = seen.last().cloned().expect("seen");

    let pid = cluster[1].child.as_ref().map(|c| c.id()).expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let killed = std::time::Instant::now();
    let _ = cluster[1].wait_exit();
    let gone = loop {
        send(&mut publisher, "presence:55").await;
        let reply = recv(&mut publisher).await;
        if reply == "[]" {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(3), "presence still {reply} after 3 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(gone <= Duration::from_millis(600 + 300), "gone after {gone:?}, node_ttl_ms = 600");
    // Published while the player is away.
    publish(&mut publisher, "game", "m", 10..15).await;
    let url = cluster[0].url(&format!("/?uid=55&since=game.{epoch}.{last}"));
    let mut player = hotsock_testkit::connect(&url).await;
    // The replay comes first, then the worker's answer to its subscribe.
    let mut caught_up = Vec::new();
    let line = loop {
        let text = recv_until(&mut player, |_| true).await;
        if let Some((_, epoch, offset, data)) = publication(&text) {
            caught_up.push((epoch, offset, data));
        } else if text.starts_with("subscribed ") || text.starts_with("sub error") {
            break text;
        }
    };
    assert!(line.contains("recovered=true") && line.contains("replayed=5"), "{line}");
    publish(&mut publisher, "game", "m", 15..17).await;
    caught_up.extend(publications(&mut player, 2).await);
    let offsets: Vec<u64> = caught_up.iter().map(|(_, o, _)| *o).collect();
    assert_eq!(offsets, (last + 1..=last + 7).collect::<Vec<_>>(), "no gap, nothing twice");
    assert!(caught_up.iter().all(|(e, _, _)| *e == epoch));
    let data: Vec<String> = caught_up.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(data, (10..17).map(|i| format!("m-{i}")).collect::<Vec<_>>());
}

mod matchmaker {
    use super::*;
    use hmac::{Hmac, Mac};
    use hotsock_testkit::{raw_http, repo_root};
    use sha2::Sha256;

    const SECRET: &str = "test-secret";

    fn token(uid: u64) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(uid.to_string().as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A matchmaker node: the example's tables, cluster-wide.
    fn node(redis: &RedisServer, id: &str) -> TestServer {
        let example = std::fs::read_to_string(repo_root().join("examples/matchmaker/hotsock.toml")).expect("config");
        let tables = example[example.find("[tables.players]").expect("tables")..]
            .replace("[tables.players]", "[tables.players]\nscope = \"cluster\"")
            .replace("[tables.pool]", "[tables.pool]\nscope = \"cluster\"");
        let config = format!(
            "[workers]\ncommand = [\"{}\"]\ncount = 2\n\n[cluster]\nredis = \"{}\"\nnode_id = \"{id}\"\n\n{tables}",
            bin("matchmaker").display(),
            redis.url()
        );
        TestServer::start_with_env(&config, &[("MATCH_SECRET", SECRET), ("MATCH_TIMEOUT_MS", "60000")])
    }

    fn url(server: &TestServer, uid: u64, gender: &str, game: &str) -> String {
        server.url(&format!("/match?uid={uid}&gender={gender}&game={game}&name=p{uid}&token={}", token(uid)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn players_on_two_nodes_are_matched_across_them_once_each() {
        const PLAYERS: u64 = 400;
        let redis = RedisServer::start();
        let cluster = [node(&redis, "a"), node(&redis, "b")];
        let games = ["chess", "go", "poker", "bridge"];
        let mut players = Vec::new();
        for uid in 1..=PLAYERS {
            let gender = if uid.is_multiple_of(2) { "m" } else { "f" };
            let game = games[(uid as usize / 2) % games.len()];
            // Alternately on the two nodes.
            let url = url(&cluster[(uid % 2) as usize], uid, gender, game);
            players.push(tokio::spawn(async move {
                let (mut client, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
                let (message, code) = hotsock_testkit::matchmaker_outcome(&mut client).await;
                (uid, gender, game, message, code)
            }));
        }
        let mut seen = HashMap::new();
        for player in players {
            let (uid, gender, game, message, code) = player.await.expect("player");
            assert_eq!(message["type"], "matched", "player {uid}: {message}");
            assert_eq!(code, Some(1000), "player {uid} is closed after its result");
            seen.insert(uid, (gender, game, message));
        }
        let mut partners = HashMap::new();
        for (uid, (gender, game, message)) in &seen {
            let peer = message["peer"]["uid"].as_u64().expect("peer uid");
            let (peer_gender, peer_game, peer_message) = &seen[&peer];
            assert_ne!(gender, peer_gender, "{uid} and {peer}: the rule pairs opposite genders");
            assert_eq!(game, peer_game, "{uid} and {peer}: the same game");
            assert_eq!(peer_message["peer"]["uid"].as_u64(), Some(*uid), "mutual: {uid} <-> {peer}");
            assert_eq!(peer_message["room"], message["room"]);
            assert!(partners.insert(peer, *uid).is_none(), "{peer} matched twice");
        }
        let crossed =
            seen.keys().filter(|uid| seen[uid].2["peer"]["uid"].as_u64().is_some_and(|p| p % 2 != *uid % 2)).count();
        assert!(crossed > 0, "some pairs span the two nodes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_uid_connected_to_one_node_is_refused_on_the_other() {
        let redis = RedisServer::start();
        let cluster = [node(&redis, "a"), node(&redis, "b")];
        let (mut first, _) = tokio_tungstenite::connect_async(url(&cluster[0], 9, "m", "chess")).await.expect("first");
        match hotsock_testkit::next(&mut first).await {
            Some(tokio_tungstenite::tungstenite::Message::Text(text)) => assert!(text.contains("waiting"), "{text}"),
            other => panic!("expected waiting, got {other:?}"),
        }
        let again = format!(
            "GET /match?uid=9&gender=m&game=chess&token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            token(9)
        );
        let response = raw_http(cluster[1].addr, again.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 409"), "{response}");
        // The partner may be on the other node: it still finds the first.
        let (mut second, _) =
            tokio_tungstenite::connect_async(url(&cluster[1], 10, "f", "chess")).await.expect("second");
        let (message, code) = hotsock_testkit::matchmaker_outcome(&mut second).await;
        assert_eq!((message["peer"]["uid"].as_u64(), code), (Some(9), Some(1000)), "{message}");
        let (message, _) = hotsock_testkit::matchmaker_outcome(&mut first).await;
        assert_eq!(message["peer"]["uid"].as_u64(), Some(10), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_older_snapshot_starts_new_epochs_instead_of_dropping_news() {
    let mut redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    let (mut publisher, _) = open_testworker(&cluster[0], "/").await;
    let mut member = self::member(&cluster[1], "snap").await;
    publish(&mut publisher, "snap", "a", 0..10).await;
    let first = publications(&mut member, 10).await;
    // A snapshot at offset 10, ten more after it, then a crash: Redis
    // comes back with the channel at 10 while the nodes delivered 20.
    assert!(redis.command("SAVE").contains("OK"));
    publish(&mut publisher, "snap", "b", 0..10).await;
    publications(&mut member, 10).await;
    redis.restart();
    wait_for("both nodes back", || {
        cluster
            .iter()
            .all(|s| cluster_status(s)["redis_connected"] == true && cluster_status(s)["nodes"] == 2)
            .then_some(())
    });
    let replies = publish(&mut publisher, "snap", "c", 0..5).await;
    assert!(replies.iter().all(|r| r.starts_with("published snap")), "{replies:?}");
    let after = publications(&mut member, 5).await;
    assert_eq!(after.iter().map(|(_, _, d)| d.as_str()).collect::<Vec<_>>(), ["c-0", "c-1", "c-2", "c-3", "c-4"]);
    assert_ne!(after[0].0, first[0].0, "another Redis run: a new epoch, not offsets 11.. again");
    send(&mut member, "echo:end").await;
    assert_eq!(recv(&mut member).await, "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_wide_table_is_one_table_on_every_node_with_its_limits_and_outages() {
    use futures_util::{SinkExt, StreamExt};
    let mut redis = RedisServer::start();
    let table = "\n[tables.counters]\nscope = \"cluster\"\nrows = 3\ncolumns = { n = \"i64\", label = \"str:8\" }\n";
    let cluster: Vec<TestServer> =
        (0..2).map(|i| TestServer::start(&node_config(&redis, &format!("n{i}"), table))).collect();
    // Four clients, two per node, increment one key at once: atomic
    // across nodes, so the sum is exact.
    let mut tasks = Vec::new();
    for server in cluster.iter().chain(cluster.iter()) {
        let (client, _) = open_testworker(server, "/").await;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.split();
            for _ in 0..100 {
                sink.send(tokio_tungstenite::tungstenite::Message::text("tincr:shared")).await.expect("send");
            }
            for _ in 0..100 {
                let reply = hotsock_testkit::next_text(&mut stream).await;
                assert!(reply.parse::<i64>().is_ok(), "{reply}");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let (mut a, _) = open_testworker(&cluster[1], "/").await;
    send(&mut a, "tget:shared").await;
    assert_eq!(recv(&mut a).await, "400");
    // Capacity is exact cluster-wide: the rows are counted in Redis.
    let (mut b, _) = open_testworker(&cluster[0], "/").await;
    for key in ["two", "three"] {
        send(&mut b, &format!("tincr:{key}")).await;
        assert_eq!(recv(&mut b).await, "1");
    }
    send(&mut a, "tincr:four").await;
    assert_eq!(recv(&mut a).await, "error: table full: all 3 rows are in use");
    send(&mut a, &format!("tincr:{}", "k".repeat(65))).await;
    assert!(recv(&mut a).await.starts_with("error: key of 65 bytes"));
    // Redis away: a typed error, not a hang; back (empty): the table works.
    redis.stop();
    send(&mut a, "tget:shared").await;
    let reply = recv(&mut a).await;
    assert!(reply.starts_with("error: cluster table:"), "{reply}");
    redis.restart();
    wait_for("the nodes back", || (cluster_status(&cluster[1])["redis_connected"] == true).then_some(()));
    let fresh = loop {
        tokio::time::sleep(Duration::from_millis(600)).await;
        send(&mut a, "tincr:shared").await;
        let reply = recv(&mut a).await;
        if !reply.starts_with("error") {
            break reply;
        }
    };
    assert_eq!(fresh, "1", "the restarted Redis is empty");
}

/// A key's `PTTL` in ms (`-2`: no key, `-1`: no TTL).
fn pttl(redis: &RedisServer, key: &str) -> i64 {
    let reply = redis.command(&format!("PTTL {key}"));
    reply.trim().trim_start_matches(':').parse().unwrap_or_else(|_| panic!("PTTL {key}: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logs_ttls_are_pushed_back_once_per_tenth_of_them_and_at_once_when_raised() {
    // `channels.history_ttl_ms` 2 s at first: the stream lives 2 s after its
    // last entry at least, 2.2 s at most (a tenth more).
    let redis = RedisServer::start();
    let extra = "[channels]\nhistory_ttl_ms = 2000\n";
    let config = node_config(&redis, "n0", "").replacen("[channels]\n", extra, 1);
    assert!(config.contains("history_ttl_ms = 2000"), "{config}");
    let server = TestServer::start(&config);
    let (mut publisher, _) = open_testworker(&server, "/").await;
    let (meta, stream) = ("hotsock:log:ch:ttl:meta", "hotsock:log:ch:ttl:stream");
    publish(&mut publisher, "ttl", "a", 0..1).await;
    let first = pttl(&redis, stream);
    assert!((1_500..=2_200).contains(&first), "stream PTTL after the first entry: {first}");
    let keep = pttl(&redis, meta);
    assert!(keep > 7 * 24 * 3600 * 1000 - 60_000, "the log's hash outlives its stream by far: {keep}");
    // Within a tenth of the TTL of the last push, appends leave the TTLs
    // alone (three calls saved per entry)...
    assert!(redis.command(&format!("PEXPIRE {stream} 100000")).contains(":1"));
    publish(&mut publisher, "ttl", "b", 0..3).await;
    let untouched = pttl(&redis, stream);
    assert!(untouched > 2_200, "pushed back within a tenth of its TTL: {untouched}");
    // ...but once the last push is more than a tenth old, the next append
    // pushes them back again.
    assert!(redis.command(&format!("PEXPIRE {stream} 1000")).contains(":1"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    publish(&mut publisher, "ttl", "c", 0..1).await;
    let pushed = pttl(&redis, stream);
    assert!((1_500..=2_200).contains(&pushed), "pushed back a tenth of its TTL after the last push: {pushed}");
    // A TTL raised by a live reload takes effect with the next append, not
    // a tenth of the new TTL later (found in review: entries expired with
    // the old one).
    let text = std::fs::read_to_string(&server.config).expect("config");
    std::fs::write(&server.config, text.replace("history_ttl_ms = 2000", "history_ttl_ms = 300000")).expect("write");
    let reloaded = server.cli(&["reload", "--wait"]);
    assert!(reloaded.status.success(), "{}", String::from_utf8_lossy(&reloaded.stderr));
    publish(&mut publisher, "ttl", "d", 0..1).await;
    let raised = pttl(&redis, stream);
    assert!((299_000..=330_000).contains(&raised), "the raised TTL holds at once: {raised}");
    let fields = redis.command(&format!("HMGET {meta} seq"));
    assert!(fields.contains("\r\n6\r\n"), "six entries in the log's sequence: {fields:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_uid_sends_to_another_node_arrives_whole_and_in_order() {
    // Enough that the cluster task has many pipelines in flight at once
    // (each batch is sent before the one before it is answered).
    const SENDS: usize = 3_000;
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 2);
    let (mut receiver, _) = open_testworker(&cluster[0], "/").await;
    send(&mut receiver, "bind:7").await;
    recv_until(&mut receiver, |t| t.starts_with("bound")).await;
    let (mut sender, _) = open_testworker(&cluster[1], "/").await;
    for i in 0..SENDS {
        send(&mut sender, &format!("to_uid:7:{i}")).await;
    }
    let mut got = Vec::with_capacity(SENDS);
    while got.len() < SENDS {
        let text = tokio::time::timeout(Duration::from_secs(10), recv(&mut receiver)).await.expect("within 10 s");
        got.push(text.parse::<usize>().unwrap_or_else(|_| panic!("not a number: {text:?}")));
    }
    let misplaced = got.iter().enumerate().find(|(i, n)| *i != **n);
    assert_eq!(misplaced, None, "sends out of order (index, value)");
    assert_eq!(cluster_status(&cluster[1])["dropped"], 0);
}
