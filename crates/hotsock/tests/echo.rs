//! The echo example through the real `hotsock` binary, and every bad input
//! with its defined outcome. The tests of the worker's behaviour run once
//! per worker language (`common::EchoWorker`: Rust and PHP).

#[macro_use]
mod each_sdk;
mod common;

use bytes::Bytes;
use common::EchoWorker;
use futures_util::SinkExt;
use hotsock_testkit::{TestServer, close_code, connect, next, raw_http, recv, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

/// The Rust echo example on two workers, for the tests of the server itself.
fn echo_config(extra: &str) -> String {
    EchoWorker::Rust.config(2, extra)
}

each_sdk!(
    echo_replies_through_workers_on_every_slot,
    prefix_is_read_from_the_file_at_worker_start,
    worker_rejects_handshake_with_403,
    messages_larger_than_the_output_buffer_are_echoed_whole_or_fragmented,
);

const UPGRADE: &str = "GET /PATH HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

async fn echo_replies_through_workers_on_every_slot(worker: EchoWorker) {
    let server = TestServer::start(&worker.config(2, ""));
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&server.url("/echo")).await);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        send(client, &format!("hello {i}")).await;
        assert_eq!(recv(client).await, format!("v1:hello {i}"));
        send(client, "sleep:50:late").await;
        send(client, "after").await;
        // One connection's events are handled in order, even when the first
        // one takes longer.
        assert_eq!(recv(client).await, "v1:late");
        assert_eq!(recv(client).await, "v1:after");
        client.send(Message::Binary(Bytes::from_static(&[0, 159, 146, 150]))).await.expect("send");
        assert_eq!(next(client).await, Some(Message::Binary(Bytes::from_static(&[0, 159, 146, 150]))));
    }
    // Four consecutive connection ids cover both slots (dispatch = fd).
    let status = server.status();
    for worker in status["workers"].as_array().expect("workers") {
        assert!(worker["dispatched"].as_u64().expect("dispatched") > 0, "{status}");
        assert_eq!(worker["acked"], worker["dispatched"], "{status}");
    }
}

async fn prefix_is_read_from_the_file_at_worker_start(worker: EchoWorker) {
    let dir = hotsock_testkit::TempDir::new("prefix");
    let file = dir.path().join("prefix");
    std::fs::write(&file, "v2:\n").expect("write");
    let server =
        TestServer::start_with_env(&worker.config(2, ""), &[("ECHO_PREFIX_FILE", file.to_str().expect("utf8"))]);
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "x").await;
    assert_eq!(recv(&mut client).await, "v2:x");
}

async fn worker_rejects_handshake_with_403(worker: EchoWorker) {
    let server = TestServer::start(&worker.config(2, ""));
    let response = raw_http(server.addr, UPGRADE.replace("/PATH", "/?deny=1").as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{response}");
    assert!(response.ends_with("denied by the echo example (?deny=1)\n"), "{response}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_gets_426_garbage_gets_400_huge_head_gets_431() {
    let server = TestServer::start(&echo_config(""));
    let plain = raw_http(server.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{plain}");
    assert!(plain.contains("Upgrade: websocket\r\n"), "{plain}");
    let garbage = raw_http(server.addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{garbage}");
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let huge = raw_http(server.addr, huge.as_bytes()).await;
    assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
    let wrong_version = raw_http(server.addr, UPGRADE.replace("Version: 13", "Version: 8").as_bytes()).await;
    assert!(wrong_version.starts_with("HTTP/1.1 426 "), "{wrong_version}");
    // None of that disturbed the workers or the server.
    let mut client = connect(&server.url("/")).await;
    send(&mut client, "still fine").await;
    assert_eq!(recv(&mut client).await, "v1:still fine");
    assert_eq!(server.status()["rejected_total"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_max_connections_gets_503() {
    let server =
        TestServer::start(&echo_config("[limits]\n").replace("[workers]", "[server]\nmax_connections = 2\n[workers]"));
    let mut first = connect(&server.url("/")).await;
    let _second = connect(&server.url("/")).await;
    let refused = raw_http(server.addr, UPGRADE.as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{refused}");
    first.close(None).await.expect("close");
    while next(&mut first).await.is_some() {}
    // The freed slot is usable again.
    hotsock_testkit::wait_for("a free connection slot", || (server.status()["connections"] == 1).then_some(()));
    let mut third = connect(&server.url("/")).await;
    send(&mut third, "in").await;
    assert_eq!(recv(&mut third).await, "v1:in");
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_message_closes_with_1009_and_others_are_unaffected() {
    let server = TestServer::start(&echo_config("[limits]\nmax_message_bytes = 1024\n"));
    let mut bystander = connect(&server.url("/")).await;
    let mut client = connect(&server.url("/")).await;
    send(&mut client, &"a".repeat(1024)).await;
    assert_eq!(recv(&mut client).await.len(), 1024 + 3);
    send(&mut client, &"a".repeat(1025)).await;
    assert_eq!(close_code(&mut client).await, Some(1009));
    send(&mut bystander, "ok").await;
    assert_eq!(recv(&mut bystander).await, "v1:ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_text_closes_with_1007() {
    let server = TestServer::start(&echo_config(""));
    let mut client = connect(&server.url("/")).await;
    let frame = Frame::message(Bytes::from_static(&[0xff, 0xfe, 0xfd]), OpCode::Data(Data::Text), true);
    client.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(close_code(&mut client).await, Some(1007));
}

/// Upgrades a raw TCP socket, so the test can send frames no client library
/// would.
async fn raw_upgrade(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(UPGRADE.replace("/PATH", "/").as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    stream
}

/// Reads frames until a close frame and returns its code.
async fn raw_close_code(stream: &mut tokio::net::TcpStream) -> u16 {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(hotsock_testkit::WAIT, stream.read_to_end(&mut all)).await;
    let mut rest = &all[..];
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let len = (rest[1] & 0x7f) as usize;
        assert!(len < 126, "test reads only short frames");
        if opcode == 8 {
            return u16::from_be_bytes([rest[2], rest[3]]);
        }
        rest = &rest[2 + len..];
    }
    panic!("no close frame in {all:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_violation_closes_with_1002() {
    let server = TestServer::start(&echo_config(""));
    // An unmasked frame from a client violates RFC 6455 §5.1.
    let mut stream = raw_upgrade(server.addr).await;
    stream.write_all(&[0x81, 0x05, b'h', b'e', b'l', b'l', b'o']).await.expect("write");
    assert_eq!(raw_close_code(&mut stream).await, 1002);
    // So does a reserved opcode.
    let mut stream = raw_upgrade(server.addr).await;
    let mut frame = Vec::new();
    Frame::from_payload(
        FrameHeader { opcode: OpCode::Data(Data::Reserved(3)), mask: Some([1, 2, 3, 4]), ..FrameHeader::default() },
        Bytes::new(),
    )
    .format(&mut frame)
    .expect("format");
    stream.write_all(&frame).await.expect("write");
    assert_eq!(raw_close_code(&mut stream).await, 1002);
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_is_answered_by_the_server_and_close_is_completed() {
    let server = TestServer::start(&echo_config(""));
    let mut client = connect(&server.url("/")).await;
    client.send(Message::Ping(Bytes::from_static(b"are you there"))).await.expect("ping");
    assert_eq!(next(&mut client).await, Some(Message::Pong(Bytes::from_static(b"are you there"))));
    client.close(None).await.expect("close");
    // The server answers our close frame, then the stream ends.
    assert!(matches!(next(&mut client).await, Some(Message::Close(_)) | None));
    assert_eq!(next(&mut client).await, None);
}

/// A reply larger than `limits.output_buffer_bytes` is not a slow reader:
/// with a 16 MiB message limit and the default 1 MiB output buffer, 4, 8
/// and 16 MiB messages, text and binary, whole and in fragments, come back.
async fn messages_larger_than_the_output_buffer_are_echoed_whole_or_fragmented(worker: EchoWorker) {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let server = TestServer::start(&worker.config(2, "[limits]\nmax_message_bytes = 16777216\n"));
    let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
    let (mut client, _) =
        tokio_tungstenite::connect_async_with_config(server.url("/big"), Some(config), false).await.expect("connect");
    for mib in [4, 8, 16] {
        let len: usize = mib << 20;
        for binary in [false, true] {
            for fragments in [1, 7] {
                // Bytes that are valid UTF-8 and differ by position, so a
                // reordered or cut reply cannot pass.
                let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                let opcode = if binary { Data::Binary } else { Data::Text };
                let chunk = len.div_ceil(fragments);
                for (k, part) in payload.chunks(chunk).enumerate() {
                    let code = if k == 0 { OpCode::Data(opcode) } else { OpCode::Data(Data::Continue) };
                    let last = (k + 1) * chunk >= len;
                    client
                        .feed(Message::Frame(Frame::message(Bytes::copy_from_slice(part), code, last)))
                        .await
                        .expect("feed");
                }
                client.flush().await.expect("flush");
                let what = format!("{mib} MiB binary={binary} fragments={fragments}");
                match next(&mut client).await {
                    Some(Message::Binary(data)) if binary => assert!(data[..] == payload[..], "{what}: content"),
                    Some(Message::Text(text)) if !binary => {
                        assert!(text.as_bytes().strip_prefix(b"v1:") == Some(&payload[..]), "{what}: content")
                    }
                    other => panic!("{what}: got {:?}", other.map(|m| m.len())),
                }
            }
        }
    }
    let status = server.status();
    assert_eq!(status["connections"], 1, "{status}");
}
