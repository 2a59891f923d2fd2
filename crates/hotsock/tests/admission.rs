//! Who may open a WebSocket, decided before any worker sees the request:
//! the Origin allow-list, the per-address connection cap and the per-address
//! handshake rate, each with its documented answer.

use hotsock_testkit::{TestServer, bin, connect, raw_http, recv, send};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn config(extra_server: &str, extra_limits: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[workers]\ncommand = [\"{}\"]\ncount = 1\n[limits]\n{extra_limits}\n",
        bin("echo").display()
    )
}

fn upgrade(origin: Option<&str>) -> Vec<u8> {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{origin}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// The status line's code of what the server answered.
async fn status(server: &TestServer, request: &[u8]) -> (u16, String) {
    let response = raw_http(server.addr, request).await;
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, response)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_origin_gets_403_and_allowed_ones_connect() {
    let server = TestServer::start(&config(r#"allowed_origins = ["https://app.example.com", "*.example.org"]"#, ""));
    assert_eq!(head_status(&server, &upgrade(Some("https://evil.example.net"))).await.0, 403);
    let (_, response) = status(&server, &upgrade(Some("https://evil.example.net"))).await;
    assert!(response.contains("this origin may not open a WebSocket here"), "{response}");
    assert_eq!(head_status(&server, &upgrade(Some("https://example.org"))).await.0, 403, "*. means a subdomain");
    for origin in ["https://app.example.com", "http://chat.example.org:8080"] {
        let mut request = server.url("/").into_client_request().expect("request");
        request.headers_mut().insert("Origin", origin.parse().expect("header"));
        let (mut client, _) = tokio_tungstenite::connect_async(request).await.expect("allowed origin connects");
        send(&mut client, "hi").await;
        assert_eq!(recv(&mut client).await, "v1:hi", "{origin}");
    }
    // Not a browser page (no Origin header): not affected by the list.
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "plain").await;
    assert_eq!(recv(&mut client).await, "v1:plain");
    assert_eq!(server.status()["rejected_total"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_past_the_per_ip_cap_gets_503_until_one_closes() {
    let server = TestServer::start(&config("", "max_connections_per_ip = 100"));
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(connect(&server.url("/")).await);
    }
    let (code, response) = status(&server, &upgrade(None)).await;
    assert_eq!(code, 503, "the 101st: {response}");
    assert!(response.contains("limits.max_connections_per_ip") && response.contains("Retry-After"), "{response}");
    // The others still work, and a closed one makes room.
    send(&mut clients[99], "still").await;
    assert_eq!(recv(&mut clients[99]).await, "v1:still");
    drop(clients.pop());
    hotsock_testkit::wait_for("the closed one gone", || (server.try_status()?["connections"] == 99).then_some(()));
    let mut again = connect(&server.url("/")).await;
    send(&mut again, "room").await;
    assert_eq!(recv(&mut again).await, "v1:room");
}

/// Sends an upgrade request and reads the answer's head only (an accepted
/// upgrade stays open); returns the code and the open stream.
async fn head_status(server: &TestServer, request: &[u8]) -> (u16, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), stream)
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_past_the_per_ip_rate_get_429() {
    let server = TestServer::start(&config("", "handshakes_per_ip_per_s = 5"));
    let mut codes = Vec::new();
    let mut open = Vec::new();
    for _ in 0..6 {
        let (code, stream) = head_status(&server, &upgrade(None)).await;
        codes.push(code);
        open.push(stream);
    }
    assert_eq!(&codes[..5], &[101; 5], "the burst: {codes:?}");
    assert_eq!(codes[5], 429, "{codes:?}");
}

#[test]
fn a_bad_origin_pattern_is_named_with_its_line() {
    let dir = hotsock_testkit::TempDir::new("origins");
    let path = dir.path().join("hotsock.toml");
    let text = format!(
        "[server]\nallowed_origins = [\"example.com\"]\n[workers]\ncommand = [\"{}\"]\n",
        bin("echo").display()
    );
    std::fs::write(&path, text).expect("write");
    let output = std::process::Command::new(bin("hotsock")).args(["check", "-c"]).arg(&path).output().expect("check");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(":2: `server.allowed_origins` has \"example.com\" is not an origin"), "{stderr}");
}
