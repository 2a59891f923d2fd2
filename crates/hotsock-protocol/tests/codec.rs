//! Round-trips and malformed input for every frame kind. Property tests
//! generate messages, encode them, split the byte stream at arbitrary points
//! and check the decoder gives back exactly what went in.

use bytes::{Bytes, BytesMut};
use hotsock_protocol::{
    ClusterSpec, ConnInfo, Decoder, Frame, HEADER_LEN, HandshakeReply, HandshakeRequest, Hello, Kind, PROTOCOL_VERSION,
    Position, ProtocolError, Ready, Role, TableOp, TableSpec, TableValue, ToServer, ToWorker, decode_conn_list,
    encode_conn_list,
};
use proptest::prelude::*;

fn decode_all(decoder: &Decoder, buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(buf).expect("valid stream") {
        frames.push(frame);
    }
    frames
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn arb_headers() -> impl Strategy<Value = Vec<(String, Bytes)>> {
    proptest::collection::vec(("[a-zA-Z-]{1,20}", arb_bytes()), 0..8)
}

fn arb_to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
            any::<u32>(),
            proptest::option::of(arb_bytes()),
            proptest::collection::vec(
                ("[a-z]{1,8}", any::<u32>(), proptest::collection::vec(("[a-z]{1,8}", "i64|f64|str:[0-9]{1,3}"), 0..4))
                    .prop_map(|(name, rows, columns)| TableSpec { name, rows, columns }),
                0..3
            )
        )
            .prop_map(|(slot, generation, task, max_concurrency, handoff, tables)| {
                // Every other Hello is a cluster node's, with its tables.
                let cluster = (slot % 2 == 1).then(|| ClusterSpec {
                    redis: format!("redis://127.0.0.1:{}/0", slot % 65536),
                    prefix: "hs".into(),
                    node: format!("n{slot}"),
                    tables: tables.iter().rev().cloned().collect(),
                });
                ToWorker::Hello(Hello {
                    protocol_version: PROTOCOL_VERSION,
                    slot,
                    generation,
                    role: if task { Role::Task } else { Role::Event },
                    max_concurrency,
                    handoff,
                    tables,
                    cluster,
                })
            }),
        Just(ToWorker::Snapshot),
        (any::<u64>(), any::<u64>(), any::<bool>(), arb_bytes())
            .prop_map(|(task, id, redelivered, payload)| { ToWorker::Task { task, id, redelivered, payload } }),
        (any::<u64>(), any::<bool>(), any::<bool>(), arb_bytes())
            .prop_map(|(task, orphaned, failed, payload)| { ToWorker::Finish { task, orphaned, failed, payload } }),
        (any::<u64>(), any::<u64>(), any::<bool>(), ".{0,30}", ".{0,60}", arb_headers()).prop_map(
            |(conn, id, redelivered, peer, path, headers)| ToWorker::Handshake {
                conn,
                id,
                redelivered,
                request: HandshakeRequest { peer, path, headers },
            }
        ),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(conn, id, redelivered)| ToWorker::Open {
            conn,
            id,
            redelivered
        }),
        (any::<u64>(), any::<u64>(), any::<bool>(), arb_bytes()).prop_map(|(conn, id, redelivered, data)| {
            ToWorker::Message { conn, id, redelivered, binary: true, data }
        }),
        (any::<u64>(), any::<u64>(), ".{0,100}").prop_map(|(conn, id, text)| ToWorker::Message {
            conn,
            id,
            redelivered: false,
            binary: false,
            data: Bytes::from(text)
        }),
        (any::<u64>(), any::<u64>(), any::<bool>(), any::<u16>(), ".{0,40}")
            .prop_map(|(conn, id, redelivered, code, reason)| ToWorker::Close { conn, id, redelivered, code, reason }),
        (any::<u64>(), any::<bool>(), arb_bytes()).prop_map(|(id, not_found, body)| ToWorker::Reply {
            id,
            not_found,
            body
        }),
        Just(ToWorker::Stop),
        any::<u64>().prop_map(|seq| ToWorker::Ping { seq }),
        (any::<u64>(), any::<u64>(), any::<bool>(), ".{0,40}", any::<bool>()).prop_map(
            |(conn, id, redelivered, channel, join)| if join {
                ToWorker::Join { conn, id, redelivered, channel }
            } else {
                ToWorker::Leave { conn, id, redelivered, channel }
            }
        ),
    ]
}

fn arb_to_server() -> impl Strategy<Value = ToServer> {
    prop_oneof![
        (any::<u16>(), any::<u32>())
            .prop_map(|(protocol_version, capabilities)| ToServer::Ready(Ready { protocol_version, capabilities })),
        proptest::collection::vec(any::<u64>(), 0..50).prop_map(ToServer::Ack),
        (any::<u64>(), arb_bytes()).prop_map(|(conn, data)| ToServer::Push { conn, binary: true, data }),
        (any::<u64>(), ".{0,80}").prop_map(|(conn, t)| ToServer::Push { conn, binary: false, data: Bytes::from(t) }),
        (any::<u64>(), any::<u16>(), ".{0,40}").prop_map(|(conn, code, reason)| ToServer::CloseConn {
            conn,
            code,
            reason
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(conn, uid)| ToServer::Bind { conn, uid }),
        (any::<u64>(), arb_bytes()).prop_map(|(uid, data)| ToServer::SendToUid { uid, binary: true, data }),
        arb_bytes().prop_map(|data| ToServer::Broadcast { binary: true, data }),
        (any::<u64>(), arb_bytes()).prop_map(|(request, payload)| ToServer::DispatchTask { request, payload }),
        (any::<u64>(), any::<bool>(), arb_bytes()).prop_map(|(task, failed, payload)| ToServer::TaskDone {
            task,
            failed,
            payload
        }),
        proptest::option::of(arb_bytes().prop_filter("non-empty", |b| !b.is_empty())).prop_map(ToServer::Handoff),
        (any::<u64>(), any::<u64>()).prop_map(|(conn, request)| ToServer::ConnInfo { conn, request }),
        any::<u64>().prop_map(|request| ToServer::ConnList { request }),
        any::<u64>().prop_map(|seq| ToServer::Pong { seq }),
        (any::<u64>(), any::<u64>(), ".{0,60}").prop_map(|(conn, event, message)| ToServer::Panicked {
            conn,
            event,
            message
        }),
        (any::<u64>(), any::<u16>(), proptest::option::of(any::<u64>()), arb_headers(), arb_bytes()).prop_map(
            |(conn, status, uid, headers, body)| ToServer::HandshakeReply {
                conn,
                reply: HandshakeReply { status, uid, headers, body }
            }
        ),
        (any::<u64>(), any::<u64>(), ".{0,40}", proptest::option::of((any::<u64>(), any::<u64>()))).prop_map(
            |(conn, request, channel, from)| ToServer::Subscribe {
                conn,
                request,
                channel,
                from: from.map(|(epoch, offset)| Position { epoch, offset })
            }
        ),
        (any::<u64>(), ".{0,40}").prop_map(|(conn, channel)| ToServer::Unsubscribe { conn, channel }),
        (any::<u64>(), ".{0,40}", proptest::option::of(any::<u64>()), arb_bytes()).prop_map(
            |(request, channel, except, data)| ToServer::Publish { request, channel, except, binary: true, data }
        ),
        (any::<u64>(), ".{0,40}").prop_map(|(request, channel)| ToServer::Members { request, channel }),
        (any::<u64>(), any::<u64>()).prop_map(|(conn, request)| ToServer::ConnChannels { conn, request }),
        (any::<u64>(), any::<u64>()).prop_map(|(request, uid)| ToServer::Presence { request, uid }),
        (any::<u64>(), any::<u16>(), ".{0,40}").prop_map(|(uid, code, reason)| ToServer::CloseUid {
            uid,
            code,
            reason
        }),
        (any::<u64>(), any::<u16>(), arb_table_op()).prop_map(|(request, table, op)| ToServer::Table {
            request,
            table,
            op
        }),
    ]
}

fn arb_table_value() -> impl Strategy<Value = TableValue> {
    prop_oneof![
        any::<i64>().prop_map(TableValue::Int),
        // Any bits but NaN's, which compare unequal to themselves.
        any::<f64>().prop_filter("not NaN", |f| !f.is_nan()).prop_map(TableValue::Float),
        ".{0,40}".prop_map(TableValue::Str),
    ]
}

fn arb_table_op() -> impl Strategy<Value = TableOp> {
    let values = || proptest::collection::vec(("[a-z]{1,8}", arb_table_value()), 0..5);
    prop_oneof![
        ".{0,20}".prop_map(|key| TableOp::Get { key }),
        ".{0,20}".prop_map(|key| TableOp::Delete { key }),
        (".{0,20}", values()).prop_map(|(key, values)| TableOp::Set { key, values }),
        (".{0,20}", values()).prop_map(|(key, values)| TableOp::Insert { key, values }),
        (".{0,20}", "[a-z]{0,8}", any::<i64>()).prop_map(|(key, column, delta)| TableOp::Incr { key, column, delta }),
        (".{0,20}", "[a-z]{0,8}", any::<f64>().prop_filter("not NaN", |f| !f.is_nan()))
            .prop_map(|(key, column, delta)| TableOp::IncrFloat { key, column, delta }),
        (".{0,20}", "[a-z]{0,8}", arb_table_value(), arb_table_value())
            .prop_map(|(key, column, expected, new)| TableOp::CompareAndSet { key, column, expected, new }),
        Just(TableOp::Iterate),
    ]
}

proptest! {
    #[test]
    fn to_worker_round_trips_across_any_split(msgs in proptest::collection::vec(arb_to_worker(), 1..20), cut in any::<prop::sample::Index>()) {
        let mut wire = BytesMut::new();
        for msg in &msgs { msg.encode(&mut wire); }
        let decoder = Decoder::default();
        // Feed the stream in two pieces split anywhere: decoding must not
        // depend on how reads happen to cut it.
        let at = cut.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut frames = decode_all(&decoder, &mut buf);
        buf.extend_from_slice(&wire[at..]);
        frames.extend(decode_all(&decoder, &mut buf));
        prop_assert!(buf.is_empty());
        let back: Vec<ToWorker> = frames.into_iter().map(|f| ToWorker::from_frame(f).expect("decodes")).collect();
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn to_server_round_trips_byte_by_byte(msgs in proptest::collection::vec(arb_to_server(), 1..10)) {
        let mut wire = BytesMut::new();
        for msg in &msgs { msg.encode(&mut wire); }
        let decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut back = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            back.extend(decode_all(&decoder, &mut buf).into_iter().map(|f| ToServer::from_frame(f).expect("decodes")));
        }
        prop_assert_eq!(back, msgs);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let decoder = Decoder::new(1024);
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(frame)) = decoder.decode(&mut buf) {
            let _ = ToServer::from_frame(frame.clone());
            let _ = ToWorker::from_frame(frame);
        }
    }

    #[test]
    fn conn_info_round_trips(conn in any::<u64>(), peer in ".{0,30}", path in ".{0,50}", uid in proptest::option::of(any::<u64>()), at in any::<u64>(), slot in any::<u32>()) {
        let info = ConnInfo { conn, peer, path, uid, connected_at_unix_ms: at, slot };
        prop_assert_eq!(ConnInfo::decode(&info.to_bytes()).expect("decodes"), info);
    }

    #[test]
    fn conn_list_round_trips(ids in proptest::collection::vec(any::<u64>(), 0..100)) {
        prop_assert_eq!(decode_conn_list(&encode_conn_list(&ids)).expect("decodes"), ids);
    }
}

fn header(len: u32, kind: u8) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[kind, 0]);
    buf.extend_from_slice(&[0; 16]);
    buf
}

#[test]
fn unknown_kind_is_an_error() {
    let mut buf = header(0, 0x7f);
    assert_eq!(Decoder::default().decode(&mut buf), Err(ProtocolError::UnknownKind(0x7f)));
}

#[test]
fn oversized_payload_is_refused_before_it_arrives() {
    let mut buf = header(2048, Kind::Push as u8);
    assert_eq!(Decoder::new(1024).decode(&mut buf), Err(ProtocolError::PayloadTooLarge { len: 2048, max: 1024 }));
}

#[test]
fn partial_header_waits_for_more() {
    let mut buf = BytesMut::from(&header(0, Kind::Stop as u8)[..HEADER_LEN - 1]);
    assert_eq!(Decoder::default().decode(&mut buf), Ok(None));
}

#[test]
fn wrong_direction_is_an_error() {
    let mut buf = BytesMut::new();
    ToWorker::Open { conn: 1, id: 2, redelivered: false }.encode(&mut buf);
    let frame = Decoder::default().decode(&mut buf).expect("ok").expect("frame");
    assert_eq!(ToServer::from_frame(frame), Err(ProtocolError::WrongDirection(Kind::Open)));
}

#[test]
fn invalid_utf8_text_message_event_is_an_error() {
    let frame = Frame { kind: Kind::Message, flags: 0, conn: 1, id: 1, payload: Bytes::from_static(&[0xff, 0xfe]) };
    assert!(matches!(ToWorker::from_frame(frame), Err(ProtocolError::BadBody { kind: Kind::Message, .. })));
}

#[test]
fn ack_body_must_be_whole_ids() {
    let frame = Frame { kind: Kind::Ack, flags: 0, conn: 0, id: 0, payload: Bytes::from_static(&[1, 2, 3]) };
    assert!(matches!(ToServer::from_frame(frame), Err(ProtocolError::BadBody { kind: Kind::Ack, .. })));
}

#[test]
fn forged_header_count_is_rejected_without_allocating() {
    let mut body = BytesMut::new();
    body.extend_from_slice(&101u16.to_le_bytes());
    body.extend_from_slice(&[0; 9]);
    body.extend_from_slice(&u16::MAX.to_le_bytes());
    let frame = Frame { kind: Kind::HandshakeReply, flags: 0, conn: 1, id: 0, payload: body.freeze() };
    assert!(matches!(ToServer::from_frame(frame), Err(ProtocolError::BadBody { .. })));
}

#[test]
fn query_and_header_lookup() {
    let req = HandshakeRequest {
        peer: "127.0.0.1:1".into(),
        path: "/match?uid=7&deny=1&flag".into(),
        headers: vec![("Sec-WebSocket-Key".into(), Bytes::from_static(b"abc"))],
    };
    assert_eq!(req.query("uid"), Some("7"));
    assert_eq!(req.query("deny"), Some("1"));
    assert_eq!(req.query("flag"), Some(""));
    assert_eq!(req.query("nope"), None);
    assert_eq!(req.header("sec-websocket-key"), Some(&b"abc"[..]));
}

#[test]
fn wire_layout_is_stable() {
    // Pin the exact bytes so a change to the layout is a deliberate,
    // documented protocol change and not an accident.
    let mut buf = BytesMut::new();
    ToServer::Push { conn: 0x0102, binary: true, data: Bytes::from_static(b"hi") }.encode(&mut buf);
    assert_eq!(&buf[..], &[2, 0, 0, 0, 0x43, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
    // Publish: flags BINARY|EXCEPT, conn = the excepted connection, id = the
    // request, body = u32 name length, name, data.
    let mut buf = BytesMut::new();
    ToServer::Publish {
        request: 3,
        channel: "r".into(),
        except: Some(7),
        binary: true,
        data: Bytes::from_static(b"x"),
    }
    .encode(&mut buf);
    let mut expected = vec![6, 0, 0, 0, 0x52, 0x41, 7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[1, 0, 0, 0, b'r', b'x']);
    assert_eq!(&buf[..], &expected[..]);
    // TableCompareAndSet: id = the request, body = table u16, key string,
    // column string, then the expected and new values (tag u8, 8 bytes).
    let mut buf = BytesMut::new();
    ToServer::Table {
        request: 9,
        table: 1,
        op: TableOp::CompareAndSet {
            key: "k".into(),
            column: "c".into(),
            expected: TableValue::Int(0),
            new: TableValue::Int(-1),
        },
    }
    .encode(&mut buf);
    let mut expected = vec![30, 0, 0, 0, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[1, 0, 1, 0, 0, 0, b'k', 1, 0, 0, 0, b'c']);
    expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
    expected.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(&buf[..], &expected[..]);
}

#[test]
fn malformed_table_requests_are_errors() {
    // A value tag nobody defined, and trailing bytes after a Get's key.
    let mut bad_tag = header(12, 0x61);
    bad_tag.extend_from_slice(&[0, 0, 1, 0, 0, 0, b'k', 1, 0, 1, 0, 0]);
    let frame = Decoder::default().decode(&mut bad_tag).expect("frame").expect("whole");
    assert!(matches!(ToServer::from_frame(frame), Err(ProtocolError::BadBody { kind: Kind::TableSet, .. })));
    let mut trailing = header(8, 0x60);
    trailing.extend_from_slice(&[0, 0, 1, 0, 0, 0, b'k', 0]);
    let frame = Decoder::default().decode(&mut trailing).expect("frame").expect("whole");
    assert!(ToServer::from_frame(frame).is_err());
    // A table kind sent to a worker is in the wrong direction.
    let mut backwards = header(0, 0x67);
    let frame = Decoder::default().decode(&mut backwards).expect("frame").expect("whole");
    assert_eq!(ToWorker::from_frame(frame), Err(ProtocolError::WrongDirection(Kind::TableIterate)));
}
