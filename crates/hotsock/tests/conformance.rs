//! The worker conformance kit: this file plays the server's side of
//! docs/protocol.md against a worker executable, with no hotsock server in
//! between, so a worker SDK in any language can be checked frame by frame.
//! Every check runs against the Rust SDK (hotsock-testworker) and the PHP
//! SDK (sdk/php/tests/testworker.php); the next language adds one line to
//! `each_sdk!`.
//!
//! What it checks: the pre-Hello byte and Hello/Ready (and a Hello of
//! another version), events of one connection handled in order with each
//! Ack after the frames its handler sent, the REDELIVERED flag reaching
//! the handler, Close events acknowledged, Ping answered with Pong,
//! Snapshot answered with Handoff (state carried into the next worker's
//! Hello), Stop ending the process with status 0 after its acks, a
//! shared table passed before Hello and used by the worker (mapped, or
//! through table requests the kit answers as the server does), and a
//! malformed frame from the server making the worker exit instead of
//! guessing. Every frame the worker sends is decoded strictly: a malformed
//! one fails the check that reads it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hotsock_protocol::{
    Decoder, ENV_SERVER_PID, ENV_WORKER_FD, HEADER_LEN, Hello, PROTOCOL_VERSION, Role, TableOp, TableSpec, TableValue,
    ToServer, ToWorker, encode_table_row,
};
use hotsock_testkit::bin;

/// How long one expected frame may take.
const WAIT: Duration = Duration::from_secs(10);

/// A worker process and our end of its socket.
struct Harness {
    child: Child,
    socket: UnixStream,
    buf: BytesMut,
    decoder: Decoder,
    /// Frames read while looking for another one.
    seen: Vec<ToServer>,
}

fn command(sdk: &str) -> Command {
    match sdk {
        "rust" => Command::new(bin("hotsock-testworker")),
        "php" => {
            let mut command = Command::new(hotsock_testkit::php());
            command.arg(hotsock_testkit::repo_root().join("sdk/php/tests/testworker.php"));
            command
        }
        other => panic!("no SDK named {other}"),
    }
}

fn hello(version: u16, handoff: Option<Bytes>, tables: Vec<TableSpec>) -> ToWorker {
    ToWorker::Hello(Hello {
        protocol_version: version,
        slot: 0,
        generation: 1,
        role: Role::Event,
        max_concurrency: 16,
        handoff,
        tables,
        cluster: None,
    })
}

impl Harness {
    /// Starts the worker as the server would: its socket as stdin, the
    /// environment variables, the pre-Hello byte (no tables), then Hello.
    fn start(sdk: &str, version: u16, handoff: Option<Bytes>) -> Harness {
        Harness::start_with_tables(sdk, version, handoff, &[])
    }

    /// `start`, with shared tables passed before Hello and listed in it.
    fn start_with_tables(
        sdk: &str,
        version: u16,
        handoff: Option<Bytes>,
        tables: &[(TableSpec, &hotsock_table::Table)],
    ) -> Harness {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let child = command(sdk)
            .env(ENV_WORKER_FD, "0")
            .env(ENV_SERVER_PID, std::process::id().to_string())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the worker");
        ours.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let files: Vec<&std::fs::File> = tables.iter().map(|(_, table)| table.file()).collect();
        hotsock_table::send_files(&ours, &files).expect("the pre-Hello byte");
        let mut harness =
            Harness { child, socket: ours, buf: BytesMut::new(), decoder: Decoder::default(), seen: Vec::new() };
        let specs = tables.iter().map(|(spec, _)| spec.clone()).collect();
        harness.send(&[hello(version, handoff, specs)]);
        harness
    }

    fn send(&mut self, messages: &[ToWorker]) {
        let mut buf = BytesMut::new();
        for message in messages {
            message.encode(&mut buf);
        }
        self.socket.write_all(&buf).expect("write to the worker");
    }

    /// The next frame, strictly decoded; `None` when the worker closed its
    /// end.
    fn next(&mut self) -> Option<ToServer> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).expect("the worker sent a malformed frame") {
                return Some(ToServer::from_frame(frame).expect("the worker sent a malformed body"));
            }
            assert!(Instant::now() < deadline, "no frame from the worker within {WAIT:?}");
            let mut chunk = [0u8; 4096];
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// Frames until `want` matches one; the others are kept in `seen`.
    fn until(&mut self, what: &str, want: impl Fn(&ToServer) -> bool) -> ToServer {
        loop {
            let frame = self.next().unwrap_or_else(|| panic!("the worker closed its socket before {what}"));
            if want(&frame) {
                return frame;
            }
            self.seen.push(frame);
        }
    }

    fn ready(&mut self) -> u16 {
        match self.next() {
            Some(ToServer::Ready(ready)) => ready.protocol_version,
            other => panic!("expected Ready as the first frame, got {other:?}"),
        }
    }

    fn exit_status(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the worker did not exit within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(data: &Bytes) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn message(conn: u64, id: u64, redelivered: bool, body: &str) -> ToWorker {
    ToWorker::Message { conn, id, redelivered, binary: false, data: Bytes::from(body.to_owned()) }
}

/// Hello/Ready with the worker's own version; a Hello of another version
/// is still answered (so the server can name both), then the worker exits
/// with a failure.
fn handshake(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    assert_eq!(worker.ready(), PROTOCOL_VERSION);
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION + 98, None);
    assert_eq!(worker.ready(), PROTOCOL_VERSION, "a worker answers with its own version");
    assert_ne!(worker.exit_status(), Some(0), "a version mismatch is a failure");
}

/// One connection's events in order, each Ack after its handler's pushes;
/// REDELIVERED reaches the handler; Close is acknowledged.
fn events_in_order_and_acks_after_pushes(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    worker.ready();
    let mut events = vec![ToWorker::Open { conn: 7, id: 1, redelivered: false }];
    for n in 0..20u64 {
        events.push(message(7, 2 + n, n == 5, &format!("echo:{n}")));
    }
    events.push(ToWorker::Close { conn: 7, id: 22, redelivered: false, code: 1000, reason: String::new() });
    worker.send(&events);
    // Pushes and acks in the order they were written.
    let mut pushes = Vec::new();
    let mut acked = Vec::new();
    let mut pushes_before_ack = std::collections::HashMap::new();
    while acked.len() < 22 {
        match worker.next().expect("frames until every event is acknowledged") {
            ToServer::Push { conn, data, .. } => {
                assert_eq!(conn, 7, "a push for another connection");
                pushes.push(text(&data));
            }
            ToServer::Ack(ids) => {
                for id in ids {
                    pushes_before_ack.insert(id, pushes.len());
                    acked.push(id);
                }
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=22).collect::<Vec<_>>(), "every event acknowledged once");
    assert!(pushes[0].starts_with("open 7"), "{pushes:?}");
    let echoes: Vec<String> = pushes[1..].to_vec();
    let expected: Vec<String> =
        (0..20).map(|n| if n == 5 { format!("[redelivered]{n}") } else { n.to_string() }).collect();
    assert_eq!(echoes, expected, "in order, with the REDELIVERED mark on the one redelivered event");
    for n in 0..20u64 {
        // Message id 2 + n pushed its reply as push number 1 + n.
        assert!(pushes_before_ack[&(2 + n)] >= 2 + n as usize, "event {} acknowledged before its push", 2 + n);
    }
}

/// Ping is answered with Pong and the same sequence number.
fn heartbeats(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    worker.ready();
    worker.send(&[ToWorker::Ping { seq: 41 }, ToWorker::Ping { seq: 42 }]);
    for seq in [41, 42] {
        let pong = worker.until("a Pong", |f| matches!(f, ToServer::Pong { .. }));
        assert!(matches!(pong, ToServer::Pong { seq: s } if s == seq), "{pong:?}");
    }
}

/// Snapshot: once idle the worker hands over its state; the next worker
/// of the slot gets it in Hello.
fn snapshot_and_handoff(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    worker.ready();
    worker.send(&[ToWorker::Open { conn: 1, id: 1, redelivered: false }, message(1, 2, false, "remember:kept")]);
    worker.until("the remember ack", |f| matches!(f, ToServer::Ack(ids) if ids.contains(&2)));
    worker.send(&[ToWorker::Snapshot]);
    let handoff = worker.until("Handoff", |f| matches!(f, ToServer::Handoff(_)));
    let ToServer::Handoff(Some(state)) = handoff else { panic!("expected state, got {handoff:?}") };
    assert!(text(&state).contains("kept"), "{}", text(&state));
    let mut next = Harness::start(sdk, PROTOCOL_VERSION, Some(state));
    next.ready();
    next.send(&[ToWorker::Open { conn: 2, id: 1, redelivered: false }, message(2, 2, false, "recall")]);
    let recalled =
        next.until("the recall answer", |f| matches!(f, ToServer::Push { data, .. } if text(data).contains("kept")));
    assert!(matches!(recalled, ToServer::Push { conn: 2, .. }));
}

/// Stop: the running handler finishes and is acknowledged, then the
/// process exits with status 0.
fn stop(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    worker.ready();
    worker.send(&[ToWorker::Open { conn: 3, id: 1, redelivered: false }, message(3, 2, false, "sleep:200:late")]);
    worker.send(&[ToWorker::Stop]);
    let reply = worker
        .until("the sleeping handler's push", |f| matches!(f, ToServer::Push { data, .. } if text(data) == "late"));
    assert!(matches!(reply, ToServer::Push { conn: 3, .. }));
    worker.until("its ack", |f| matches!(f, ToServer::Ack(ids) if ids.contains(&2)));
    assert_eq!(worker.exit_status(), Some(0));
}

/// A shared table: its segment passed before Hello, listed in Hello. The
/// worker sees a row the kit wrote, and its increments land in the same
/// segment, whether it maps it (Rust) or asks (PHP: the kit answers table
/// requests on its own mapping, as the server does).
fn shared_tables(sdk: &str) {
    use hotsock_table::{Column, ColumnType, Schema, Table, Value};
    let schema = Schema {
        rows: 16,
        columns: vec![
            Column { name: "label".into(), ty: ColumnType::Str(8) },
            Column { name: "n".into(), ty: ColumnType::Int },
        ],
    };
    let table = Table::create("counters", &schema).expect("create a segment");
    table.set("k", &[("n", Value::Int(40))]).expect("set");
    let spec = TableSpec {
        name: "counters".into(),
        rows: 16,
        columns: vec![("label".into(), "str:8".into()), ("n".into(), "i64".into())],
    };
    let mut worker = Harness::start_with_tables(sdk, PROTOCOL_VERSION, None, &[(spec, &table)]);
    worker.ready();
    let mut events = vec![ToWorker::Open { conn: 4, id: 1, redelivered: false }];
    events.extend((0..3).map(|n| message(4, 2 + n, false, "tincr:k")));
    events.push(message(4, 5, false, "tget:k"));
    worker.send(&events);
    let mut answers = Vec::new();
    while answers.len() < 5 {
        match worker.next().expect("frames until every answer") {
            ToServer::Push { data, .. } => answers.push(text(&data)),
            ToServer::Ack(_) => {}
            ToServer::Table { request, table: 0, op } => {
                let body = match op {
                    TableOp::Incr { key, column, delta } => {
                        let n = table.incr(&key, &column, delta).expect("incr");
                        Bytes::copy_from_slice(&n.to_le_bytes())
                    }
                    TableOp::Get { key } => {
                        let row = table.get(&key).expect("get").map(|row| {
                            vec![
                                ("label".to_owned(), TableValue::Str(row.str("label").unwrap_or_default().into())),
                                ("n".to_owned(), TableValue::Int(row.int("n").unwrap_or_default())),
                            ]
                        });
                        encode_table_row(row.as_deref())
                    }
                    other => panic!("unexpected table request {other:?}"),
                };
                worker.send(&[ToWorker::Reply { id: request, not_found: false, body }]);
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(answers[1..], ["41", "42", "43", "43"], "{answers:?}");
    assert_eq!(table.get("k").expect("get").and_then(|row| row.int("n")), Some(43), "in the kit's segment");
}

/// Bytes that are no frame: the worker exits (with a failure) instead of
/// guessing where the next frame starts.
fn malformed_frames_from_the_server(sdk: &str) {
    let mut worker = Harness::start(sdk, PROTOCOL_VERSION, None);
    worker.ready();
    let mut garbage = vec![0u8; HEADER_LEN];
    garbage[4] = 0x3f; // a kind no version defines
    worker.socket.write_all(&garbage).expect("write");
    assert_ne!(worker.exit_status(), Some(0));
}

/// One `#[test]` per check and SDK.
macro_rules! each_sdk {
    ($($check:ident),* $(,)?) => {
        mod rust {
            $(#[test] fn $check() { super::$check("rust") })*
        }
        mod php {
            $(#[test] fn $check() { super::$check("php") })*
        }
    };
}

each_sdk!(
    handshake,
    events_in_order_and_acks_after_pushes,
    heartbeats,
    snapshot_and_handoff,
    stop,
    shared_tables,
    malformed_frames_from_the_server,
);
