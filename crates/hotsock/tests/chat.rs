//! The chat example (examples/chat) through the real server: what the
//! handshake refuses and why, messages, presence and history on join, the
//! refusal of an over-long message, and recovery of a cut connection from
//! the position the browser client puts in its URL.

use hotsock_testkit::{Client, TestServer, bin, raw_http, recv, repo_root, send};
use serde_json::Value;

/// The example's own config with this build's paths: its page, the browser
/// client it serves, its worker, and everything from `[channels]` on.
fn config() -> String {
    let root = repo_root();
    let example = std::fs::read_to_string(root.join("examples/chat/hotsock.toml")).expect("config");
    let service = &example[example.find("[channels]").expect("[channels] in the example's config")..];
    format!(
        "[server]\nstatic_dir = \"{}\"\nstatic_files = {{ \"/hotsock.js\" = \"{}\" }}\n[workers]\ncommand = [\"{}\"]\ncount = 2\n{service}",
        root.join("examples/chat/www").display(),
        root.join("clients/js/hotsock.js").display(),
        bin("chat").display()
    )
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The next message, parsed.
async fn next_json(client: &mut Client) -> Value {
    let text = recv(client).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The next publication: its offset and its data (the app's JSON), skipping
/// typing signals.
async fn next_publication(client: &mut Client) -> (u64, Value) {
    loop {
        let message = next_json(client).await;
        assert_eq!(message["type"], "publication", "{message}");
        let data: Value = serde_json::from_str(message["data"].as_str().expect("text data")).expect("data is JSON");
        if data["kind"] != "typing" {
            return (message["offset"].as_u64().expect("offset"), data);
        }
    }
}

/// Joins a room and reads the `subscribed` envelope: (epoch, offset, recovered).
async fn join(server: &TestServer, query: &str) -> (Client, (String, u64, bool)) {
    let mut client = hotsock_testkit::connect(&server.url(&format!("/?{query}"))).await;
    let subscribed = next_json(&mut client).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let epoch = subscribed["epoch"].as_str().expect("epoch").to_owned();
    let offset = subscribed["offset"].as_u64().expect("offset");
    (client, (epoch, offset, subscribed["recovered"].as_bool().expect("recovered")))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_rooms_and_nicks_get_a_400_saying_why() {
    let server = TestServer::start(&config());
    for (path, why) in [
        ("/?name=Ada", "missing ?room=NAME"),
        ("/?room=lobby", "missing &name=NICK"),
        ("/?room=No%20Caps&name=Ada", "room must be 1 to 32 of a-z, 0-9 and -"),
        ("/?room=../etc&name=Ada", "room must be"),
        ("/?room=lobby&name=%3Cb%3Ehi%3C%2Fb%3E", "name must be 1 to 24 letters"),
        ("/?room=lobby&name=", "name must be"),
        ("/?room=lobby&name=%FF%FE", "name is not valid percent-encoded UTF-8"),
        ("/?room=lobby&name=Ada&since=room%3Alobby.nothex.3", "is not CHANNEL.EPOCH.OFFSET"),
    ] {
        let response = raw_http(server.addr, upgrade(path).as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(response.contains(why), "{path}: {response}");
    }
    let (_ada, (_, _, recovered)) = join(&server, "room=lobby&name=Ada%20L.").await;
    assert!(!recovered, "nothing to recover in a new room");
    // The page and the client it imports are served.
    for (path, marker) in [("/", "chat.js"), ("/chat.js", "from '/hotsock.js'"), ("/hotsock.js", "class HotsockClient")]
    {
        let response = raw_http(server.addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200") && response.contains(marker), "{path}: {response:.200}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_room_chats_shows_presence_refuses_long_messages_and_replays_to_newcomers() {
    let server = TestServer::start(&config());
    let (mut ada, (epoch, _, _)) = join(&server, "room=lobby&name=Ada").await;
    let (_, joined) = next_publication(&mut ada).await;
    assert_eq!((joined["kind"].as_str(), joined["members"].clone()), (Some("join"), serde_json::json!(["Ada"])));

    let (mut bob, (bob_epoch, _, recovered)) = join(&server, "room=lobby&name=Bob").await;
    assert_eq!(bob_epoch, epoch);
    assert!(recovered, "a newcomer is replayed the room's recent history");
    let (_, replayed) = next_publication(&mut bob).await;
    assert_eq!((replayed["kind"].as_str(), replayed["nick"].as_str()), (Some("join"), Some("Ada")));
    for client in [&mut ada, &mut bob] {
        let (_, joined) = next_publication(client).await;
        assert_eq!(joined["members"], serde_json::json!(["Ada", "Bob"]), "{joined}");
    }

    send(&mut ada, r#"{"kind":"chat","text":"  <b>hello</b>  "}"#).await;
    for client in [&mut ada, &mut bob] {
        let (_, line) = next_publication(client).await;
        assert_eq!((line["from"].as_str(), line["text"].as_str()), (Some("Ada"), Some("<b>hello</b>")), "{line}");
    }
    send(&mut bob, r#"{"kind":"typing"}"#).await;
    let typing = next_json(&mut ada).await;
    let data: Value = serde_json::from_str(typing["data"].as_str().expect("text data")).expect("data is JSON");
    assert_eq!((data["kind"].as_str(), data["from"].as_str()), (Some("typing"), Some("Bob")), "{typing}");

    let long = "x".repeat(501);
    send(&mut ada, &format!(r#"{{"kind":"chat","text":"{long}"}}"#)).await;
    let refused = next_json(&mut ada).await;
    assert_eq!(refused, serde_json::json!({"kind": "error", "error": "message too long: 501 characters, at most 500"}));
    send(&mut ada, "not json").await;
    assert_eq!(next_json(&mut ada).await["kind"], "error");
    send(&mut ada, r#"{"kind":"chat","text":"after"}"#).await;
    // Bob never saw the refused one: the next line he gets is the one after.
    let (_, line) = next_publication(&mut bob).await;
    assert_eq!(line["text"], "after", "{line}");

    // A newcomer is replayed everything so far (less than HISTORY_ON_JOIN).
    let (mut cy, _) = join(&server, "room=lobby&name=Cy").await;
    let mut seen = Vec::new();
    loop {
        let (_, data) = next_publication(&mut cy).await;
        if data["kind"] == "join" && data["nick"] == "Cy" {
            assert_eq!(data["members"], serde_json::json!(["Ada", "Bob", "Cy"]));
            break;
        }
        seen.push(format!(
            "{} {}",
            data["kind"].as_str().unwrap_or(""),
            data["text"].as_str().or(data["nick"].as_str()).unwrap_or("")
        ));
    }
    assert_eq!(seen, ["join Ada", "join Bob", "chat <b>hello</b>", "chat after"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_connection_reconnects_from_its_position_and_misses_nothing() {
    let server = TestServer::start(&config());
    let (mut ada, (epoch, _, _)) = join(&server, "room=cut&name=Ada").await;
    let (mut bob, _) = join(&server, "room=cut&name=Bob").await;
    send(&mut ada, r#"{"kind":"chat","text":"m0"}"#).await;
    // Bob's position, as the browser client keeps it: the last offset he saw.
    let last = loop {
        let (offset, data) = next_publication(&mut bob).await;
        if data["text"] == "m0" {
            break offset;
        }
    };
    drop(bob); // the TCP connection closes without a WebSocket close
    for n in 1..=3 {
        send(&mut ada, &format!(r#"{{"kind":"chat","text":"m{n}"}}"#)).await;
    }
    let since = format!("room%3Acut.{epoch}.{last}");
    let (mut bob, (_, offset, recovered)) = join(&server, &format!("room=cut&name=Bob&since={since}")).await;
    assert!(recovered, "everything after {last} is in the history");
    assert_eq!(offset, last);
    let mut texts = Vec::new();
    let mut previous = last;
    while texts.len() < 3 {
        let (offset, data) = next_publication(&mut bob).await;
        assert_eq!(offset, previous + 1, "offsets follow on, none skipped or repeated");
        previous = offset;
        if data["kind"] == "chat" {
            texts.push(data["text"].as_str().expect("text").to_owned());
        }
    }
    assert_eq!(texts, ["m1", "m2", "m3"]);

    // A position from another epoch (a server restart) cannot be recovered.
    let (_, (_, _, recovered)) = join(&server, "room=cut&name=Dee&since=room%3Acut.0000000000000001.2").await;
    assert!(!recovered);
}

/// Two headless Chromium pages (Debian's chromium, driven by playwright-core
/// from tests/node) in one room: they chat, see each other present and
/// typing; then one page's network is cut (a proxy in the script resets its
/// TCP connection and refuses reconnects) while the other sends five lines.
/// Back online, the page shows every line once, in order, recovered.
#[test]
fn two_browser_pages_chat_and_a_cut_page_recovers_every_message_once() {
    let chromium = hotsock_testkit::chromium();
    let node = hotsock_testkit::node();
    let server = TestServer::start(&config());
    let output = std::process::Command::new(node)
        .arg(repo_root().join("tests/node/chat_page.js"))
        .arg(format!("http://{}/", server.addr))
        .env("CHROMIUM", &chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    for line in [
        "presence shows Ada and Bea on both pages",
        "the pages chat; markup shows as text",
        "typing indicator shown on the other page",
        "Bea cut off while Ada sent 5",
        "Bea recovered: 8 messages, each once, in order",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
}
