//! The body of a `Presence` reply: where a uid is connected, per node.
//!
//! On a single server the list has at most one entry (node `local`); in a
//! cluster, one per node that holds the uid, live nodes only.

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::{FieldReader, put_bytes};
use crate::{Kind, ProtocolError};

/// The node id a single server (no `[cluster]`) reports itself as.
pub const LOCAL_NODE: &str = "local";

/// One node's connections of a uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The node's `cluster.node_id` (`local` without a cluster).
    pub node: String,
    /// The uid's connections on that node (ids are per node).
    pub conns: Vec<u64>,
}

/// Encodes a `Presence` reply: per entry the node name (`u32` length and
/// bytes), the number of connections (`u32`) and their ids (`u64` each).
pub fn encode_presence(entries: &[PresenceEntry]) -> Bytes {
    let mut buf = BytesMut::new();
    for entry in entries {
        put_bytes(&mut buf, entry.node.as_bytes());
        buf.put_u32_le(entry.conns.len() as u32);
        for conn in &entry.conns {
            buf.put_u64_le(*conn);
        }
    }
    buf.freeze()
}

/// Decodes a `Presence` reply.
pub fn decode_presence(buf: &[u8]) -> Result<Vec<PresenceEntry>, ProtocolError> {
    let mut r = FieldReader::new(Kind::Reply, buf);
    let mut entries = Vec::new();
    while !r.is_empty() {
        let node = r.string()?;
        let count = r.u32()? as usize;
        // Each id takes 8 bytes: a count the body cannot hold is malformed,
        // and must not size an allocation.
        if count > r.remaining() / 8 {
            return Err(ProtocolError::BadBody { kind: Kind::Reply, reason: "presence count exceeds the body" });
        }
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            conns.push(r.u64()?);
        }
        entries.push(PresenceEntry { node, conns });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_round_trips() {
        let entries = vec![
            PresenceEntry { node: "a:9001".into(), conns: vec![1, 7] },
            PresenceEntry { node: "b".into(), conns: vec![] },
        ];
        assert_eq!(decode_presence(&encode_presence(&entries)).expect("decodes"), entries);
        assert!(decode_presence(&[]).expect("empty").is_empty());
    }

    #[test]
    fn a_count_past_the_body_is_refused() {
        let mut body = BytesMut::new();
        put_bytes(&mut body, b"n");
        body.put_u32_le(1_000_000);
        body.put_u64_le(1);
        assert!(decode_presence(&body).is_err());
    }
}
