//! The matchmaker example through the real server: handshake auth, the
//! matching rule, timeouts, leaving, and many players at once with no
//! player matched twice. Each test runs against examples/matchmaker (Rust)
//! and examples/matchmaker-php (the PHP SDK, its tables through the
//! server), which behave the same; the PHP one's rule is also edited live.

#[macro_use]
mod each_sdk;

use std::collections::HashMap;

use each_sdk::Sdk;
use hmac::{Hmac, Mac};
use hotsock_testkit::{TestServer, bin, next, raw_http, repo_root};
use serde_json::Value;
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret";

fn token(uid: u64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(uid.to_string().as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The example's tables (the same in both examples) and two workers of `sdk`'s matchmaker.
fn config(sdk: Sdk) -> String {
    let example = std::fs::read_to_string(repo_root().join("examples/matchmaker/hotsock.toml")).expect("config");
    let tables = &example[example.find("[tables.players]").expect("tables")..];
    let command = sdk.command("matchmaker", "examples/matchmaker-php/worker.php");
    format!("[workers]\ncommand = {command}\ncount = 2\n{tables}")
}

fn start(sdk: Sdk, timeout_ms: u64) -> TestServer {
    TestServer::start_with_env(&config(sdk), &[("MATCH_SECRET", SECRET), ("MATCH_TIMEOUT_MS", &timeout_ms.to_string())])
}

each_sdk!(
    the_handshake_authenticates_players,
    a_man_and_a_woman_of_the_same_game_are_matched_and_closed,
    an_unmatched_player_times_out_and_a_leaving_player_leaves_the_pool,
    two_hundred_players_are_paired_correctly_and_never_twice,
    two_thousand_players_through_three_reloads_and_a_rule_switch,
    sigkilled_workers_lose_no_waiting_player,
);

fn url(server: &TestServer, uid: u64, gender: &str, game: &str) -> String {
    server.url(&format!("/match?uid={uid}&gender={gender}&game={game}&name=p{uid}&token={}", token(uid)))
}

/// Reads the result a player gets (skipping `waiting`), and the close code
/// after it.
async fn outcome(client: &mut hotsock_testkit::Client) -> (Value, Option<u16>) {
    hotsock_testkit::matchmaker_outcome(client).await
}

/// How long the 2,000-player run's PHP players wait for a frame: above the
/// 30 s handshake timeout that run configures, plus the match timeout, so
/// a player is only failed for a frame the server really never sends.
const PHP_PLAYER_WAIT: std::time::Duration = std::time::Duration::from_secs(45);

/// What a simulated player saw: uid, gender, game, result, close code.
type Seen = (u64, &'static str, &'static str, Value, Option<u16>);

/// Starts simulated player `uid` (gender by parity, one of 4 games) and
/// collects its result.
fn spawn_player(server: &TestServer, uid: u64) -> tokio::task::JoinHandle<Seen> {
    spawn_player_within(server, uid, hotsock_testkit::WAIT)
}

/// [`spawn_player`] whose player waits up to `wait` for each frame.
fn spawn_player_within(server: &TestServer, uid: u64, wait: std::time::Duration) -> tokio::task::JoinHandle<Seen> {
    let games = ["chess", "go", "poker", "bridge"];
    let gender = if uid.is_multiple_of(2) { "m" } else { "f" };
    let game = games[(uid as usize / 2) % games.len()];
    let url = url(server, uid, gender, game);
    tokio::spawn(async move {
        let (mut client, _) =
            tokio_tungstenite::connect_async(url).await.unwrap_or_else(|e| panic!("player {uid} connects: {e}"));
        let (message, code) = hotsock_testkit::matchmaker_outcome_within(&mut client, wait).await;
        (uid, gender, game, message, code)
    })
}

/// Waits until the player is in the pool (its `waiting` message).
async fn waiting(client: &mut hotsock_testkit::Client) {
    match next(client).await {
        Some(Message::Text(text)) => assert!(text.contains("\"waiting\""), "{text}"),
        other => panic!("expected waiting, got {other:?}"),
    }
}

async fn status_of(server: &TestServer, request: &str) -> String {
    let response = raw_http(server.addr, request.as_bytes()).await;
    response.lines().next().unwrap_or_default().to_owned()
}

fn upgrade(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

async fn the_handshake_authenticates_players(sdk: Sdk) {
    let server = start(sdk, 30_000);
    let bad = upgrade(&format!("/match?uid=7&gender=m&game=chess&token={}", token(8)));
    assert!(status_of(&server, &bad).await.starts_with("HTTP/1.1 401"));
    let missing = upgrade(&format!("/match?uid=7&game=chess&token={}", token(7)));
    let response = raw_http(server.addr, missing.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 400") && response.contains("missing gender"), "{response}");
    let bad_gender = upgrade(&format!("/match?uid=7&gender=x&game=chess&token={}", token(7)));
    assert!(status_of(&server, &bad_gender).await.starts_with("HTTP/1.1 400"));
    assert!(status_of(&server, &upgrade("/other")).await.starts_with("HTTP/1.1 404"));
    let (mut first, _) =
        tokio_tungstenite::connect_async(url(&server, 7, "m", "chess")).await.expect("valid token accepted");
    let again = upgrade(&format!("/match?uid=7&gender=m&game=chess&token={}", token(7)));
    assert!(status_of(&server, &again).await.starts_with("HTTP/1.1 409"), "the same uid twice");
    first.close(None).await.expect("close");
}

async fn a_man_and_a_woman_of_the_same_game_are_matched_and_closed(sdk: Sdk) {
    let server = start(sdk, 30_000);
    // One at a time into the pool, so "longest waiting" is well defined.
    let (mut a, _) = tokio_tungstenite::connect_async(url(&server, 1, "m", "chess")).await.expect("a");
    waiting(&mut a).await;
    let (mut b, _) = tokio_tungstenite::connect_async(url(&server, 2, "m", "chess")).await.expect("b");
    waiting(&mut b).await;
    let (mut c, _) = tokio_tungstenite::connect_async(url(&server, 3, "f", "go")).await.expect("c");
    waiting(&mut c).await;
    let (mut d, _) = tokio_tungstenite::connect_async(url(&server, 4, "f", "chess")).await.expect("d");
    let (first, code) = outcome(&mut a).await;
    assert_eq!(code, Some(1000));
    assert_eq!(first["type"], "matched");
    assert_eq!(first["peer"]["uid"], 4, "the longest-waiting compatible player: {first}");
    assert_eq!(first["rules"], "opposite-gender");
    let (second, _) = outcome(&mut d).await;
    assert_eq!(second["peer"]["uid"], 1);
    assert_eq!(second["room"], first["room"]);
    // b (m, chess) and c (f, go) stay waiting: no compatible partner.
    // Rows leave the pool when their connection closes.
    hotsock_testkit::wait_for("b, c and the lock row left", || {
        (server.try_status()?["tables"][0]["rows"] == 3).then_some(())
    });
}

async fn an_unmatched_player_times_out_and_a_leaving_player_leaves_the_pool(sdk: Sdk) {
    let server = start(sdk, 600);
    let (mut lonely, _) = tokio_tungstenite::connect_async(url(&server, 10, "m", "chess")).await.expect("lonely");
    let (message, code) = outcome(&mut lonely).await;
    assert_eq!(message["type"], "timeout");
    assert_eq!(code, Some(1000));
    let server = start(sdk, 30_000);
    let (mut leaver, _) = tokio_tungstenite::connect_async(url(&server, 11, "f", "chess")).await.expect("leaver");
    hotsock_testkit::wait_for("waiting", || (server.try_status()?["tables"][0]["rows"] == 2).then_some(()));
    leaver.close(None).await.expect("close");
    hotsock_testkit::wait_for("left the pool", || (server.try_status()?["tables"][0]["rows"] == 1).then_some(()));
    // And nobody is matched with a player who left.
    let (mut late, _) = tokio_tungstenite::connect_async(url(&server, 12, "m", "chess")).await.expect("late");
    hotsock_testkit::wait_for("late waits", || (server.try_status()?["tables"][0]["rows"] == 2).then_some(()));
    late.close(None).await.expect("close");
}

async fn two_hundred_players_are_paired_correctly_and_never_twice(sdk: Sdk) {
    let server = start(sdk, 30_000);
    let tasks: Vec<_> = (1..=200u64).map(|uid| spawn_player(&server, uid)).collect();
    let mut peers: HashMap<u64, u64> = HashMap::new();
    let mut info = HashMap::new();
    for task in tasks {
        let (uid, gender, game, message, code) = task.await.expect("player");
        assert_eq!(message["type"], "matched", "uid {uid}: {message}");
        assert_eq!(code, Some(1000));
        let peer = &message["peer"];
        assert_eq!(peer["game"], game, "same game");
        assert_ne!(peer["gender"], gender, "opposite gender");
        assert!(peers.insert(uid, peer["uid"].as_u64().expect("peer uid")).is_none());
        info.insert(uid, message["room"].clone());
    }
    for (uid, peer) in &peers {
        assert_eq!(peers.get(peer), Some(uid), "{uid} matched {peer} but {peer} matched someone else");
        assert_eq!(info.get(uid), info.get(peer), "same room");
    }
    hotsock_testkit::wait_for("only the lock row left", || {
        (server.try_status()?["tables"][0]["rows"] == 1).then_some(())
    });
}

/// The acceptance run: 2,000 players (equal genders, 4 games) arrive over a
/// few seconds while the server reloads three times and the rule switches
/// to rating-window. Every player gets a valid `matched` (per the rule named
/// in it) or a `timeout`, nobody is matched twice, nobody is dropped.
async fn two_thousand_players_through_three_reloads_and_a_rule_switch(sdk: Sdk) {
    let dir = hotsock_testkit::TempDir::new("rules");
    let rules = dir.path().join("rules");
    std::fs::write(&rules, "opposite-gender").expect("write");
    // The PHP workers fall seconds behind while a reload replaces them on
    // a loaded host: handshakes get longer than the default 5 s to be
    // decided (what is checked is that nobody is lost or matched twice).
    let config = match sdk {
        Sdk::Rust => config(sdk),
        Sdk::Php => format!("[server]\nhandshake_timeout_ms = 30000\n{}", config(sdk)),
    };
    let server = TestServer::start_with_env(
        &config,
        &[("MATCH_SECRET", SECRET), ("MATCH_TIMEOUT_MS", "3000"), ("MATCH_RULES_FILE", rules.to_str().expect("utf8"))],
    );
    // Paced to what each matchmaker sustains: the PHP one pays a server
    // round trip per table operation (docs/protocol.md, "Tables through
    // the server"), about 300 arrivals/s on a loaded 2-core host (less across reloads,
    // which redeliver what a drained worker still held), against the
    // Rust one's thousands; 10 per 60 ms already failed handshakes (503,
    // timeouts) while another build shared the host. The checks are the
    // same.
    let (per_60ms, wait) = match sdk {
        Sdk::Rust => (50, hotsock_testkit::WAIT),
        Sdk::Php => (5, PHP_PLAYER_WAIT),
    };
    let mut tasks = Vec::new();
    let mut reloads = 0;
    for uid in 1..=2000u64 {
        tasks.push(spawn_player_within(&server, uid, wait));
        if uid % per_60ms == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        }
        if uid % 500 == 0 && reloads < 3 {
            reloads += 1;
            if reloads == 2 {
                std::fs::write(&rules, "rating-window").expect("switch rules");
            }
            let output = server.cli(&["reload", "--wait"]);
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        }
    }
    let mut peers: HashMap<u64, u64> = HashMap::new();
    let (mut matched, mut timeouts) = (0, 0);
    let mut by_rule: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        let (uid, gender, game, message, code) = task.await.expect("player");
        assert_eq!(code, Some(1000), "uid {uid}: {message}");
        match message["type"].as_str() {
            Some("matched") => {
                matched += 1;
                let peer = &message["peer"];
                assert_eq!(peer["game"], game, "same game");
                let rule = message["rules"].as_str().expect("rules").to_owned();
                if rule == "opposite-gender" {
                    assert_ne!(peer["gender"], gender, "uid {uid}: {message}");
                }
                *by_rule.entry(rule).or_default() += 1;
                assert!(peers.insert(uid, peer["uid"].as_u64().expect("peer")).is_none());
            }
            Some("timeout") => timeouts += 1,
            _ => panic!("uid {uid}: {message}"),
        }
    }
    for (uid, peer) in &peers {
        assert_eq!(peers.get(peer), Some(uid), "{uid} and {peer} disagree: a double match");
    }
    assert_eq!(matched + timeouts, 2000);
    assert!(matched >= 1900, "{matched} matched, {timeouts} timed out");
    assert!(by_rule.len() == 2, "both rules were used: {by_rule:?}");
    assert_eq!(server.status()["generation"], 4);
}

async fn sigkilled_workers_lose_no_waiting_player(sdk: Sdk) {
    let server = start(sdk, 30_000);
    let mut waiting_players = Vec::new();
    for uid in 1..=20u64 {
        let (client, _) = tokio_tungstenite::connect_async(url(&server, uid, "m", "chess")).await.expect("connect");
        waiting_players.push(client);
    }
    hotsock_testkit::wait_for("20 waiting", || (server.try_status()?["tables"][0]["rows"] == 21).then_some(()));
    for slot in 0..2 {
        let pid = server.worker_pid(slot);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        hotsock_testkit::wait_for("replacement", || {
            let worker = server.try_status()?["workers"][slot].clone();
            (worker["crashes"] == 1 && worker["state"] == "ready").then_some(())
        });
    }
    let mut partners = Vec::new();
    for uid in 101..=120u64 {
        let (client, _) = tokio_tungstenite::connect_async(url(&server, uid, "f", "chess")).await.expect("connect");
        partners.push(client);
    }
    for client in waiting_players.iter_mut().chain(partners.iter_mut()) {
        let (message, code) = outcome(client).await;
        assert_eq!(message["type"], "matched", "{message}");
        assert_eq!(code, Some(1000));
    }
}

/// Copies examples/matchmaker-php into `dir` (worker.php's `require` of
/// the SDK pointed at this repository's) and returns the worker script.
fn copy_matchmaker_php(dir: &std::path::Path) -> std::path::PathBuf {
    let example = repo_root().join("examples/matchmaker-php");
    std::fs::create_dir_all(dir.join("src")).expect("mkdir");
    for entry in std::fs::read_dir(example.join("src")).expect("src") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join("src").join(path.file_name().expect("name"))).expect("copy");
    }
    let source = std::fs::read_to_string(example.join("worker.php")).expect("worker.php");
    let require = "require __DIR__ . '/../../sdk/php/autoload.php';";
    assert!(source.contains(require), "examples/matchmaker-php/worker.php changed; update this test");
    let autoload = repo_root().join("sdk/php/autoload.php");
    let script = dir.join("worker.php");
    std::fs::write(&script, source.replace(require, &format!("require '{}';", autoload.display()))).expect("write");
    script
}

/// The PHP dev loop: the rule file is edited and saved while a player
/// waits; the watcher starts the next generation with no build, the waiting
/// player stays in the pool, and the next match follows the new rule
/// (rating-window pairs two men; opposite-gender never would).
#[tokio::test(flavor = "multi_thread")]
async fn a_php_rule_edit_is_live_for_the_next_match_without_a_build() {
    hotsock_testkit::php();
    let dir = hotsock_testkit::TempDir::new("mm-php");
    let script = copy_matchmaker_php(dir.path());
    let example = std::fs::read_to_string(repo_root().join("examples/matchmaker/hotsock.toml")).expect("config");
    let tables = &example[example.find("[tables.players]").expect("tables")..];
    let config = format!(
        "[workers]\ncommand = [\"php\", \"{}\"]\ncount = 2\n[reload.watch]\nenabled = true\npaths = [\"{}\"]\ndebounce_ms = 150\n{tables}",
        script.display(),
        dir.path().display()
    );
    let server = TestServer::start_with_env(&config, &[("MATCH_SECRET", SECRET), ("MATCH_TIMEOUT_MS", "60000")]);
    hotsock_testkit::wait_for("watcher up", || server.try_status()?["watch"]["backend"].as_str().map(|_| ()));
    // Before the edit: opposite-gender.
    let (mut a, _) = tokio_tungstenite::connect_async(url(&server, 1, "m", "chess")).await.expect("a");
    waiting(&mut a).await;
    let (mut b, _) = tokio_tungstenite::connect_async(url(&server, 2, "f", "chess")).await.expect("b");
    let (first, _) = outcome(&mut b).await;
    assert_eq!((first["type"].as_str(), first["rules"].as_str()), (Some("matched"), Some("opposite-gender")));
    outcome(&mut a).await;
    // A man waits; then the rule is edited and saved.
    let (mut waiter, _) = tokio_tungstenite::connect_async(url(&server, 3, "m", "chess")).await.expect("waiter");
    waiting(&mut waiter).await;
    let rules = dir.path().join("src/Rules.php");
    let text = std::fs::read_to_string(&rules).expect("read");
    let before = "public const DEFAULT = 'opposite-gender';";
    assert!(text.contains(before), "examples/matchmaker-php/src/Rules.php changed; update this test");
    std::fs::write(&rules, text.replace(before, "public const DEFAULT = 'rating-window';")).expect("edit");
    hotsock_testkit::wait_for("the edit live (generation 2)", || {
        let status = server.try_status()?;
        (status["generation"] == 2 && status["workers"].as_array()?.iter().all(|w| w["state"] == "ready")).then_some(())
    });
    // The next match follows the new rule: a man with the man who waited
    // through the reload.
    let (mut next_man, _) = tokio_tungstenite::connect_async(url(&server, 4, "m", "chess")).await.expect("next");
    let (matched, code) = outcome(&mut next_man).await;
    assert_eq!(matched["type"], "matched", "{matched}");
    assert_eq!(matched["rules"], "rating-window", "{matched}");
    assert_eq!(matched["peer"]["uid"], 3, "the player who waited through the reload: {matched}");
    assert_eq!(code, Some(1000));
    let (theirs, _) = outcome(&mut waiter).await;
    assert_eq!(theirs["peer"]["uid"], 4, "{theirs}");
    let status = server.status();
    assert_eq!(status["watch"]["last_build"], serde_json::Value::Null, "no build ran: {status}");
}

/// Two headless Chromium pages (Debian's chromium, driven by playwright-core
/// from tests/node) load the example's page, press "Find match", and show
/// each other's name and the rule that matched them. Then one searches
/// again and the server stops under it: the page must say it closed early.
#[test]
fn two_browser_pages_match_each_other() {
    use std::io::BufRead;

    let chromium = hotsock_testkit::chromium();
    let node = hotsock_testkit::node();
    let example = std::fs::read_to_string(repo_root().join("examples/matchmaker/hotsock.toml")).expect("config");
    let tables = &example[example.find("[tables.players]").expect("tables")..];
    let config = format!(
        "[server]\nstatic_dir = \"{}\"\n[workers]\ncommand = [\"{}\"]\ncount = 2\n{tables}",
        repo_root().join("examples/matchmaker/www").display(),
        bin("matchmaker").display()
    );
    let mut server = TestServer::start_with_env(&config, &[("MATCH_SECRET", "page-secret")]);
    let mut child = std::process::Command::new(node)
        .arg(repo_root().join("tests/node/matchmaker_page.js"))
        .arg(format!("http://{}/", server.addr))
        .arg("page-secret")
        .env("CHROMIUM", &chromium)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    // The script waits on the page with its own deadlines and exits on
    // failure, so each line read ends, with the line or with EOF.
    while !seen.ends_with("searching again\n") {
        if stdout.read_line(&mut seen).expect("read node's stdout") == 0 {
            break;
        }
    }
    if seen.ends_with("searching again\n") {
        // A server stop is the early close a player can meet: 1001 while waiting.
        let output = server.cli(&["stop"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(server.wait_exit(), Some(0));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read node's stdout");
    seen.push_str(&rest);
    let output = child.wait_with_output().expect("wait for node");
    assert!(output.status.success(), "{seen}{}", String::from_utf8_lossy(&output.stderr));
    assert!(seen.contains("Ada matched Bob, Bob matched Ada, rule shown"), "{seen}");
    assert!(seen.contains("early close reported: Closed (1001) before a result."), "{seen}");
}
