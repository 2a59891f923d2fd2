//! The handover protocol between an old and a new `hotsock` process
//! (`docs/protocol.md`, "Binary upgrade handover"): one Unix stream socket,
//! the new server's standard input. Each note is a little-endian `u32`
//! length and that much JSON, then a `u64` length and that much blob: the
//! JSON's byte fields are spans of the blob, so client data is never
//! re-encoded. File descriptors travel after a note, in messages of one
//! byte with up to `FILES_MAX` descriptors each (`SCM_RIGHTS`).
//!
//! Blocking I/O on a std socket: the two sides take turns, and each read
//! has a deadline (`set_read_timeout`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::Bytes;
use hotsock_table::{FILES_MAX, receive_files, send_descriptors};
use serde::{Deserialize, Serialize};

use crate::net::park::Parked;
use crate::route::channels::ChannelState;
use crate::route::event::ConnMeta;
use crate::route::hub::{ConnState, HubSnapshot};
use crate::route::outbox::Outgoing;

/// The handover protocol's version: the new server refuses a `Begin` of
/// another one by name, and the old server keeps serving.
pub(crate) const HANDOVER_VERSION: u32 = 1;

/// Environment variable that makes `hotsock start` a new server taking
/// over: the descriptor of its handover socket (always `0`, its stdin).
pub const ENV_UPGRADE_FD: &str = "HOTSOCK_UPGRADE_FD";

/// Largest JSON part of a note (10,000 connections take about 2 MB).
const NOTE_MAX_BYTES: u32 = 256 << 20;
/// Largest blob of a note: queued output and channel histories.
const BLOB_MAX_BYTES: u64 = 4 << 30;

/// One step of the handover.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "note", rename_all = "snake_case")]
pub(crate) enum Note {
    /// Old to new, first; followed by the listening sockets and table
    /// segments (see `Begin::files`).
    Begin(Begin),
    /// New to old: it passed its readiness gate.
    Ready { version: String, pid: u32 },
    /// New to old: it cannot serve, and exits.
    Failed { reason: String },
    /// Old to new, optional, before `State`: the idle connections parked
    /// first; followed by one socket per connection, in `conns` order.
    Premove(PremoveNote),
    /// New to old: it took the premove note's connections in (the old
    /// server parks the rest only then, so their pause does not include it).
    Ahead { connections: usize },
    /// Old to new: every connection and channel; followed by one socket
    /// per connection not in the `premove` note, in `conns` order.
    State(StateNote),
    /// New to old: it holds every connection.
    Holding { connections: usize },
    /// Old to new: the old server lets go; the new one serves.
    Commit,
    /// Old to new: the old server serves on; the new one exits.
    Abort { reason: String },
}

/// What the new server needs before its workers start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Begin {
    pub(crate) handover_version: u32,
    pub(crate) from_version: String,
    pub(crate) from_pid: u32,
    /// The generation serving and the rollback target: the new server
    /// starts the same code.
    pub(crate) serving: u64,
    pub(crate) previous: Option<u64>,
    /// Whether a metrics listener follows the client listener.
    pub(crate) metrics: bool,
    /// The table segments that follow, by name.
    pub(crate) tables: Vec<String>,
}

/// Totals `status` and `/metrics` show, continued by the new server.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Totals {
    pub(crate) accepted: u64,
    pub(crate) messages_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) messages_out: u64,
    pub(crate) bytes_out: u64,
}

/// A span of a note's blob.
type Span = (u64, u64);

/// Queued output or a history entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutNote {
    /// `text`, `binary` or `close`.
    kind: String,
    #[serde(default)]
    data: Span,
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
}

/// One connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnNote {
    conn: u64,
    peer: String,
    path: String,
    connected_at_unix_ms: u64,
    uid: Option<u64>,
    outbox: Vec<OutNote>,
    /// Bytes read from the client and not yet parsed.
    leftover: Span,
    /// In a state note: its socket, facts and leftover came in the
    /// `premove` note (no socket follows for it here).
    #[serde(default)]
    premoved: bool,
}

/// The idle connections, sent ahead while the busy ones still serve:
/// socket, facts and unread bytes, none of which change while parked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PremoveNote {
    pub(crate) conns: Vec<ConnNote>,
}

/// One channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChannelNote {
    name: String,
    epoch: u64,
    head: u64,
    members: Vec<u64>,
    /// Offset, time, bytes.
    history: Vec<(u64, u64, OutNote)>,
}

/// The state note.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StateNote {
    pub(crate) conns: Vec<ConnNote>,
    channels: Vec<ChannelNote>,
    next_conn: u64,
    clock_ms: u64,
    /// When connections began to park (Unix µs): the new server measures
    /// the pause up to when it serves them.
    pub(crate) paused_at_unix_us: u64,
    #[serde(default)]
    pub(crate) totals: Totals,
}

impl StateNote {
    /// Sockets that follow this note (those not sent ahead).
    pub(crate) fn sockets_following(&self) -> usize {
        self.conns.iter().filter(|c| !c.premoved).count()
    }
}

/// What is wrong with what the other side sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the other server closed the handover socket")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("note of {len} bytes is over the limit of {max}")]
    TooLarge { len: u64, max: u64 },
}

/// Writes a note and its blob.
pub(crate) fn send(socket: &UnixStream, note: &Note, blob: &[u8]) -> Result<(), WireError> {
    let json = serde_json::to_vec(note).map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = u32::try_from(json.len()).ok().filter(|&n| n <= NOTE_MAX_BYTES);
    let len = len.ok_or(WireError::TooLarge { len: json.len() as u64, max: u64::from(NOTE_MAX_BYTES) })?;
    let mut out = socket;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)?;
    out.write_all(&(blob.len() as u64).to_le_bytes())?;
    out.write_all(blob)?;
    Ok(())
}

/// Reads the next note, waiting at most `within`.
pub(crate) fn receive(socket: &UnixStream, within: Duration) -> Result<(Note, Bytes), WireError> {
    socket.set_read_timeout(Some(within.max(Duration::from_millis(1))))?;
    let read = |buf: &mut [u8]| -> Result<(), WireError> {
        let mut input = socket;
        input.read_exact(buf).map_err(|e| match e.kind() {
            // Closed with our data unread: the other process is gone too.
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => WireError::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => WireError::Timeout(within),
            _ => WireError::Io(e),
        })
    };
    let mut len = [0u8; 4];
    read(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > NOTE_MAX_BYTES {
        return Err(WireError::TooLarge { len: u64::from(len), max: u64::from(NOTE_MAX_BYTES) });
    }
    let mut json = vec![0u8; len as usize];
    read(&mut json)?;
    let note = serde_json::from_slice(&json).map_err(|e| WireError::Malformed(e.to_string()))?;
    let mut blob_len = [0u8; 8];
    read(&mut blob_len)?;
    let blob_len = u64::from_le_bytes(blob_len);
    if blob_len > BLOB_MAX_BYTES {
        return Err(WireError::TooLarge { len: blob_len, max: BLOB_MAX_BYTES });
    }
    let mut blob = vec![0u8; blob_len as usize];
    read(&mut blob)?;
    Ok((note, Bytes::from(blob)))
}

/// Sends descriptors, `FILES_MAX` per message. The caller keeps them open
/// until this returns.
pub(crate) fn send_fds(socket: &UnixStream, fds: &[RawFd]) -> Result<(), WireError> {
    for chunk in fds.chunks(FILES_MAX) {
        send_descriptors(socket, chunk)?;
    }
    Ok(())
}

/// Receives `count` descriptors sent by `send_fds`.
pub(crate) fn receive_fds(socket: &UnixStream, count: usize, within: Duration) -> Result<Vec<OwnedFd>, WireError> {
    socket.set_read_timeout(Some(within.max(Duration::from_millis(1))))?;
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let want = (count - fds.len()).min(FILES_MAX);
        let got = receive_files(socket)?;
        if got.len() != want {
            return Err(WireError::Malformed(format!("expected {want} descriptors in a message, got {}", got.len())));
        }
        fds.extend(got.into_iter().map(OwnedFd::from));
    }
    Ok(fds)
}

/// Collects byte fields into one blob.
#[derive(Default)]
struct Blob(Vec<u8>);

impl Blob {
    fn put(&mut self, bytes: &[u8]) -> Span {
        let at = self.0.len() as u64;
        self.0.extend_from_slice(bytes);
        (at, bytes.len() as u64)
    }

    fn out(&mut self, out: &Outgoing) -> OutNote {
        match out {
            Outgoing::Text(data) => {
                OutNote { kind: "text".into(), data: self.put(data), code: 0, reason: String::new() }
            }
            Outgoing::Binary(data) => {
                OutNote { kind: "binary".into(), data: self.put(data), code: 0, reason: String::new() }
            }
            Outgoing::Close(code, reason) => {
                OutNote { kind: "close".into(), data: (0, 0), code: *code, reason: reason.clone() }
            }
        }
    }
}

/// The state note, its blob, and the sockets in `conns` order. Every open
/// connection of the snapshot must be parked.
pub(crate) fn encode_state(
    snapshot: &HubSnapshot,
    parked: HashMap<u64, Parked>,
    premoved: &HashMap<u64, Option<u64>>,
    paused_at_unix_us: u64,
    totals: Totals,
) -> Result<(StateNote, Vec<u8>, Vec<RawFd>), String> {
    let mut parked = parked;
    let mut blob = Blob::default();
    let mut fds = Vec::with_capacity(snapshot.conns.len());
    let mut conns = Vec::with_capacity(snapshot.conns.len());
    for conn in &snapshot.conns {
        let Some(Parked { socket, leftover }) = parked.remove(&conn.conn) else {
            return Err(format!("connection {} is open but not parked", conn.conn));
        };
        if let Some(uid) = premoved.get(&conn.conn) {
            if *uid == conn.uid && conn.outbox.is_empty() {
                // As the premove note said: nothing to add.
                continue;
            }
            let outbox = conn.outbox.iter().map(|o| blob.out(o)).collect();
            conns.push(ConnNote {
                conn: conn.conn,
                peer: String::new(),
                path: String::new(),
                connected_at_unix_ms: 0,
                uid: conn.uid,
                outbox,
                leftover: (0, 0),
                premoved: true,
            });
            continue;
        }
        fds.push(socket);
        let outbox = conn.outbox.iter().map(|o| blob.out(o)).collect();
        conns.push(ConnNote {
            conn: conn.conn,
            peer: conn.meta.peer.clone(),
            path: conn.meta.path.clone(),
            connected_at_unix_ms: conn.meta.connected_at_unix_ms,
            uid: conn.uid,
            outbox,
            leftover: blob.put(&leftover),
            premoved: false,
        });
    }
    let channels = snapshot
        .channels
        .iter()
        .map(|c| ChannelNote {
            name: c.name.clone(),
            epoch: c.epoch,
            head: c.head,
            members: c.members.clone(),
            history: c.history.iter().map(|(offset, at, out)| (*offset, *at, blob.out(out))).collect(),
        })
        .collect();
    let note = StateNote {
        conns,
        channels,
        next_conn: snapshot.next_conn,
        clock_ms: snapshot.clock_ms,
        paused_at_unix_us,
        totals,
    };
    Ok((note, blob.0, fds))
}

/// The premove note for parked idle connections (`(conn, socket, unread
/// bytes)`) with their facts, and the sockets in order.
/// A parked connection to send ahead: id, socket, unread bytes, facts, uid.
pub(crate) type Ahead = (u64, RawFd, Vec<u8>, ConnMeta, Option<u64>);

pub(crate) fn encode_premove(parked: &[Ahead]) -> (PremoveNote, Vec<u8>, Vec<RawFd>) {
    let mut blob = Blob::default();
    let conns = parked
        .iter()
        .map(|(conn, _, leftover, meta, uid)| ConnNote {
            conn: *conn,
            peer: meta.peer.clone(),
            path: meta.path.clone(),
            connected_at_unix_ms: meta.connected_at_unix_ms,
            uid: *uid,
            outbox: Vec::new(),
            leftover: blob.put(leftover),
            premoved: false,
        })
        .collect();
    (PremoveNote { conns }, blob.0, parked.iter().map(|(_, fd, _, _, _)| *fd).collect())
}

/// A connection sent ahead: its facts and uid then, and its unread bytes.
pub(crate) type Premoved = (u64, ConnMeta, Option<u64>, Vec<u8>);

/// What the premove note says of each connection.
pub(crate) fn decode_premove(note: &PremoveNote, blob: &Bytes) -> Result<Vec<Premoved>, WireError> {
    note.conns
        .iter()
        .map(|c| {
            let meta =
                ConnMeta { peer: c.peer.clone(), path: c.path.clone(), connected_at_unix_ms: c.connected_at_unix_ms };
            Ok((c.conn, meta, c.uid, slice(blob, c.leftover)?.to_vec()))
        })
        .collect()
}

fn slice(blob: &Bytes, (at, len): Span) -> Result<Bytes, WireError> {
    let end = at.checked_add(len).filter(|&end| end <= blob.len() as u64);
    let end = end.ok_or_else(|| WireError::Malformed(format!("span {at}+{len} past the blob")))?;
    Ok(blob.slice(at as usize..end as usize))
}

/// Each connection's unparsed bytes, by connection id; `None`: it came in
/// the premove note (and so did its socket and facts).
pub(crate) type Leftovers = Vec<(u64, Option<Vec<u8>>)>;

/// The hub's part of a state note, and each connection's unparsed bytes.
pub(crate) fn decode_state(note: StateNote, blob: &Bytes) -> Result<(HubSnapshot, Leftovers), WireError> {
    let span = |span: Span| slice(blob, span);
    let out = |o: &OutNote| -> Result<Outgoing, WireError> {
        match o.kind.as_str() {
            "text" => Outgoing::data(false, span(o.data)?).map_err(|e| WireError::Malformed(e.to_string())),
            "binary" => Ok(Outgoing::Binary(span(o.data)?)),
            "close" => Ok(Outgoing::Close(o.code, o.reason.clone())),
            other => Err(WireError::Malformed(format!("unknown output kind {other:?}"))),
        }
    };
    let mut conns = Vec::with_capacity(note.conns.len());
    let mut leftovers = Vec::with_capacity(note.conns.len());
    for c in &note.conns {
        let outbox = c.outbox.iter().map(out).collect::<Result<_, _>>()?;
        let meta =
            ConnMeta { peer: c.peer.clone(), path: c.path.clone(), connected_at_unix_ms: c.connected_at_unix_ms };
        conns.push(ConnState { conn: c.conn, meta, uid: c.uid, outbox });
        leftovers.push((c.conn, if c.premoved { None } else { Some(span(c.leftover)?.to_vec()) }));
    }
    let mut channels = Vec::with_capacity(note.channels.len());
    for c in &note.channels {
        let history =
            c.history.iter().map(|(offset, at, o)| Ok((*offset, *at, out(o)?))).collect::<Result<_, WireError>>()?;
        channels.push(ChannelState {
            name: c.name.clone(),
            epoch: c.epoch,
            head: c.head,
            members: c.members.clone(),
            history,
        });
    }
    Ok((HubSnapshot { conns, channels, next_conn: note.next_conn, clock_ms: note.clock_ms }, leftovers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> HubSnapshot {
        let meta = ConnMeta { peer: "127.0.0.1:5000".into(), path: "/?a=1".into(), connected_at_unix_ms: 7 };
        HubSnapshot {
            conns: vec![ConnState {
                conn: 3,
                meta,
                uid: Some(42),
                outbox: vec![
                    Outgoing::Text(Bytes::from_static("héllo".as_bytes())),
                    Outgoing::Binary(Bytes::from_static(&[0, 1, 2])),
                    Outgoing::Close(4000, "bye".into()),
                ],
            }],
            channels: vec![ChannelState {
                name: "room".into(),
                epoch: 9,
                head: 2,
                members: vec![3],
                history: vec![
                    (1, 10, Outgoing::Text(Bytes::from_static(b"a"))),
                    (2, 11, Outgoing::Binary(Bytes::new())),
                ],
            }],
            next_conn: 4,
            clock_ms: 1234,
        }
    }

    /// A state note goes over a real socket pair with its blob and socket,
    /// and comes back as the same snapshot.
    #[test]
    fn a_state_note_round_trips_with_its_sockets() {
        let (old, new) = UnixStream::pair().expect("pair");
        let (probe, _keep) = UnixStream::pair().expect("probe");
        let socket = std::os::fd::AsRawFd::as_raw_fd(&probe);
        let parked = HashMap::from([(3, Parked { socket, leftover: vec![0x82, 0x80] })]);
        let (note, blob, fds) =
            encode_state(&snapshot(), parked, &Default::default(), 99, Totals::default()).expect("encode");
        send(&old, &Note::State(note), &blob).expect("send");
        send_fds(&old, &fds).expect("fds");
        let (note, blob) = receive(&new, Duration::from_secs(1)).expect("receive");
        let Note::State(note) = note else { panic!("not a state note") };
        assert_eq!(note.paused_at_unix_us, 99);
        let count = note.conns.len();
        let (got, leftovers) = decode_state(note, &blob).expect("decode");
        assert_eq!(format!("{got:?}"), format!("{:?}", snapshot()));
        assert_eq!(leftovers, vec![(3, Some(vec![0x82, 0x80]))]);
        assert_eq!(receive_fds(&new, count, Duration::from_secs(1)).expect("fds").len(), 1);
    }

    /// A connection sent ahead is left out of the state note while its uid
    /// and queued output are as they were, named (without its socket) once
    /// either changed.
    #[test]
    fn connections_sent_ahead_are_named_again_only_when_they_changed() {
        let parked = || HashMap::from([(3, Parked { socket: 0, leftover: vec![] })]);
        let mut unchanged = snapshot();
        unchanged.conns[0].outbox.clear();
        let ahead = HashMap::from([(3, Some(42))]);
        let (note, _, fds) = encode_state(&unchanged, parked(), &ahead, 0, Totals::default()).expect("encode");
        assert!(note.conns.is_empty() && fds.is_empty(), "{note:?}");
        let rebound = HashMap::from([(3, Some(41))]);
        let (note, _, fds) = encode_state(&unchanged, parked(), &rebound, 0, Totals::default()).expect("encode");
        assert_eq!((note.conns.len(), note.conns[0].premoved, fds.len()), (1, true, 0));
        assert_eq!(note.sockets_following(), 0);
        let (note, _, _) = encode_state(&snapshot(), parked(), &ahead, 0, Totals::default()).expect("encode");
        assert_eq!(note.conns[0].outbox.len(), 3, "queued output is named");
    }

    /// A connection that is open but not parked cannot be handed over.
    #[test]
    fn an_unparked_connection_is_refused() {
        let refused = encode_state(&snapshot(), HashMap::new(), &Default::default(), 0, Totals::default()).err();
        assert_eq!(refused.as_deref(), Some("connection 3 is open but not parked"));
    }

    /// Spans past the blob, bad text and oversized notes are errors, not
    /// panics.
    #[test]
    fn malformed_notes_are_errors() {
        let (note, _blob, _fds) = encode_state(
            &snapshot(),
            HashMap::from([(3, Parked { socket: 0, leftover: vec![] })]),
            &Default::default(),
            0,
            Totals::default(),
        )
        .expect("encode");
        assert!(matches!(decode_state(note.clone(), &Bytes::new()), Err(WireError::Malformed(_))));
        let mut bad_text = note;
        bad_text.conns[0].outbox[0].data = (0, 2);
        let blob = Bytes::from_static(&[0xff, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode_state(bad_text, &blob), Err(WireError::Malformed(_))));
        let (old, new) = UnixStream::pair().expect("pair");
        let mut out = &old;
        out.write_all(&(NOTE_MAX_BYTES + 1).to_le_bytes()).expect("write");
        assert!(matches!(receive(&new, Duration::from_secs(1)), Err(WireError::TooLarge { .. })));
        drop(old);
        assert!(matches!(receive(&new, Duration::from_secs(1)), Err(WireError::Closed)));
    }
}
