//! `hotsock reload` re-reads the config file (issue 14 part 7), against the
//! real binary and echo workers: live keys apply with the reload and are
//! seen in behaviour (who may connect, what is logged); a key that needs a
//! restart refuses the whole reload with its line, and so does a file that
//! does not parse, and then nothing changes at all.

use hotsock_testkit::{TestServer, bin, connect, raw_http, recv, send, wait_for};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn server() -> TestServer {
    TestServer::start(&format!("[server]\n[workers]\ncommand = [\"{}\"]\ncount = 1\n", bin("echo").display()))
}

/// The config file with `edit` applied to its text.
fn edit(server: &TestServer, edit: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&server.config).expect("config");
    std::fs::write(&server.config, edit(text)).expect("write config");
}

/// Adds `line` under the first line that is `section`.
fn under(section: &str, line: &str) -> impl FnOnce(String) -> String {
    let (section, line) = (section.to_owned(), line.to_owned());
    move |text| text.replacen(&format!("{section}\n"), &format!("{section}\n{line}\n"), 1)
}

/// `hotsock reload --wait`: success, stdout and stderr.
fn reload(server: &TestServer) -> (bool, String) {
    let output = server.cli(&["reload", "--wait"]);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The status code the server answers an upgrade from `origin` with.
async fn upgrade_status(server: &TestServer, origin: &str) -> u16 {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nOrigin: {origin}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("status line");
    String::from_utf8_lossy(&head[9..12]).parse().expect("status code")
}

async fn connect_from(server: &TestServer, origin: &str) -> hotsock_testkit::Client {
    let mut request = server.url("/").into_client_request().expect("request");
    request.headers_mut().insert("Origin", origin.parse().expect("header"));
    let (client, _) = tokio_tungstenite::connect_async(request).await.expect("connect");
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn live_keys_apply_with_the_reload() {
    let server = server();
    let mut before = connect_from(&server, "https://evil.example").await;
    assert_eq!(upgrade_status(&server, "https://evil.example").await, 101, "no allow-list yet");

    edit(&server, under("[server]", "allowed_origins = [\"https://app.example\"]"));
    edit(&server, |text| format!("{text}[limits]\nmax_connections_per_ip = 2\n[log]\nlevel = \"warn\"\n"));
    let (ok, out) = reload(&server);
    assert!(ok, "{out}");
    assert!(
        server
            .log()
            .contains("config re-read: server.allowed_origins, limits.max_connections_per_ip, log.level changed"),
        "{}",
        server.log()
    );

    // Origins: the new list decides new handshakes; the connection opened
    // before is not closed.
    assert_eq!(upgrade_status(&server, "https://evil.example").await, 403);
    let mut allowed = connect_from(&server, "https://app.example").await;
    send(&mut before, "still here").await;
    assert_eq!(recv(&mut before).await, "v1:still here");
    // The per-IP cap counts connections opened from now on: `allowed` is
    // one, one more fits, the next gets 503.
    let _second = connect(&server.url("/")).await;
    let third = raw_http(
        server.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(third.starts_with("HTTP/1.1 503") && third.contains("max_connections_per_ip"), "{third}");
    send(&mut allowed, "ok").await;
    assert_eq!(recv(&mut allowed).await, "v1:ok");

    // log.level = "warn": the next reload's info line is not written.
    let (ok, out) = reload(&server);
    assert!(ok, "{out}");
    assert_eq!(server.log().matches("config re-read").count(), 1, "{}", server.log());
    assert_eq!(server.status()["generation"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_needs_a_restart_refuses_the_reload_and_nothing_changes() {
    let server = server();
    let mut client = connect(&server.url("/")).await;
    let listen_line = std::fs::read_to_string(&server.config)
        .expect("config")
        .lines()
        .position(|l| l.starts_with("listen = "))
        .expect("listen line")
        + 1;
    let port = hotsock_testkit::free_port();
    // A live key in the same edit must not apply either.
    edit(&server, |text| {
        let text = text.replacen(&format!("{}", server.addr), &format!("127.0.0.1:{port}"), 1);
        text.replacen("[server]\n", "[server]\nallowed_origins = [\"https://app.example\"]\n", 1)
    });
    let (ok, out) = reload(&server);
    assert!(!ok, "the reload must fail: {out}");
    let expected =
        format!("{}:{}: `server.listen` changed, which needs a restart", server.config.display(), listen_line + 1);
    assert!(out.contains(&expected) && out.contains("nothing changed"), "expected {expected:?} in {out}");

    assert_eq!(server.status()["generation"], 1, "no reload was performed");
    assert_eq!(upgrade_status(&server, "https://evil.example").await, 101, "the origin list did not apply");
    send(&mut client, "same").await;
    assert_eq!(recv(&mut client).await, "v1:same");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens on the new address");
}

#[test]
fn a_file_that_does_not_parse_refuses_a_signalled_reload_and_the_old_config_serves() {
    let server = server();
    let pid = server.status()["pid"].as_u64().expect("pid") as i32;
    let good = std::fs::read_to_string(&server.config).expect("config");
    edit(&server, |text| format!("{text}[limits]\nmax_message_bytes = \"big\"\n"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).expect("SIGUSR1");
    let refusal = wait_for("the refusal in the log", || {
        let log = server.log();
        log.find("reload refused, nothing changed").map(|at| log[at..].to_owned())
    });
    // The same form as at start: the file, the line, the key (the parser's
    // message quotes the line on the lines after it).
    let expected = format!("{}: TOML parse error at line 7", server.config.display());
    assert!(refusal.contains(&expected), "{refusal}");
    assert!(refusal.contains("max_message_bytes = \"big\""), "{refusal}");
    // (The CLI reads the file too, so it needs the good one back to ask.)
    std::fs::write(&server.config, good).expect("restore");
    assert_eq!(server.status()["generation"], 1, "no reload was performed");
}

#[test]
fn reload_watch_settings_apply_with_the_reload() {
    let project = hotsock_testkit::TempDir::new("watched");
    let src = project.path().join("src");
    std::fs::create_dir_all(&src).expect("src");
    let server = TestServer::start(&format!(
        "[workers]\ncommand = [\"{}\"]\ncount = 1\n[reload.watch]\nenabled = false\npaths = [\"{}\"]\n",
        bin("echo").display(),
        src.display()
    ));
    assert!(server.status()["watch"].is_null(), "not watching yet");

    edit(&server, |text| text.replace("enabled = false", "enabled = true"));
    let (ok, out) = reload(&server);
    assert!(ok, "{out}");
    wait_for("the watcher up", || server.try_status()?["watch"]["backend"].as_str().map(|_| ()));
    // Watching now: a change reloads (no build configured).
    std::fs::write(src.join("lib.rs"), "// edited\n").expect("edit");
    wait_for("the change reloaded", || (server.try_status()?["generation"] == 3).then_some(()));

    edit(&server, |text| text.replace("enabled = true", "enabled = false"));
    let (ok, out) = reload(&server);
    assert!(ok, "{out}");
    wait_for("the watcher stopped", || server.try_status()?["watch"].is_null().then_some(()));
}
