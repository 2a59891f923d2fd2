//! Bodies of the channel frames (`Subscribe`, `Publish`, their replies, the
//! member and channel lists) and the typed refusal a worker gets back.
//!
//! A channel is a server-side group of connections. Each publication gets
//! the channel's next offset; the channel's epoch names one unbroken run of
//! offsets (it changes when the history is lost, for example when the server
//! restarts), so a client that remembers `(epoch, offset)` can ask to be
//! caught up after reconnecting.

use bytes::{BufMut, Bytes, BytesMut};

use crate::body::{FieldReader, put_bytes};
use crate::{Kind, ProtocolError};

/// A place in a channel's stream: the last publication a client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Position {
    /// The channel's epoch (16 hex digits in the JSON envelope).
    pub epoch: u64,
    /// The offset of the last publication seen (0: none yet).
    pub offset: u64,
}

impl Position {
    /// Parses the envelope's form of an epoch (up to 16 hex digits) and an
    /// offset, as a client sends them back when it reconnects.
    pub fn parse(epoch: &str, offset: &str) -> Option<Position> {
        if epoch.is_empty() || epoch.len() > 16 {
            return None;
        }
        Some(Position { epoch: u64::from_str_radix(epoch, 16).ok()?, offset: offset.parse().ok()? })
    }

    /// The epoch as the envelope writes it: 16 lower-case hex digits.
    pub fn epoch_hex(&self) -> String {
        format!("{:016x}", self.epoch)
    }
}

/// The answer to a `Subscribe` the server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscribed {
    /// A position was given and every publication after it was replayed:
    /// the client missed nothing. False for a plain subscribe, and when the
    /// gap could not be filled (the epoch changed, the history no longer
    /// reaches back, or the replay would exceed the limits): the app should
    /// then send the client a full state.
    pub recovered: bool,
    /// The channel's epoch.
    pub epoch: u64,
    /// The channel's latest offset when the subscription took effect; every
    /// later publication reaches the connection live.
    pub offset: u64,
    /// Publications replayed to the connection before the live ones.
    pub replayed: u32,
}

impl Subscribed {
    /// Encodes this as a `Reply` body.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(21);
        buf.put_u8(u8::from(self.recovered));
        buf.put_u64_le(self.epoch);
        buf.put_u64_le(self.offset);
        buf.put_u32_le(self.replayed);
        buf.freeze()
    }

    /// Decodes the body of a `Reply` to `Subscribe`.
    pub fn decode(buf: &[u8]) -> Result<Subscribed, ProtocolError> {
        let mut r = FieldReader::new(Kind::Reply, buf);
        let subscribed = Subscribed { recovered: r.u8()? != 0, epoch: r.u64()?, offset: r.u64()?, replayed: r.u32()? };
        r.finish()?;
        Ok(subscribed)
    }
}

/// Why the server refused a channel request. Travels in a `Reply` with
/// `NOT_FOUND` set: a `u16` code, a `u64` (the limit, or the channel's head
/// for [`ChannelError::AheadOfHead`]) and a UTF-8 detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is empty, longer than the limit, or holds control characters.
    #[error("bad channel name: {0}")]
    BadName(String),
    /// The server holds `channels.max_channels` channels already.
    #[error("the server holds as many channels as it may (channels.max_channels = {max})")]
    TooManyChannels {
        /// The limit.
        max: u64,
    },
    /// The channel has `channels.max_members` members already.
    #[error("the channel has as many members as it may (channels.max_members = {max})")]
    ChannelFull {
        /// The limit.
        max: u64,
    },
    /// The connection is in `channels.max_channels_per_conn` channels already.
    #[error("the connection is in as many channels as it may (channels.max_channels_per_conn = {max})")]
    TooManyForConnection {
        /// The limit.
        max: u64,
    },
    /// A recovery position past the channel's latest offset (in the same
    /// epoch): the client claims to have seen what was never published.
    #[error("position {offset} is ahead of the channel's latest offset {head}")]
    AheadOfHead {
        /// The offset asked for.
        offset: u64,
        /// The channel's latest offset.
        head: u64,
    },
    /// The connection is not (or no longer) connected.
    #[error("no such connection")]
    NoSuchConnection,
    /// A publication larger than `limits.max_message_bytes`.
    #[error("publication of {len} bytes exceeds limits.max_message_bytes = {max}")]
    TooLarge {
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Cluster mode: the request needs Redis, which cannot be reached now
    /// (the detail says why). Nothing took effect.
    #[error("the cluster is unavailable: {0}")]
    ClusterUnavailable(String),
}

impl ChannelError {
    fn code(&self) -> u16 {
        match self {
            ChannelError::BadName(_) => 1,
            ChannelError::TooManyChannels { .. } => 2,
            ChannelError::ChannelFull { .. } => 3,
            ChannelError::TooManyForConnection { .. } => 4,
            ChannelError::AheadOfHead { .. } => 5,
            ChannelError::NoSuchConnection => 6,
            ChannelError::TooLarge { .. } => 7,
            ChannelError::ClusterUnavailable(_) => 8,
        }
    }

    /// A short stable name, for metrics labels and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ChannelError::BadName(_) => "bad_name",
            ChannelError::TooManyChannels { .. } => "max_channels",
            ChannelError::ChannelFull { .. } => "max_members",
            ChannelError::TooManyForConnection { .. } => "max_channels_per_conn",
            ChannelError::AheadOfHead { .. } => "ahead_of_head",
            ChannelError::NoSuchConnection => "no_such_connection",
            ChannelError::TooLarge { .. } => "too_large",
            ChannelError::ClusterUnavailable(_) => "cluster_unavailable",
        }
    }

    /// Encodes this as the body of a refusing `Reply`.
    pub fn to_bytes(&self) -> Bytes {
        let (number, detail) = match self {
            ChannelError::BadName(why) | ChannelError::ClusterUnavailable(why) => (0, why.clone()),
            ChannelError::TooManyChannels { max }
            | ChannelError::ChannelFull { max }
            | ChannelError::TooManyForConnection { max } => (*max, String::new()),
            ChannelError::AheadOfHead { offset, head } => (*head, offset.to_string()),
            ChannelError::NoSuchConnection => (0, String::new()),
            ChannelError::TooLarge { len, max } => (*max, len.to_string()),
        };
        let mut buf = BytesMut::with_capacity(10 + detail.len());
        buf.put_u16_le(self.code());
        buf.put_u64_le(number);
        buf.extend_from_slice(detail.as_bytes());
        buf.freeze()
    }

    /// Decodes the body of a refusing `Reply` to a channel request.
    pub fn decode(buf: &[u8]) -> Result<ChannelError, ProtocolError> {
        let mut r = FieldReader::new(Kind::Reply, buf);
        let code = r.u16()?;
        let number = r.u64()?;
        let detail = std::str::from_utf8(r.rest())
            .map_err(|_| ProtocolError::BadBody { kind: Kind::Reply, reason: "channel error detail is not UTF-8" })?;
        let bad = ProtocolError::BadBody { kind: Kind::Reply, reason: "malformed channel error" };
        Ok(match code {
            1 => ChannelError::BadName(detail.to_owned()),
            2 => ChannelError::TooManyChannels { max: number },
            3 => ChannelError::ChannelFull { max: number },
            4 => ChannelError::TooManyForConnection { max: number },
            5 => ChannelError::AheadOfHead { offset: detail.parse().map_err(|_| bad)?, head: number },
            6 => ChannelError::NoSuchConnection,
            7 => ChannelError::TooLarge { len: detail.parse().map_err(|_| bad)?, max: number },
            8 => ChannelError::ClusterUnavailable(detail.to_owned()),
            _ => return Err(ProtocolError::BadBody { kind: Kind::Reply, reason: "unknown channel error code" }),
        })
    }
}

/// One member of a channel, as the `Members` reply lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The connection id.
    pub conn: u64,
    /// The uid the connection is bound to, if any.
    pub uid: Option<u64>,
}

/// Encodes the body of a `Members` reply: per member `conn u64`,
/// `has_uid u8`, `uid u64`.
pub fn encode_members(members: &[Member]) -> Bytes {
    let mut buf = BytesMut::with_capacity(members.len() * 17);
    for member in members {
        buf.put_u64_le(member.conn);
        buf.put_u8(u8::from(member.uid.is_some()));
        buf.put_u64_le(member.uid.unwrap_or(0));
    }
    buf.freeze()
}

/// Decodes the body of a `Members` reply.
pub fn decode_members(buf: &[u8]) -> Result<Vec<Member>, ProtocolError> {
    if !buf.len().is_multiple_of(17) {
        return Err(ProtocolError::BadBody { kind: Kind::Reply, reason: "member list is not a multiple of 17 bytes" });
    }
    let mut r = FieldReader::new(Kind::Reply, buf);
    let mut members = Vec::with_capacity(buf.len() / 17);
    for _ in 0..buf.len() / 17 {
        let conn = r.u64()?;
        let has_uid = r.u8()? != 0;
        let uid = r.u64()?;
        members.push(Member { conn, uid: has_uid.then_some(uid) });
    }
    Ok(members)
}

/// Encodes the body of a `ConnChannels` reply: `u32`-length-prefixed names.
pub fn encode_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Bytes {
    let mut buf = BytesMut::new();
    for name in names {
        put_bytes(&mut buf, name.as_bytes());
    }
    buf.freeze()
}

/// Decodes the body of a `ConnChannels` reply.
pub fn decode_names(buf: &[u8]) -> Result<Vec<String>, ProtocolError> {
    let mut r = FieldReader::new(Kind::Reply, buf);
    let mut names = Vec::new();
    while !r.is_empty() {
        names.push(r.string()?);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip() {
        let errors = [
            ChannelError::BadName("empty".into()),
            ChannelError::TooManyChannels { max: 10 },
            ChannelError::ChannelFull { max: 3 },
            ChannelError::TooManyForConnection { max: 128 },
            ChannelError::AheadOfHead { offset: 99, head: 7 },
            ChannelError::NoSuchConnection,
            ChannelError::TooLarge { len: 5000, max: 4096 },
            ChannelError::ClusterUnavailable("connection refused".into()),
        ];
        for error in errors {
            assert_eq!(ChannelError::decode(&error.to_bytes()), Ok(error));
        }
        assert!(ChannelError::decode(&[99, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ChannelError::decode(&[1]).is_err());
    }

    #[test]
    fn lists_round_trip() {
        let members = [Member { conn: 1, uid: None }, Member { conn: 9, uid: Some(0) }];
        assert_eq!(decode_members(&encode_members(&members)).expect("ok"), members);
        assert!(decode_members(&[0; 16]).is_err());
        let names = decode_names(&encode_names(["a", "room:7"])).expect("ok");
        assert_eq!(names, ["a", "room:7"]);
        assert!(decode_names(&[5, 0, 0, 0, b'a']).is_err());
        let s = Subscribed { recovered: true, epoch: u64::MAX, offset: 12, replayed: 3 };
        assert_eq!(Subscribed::decode(&s.to_bytes()), Ok(s));
    }

    #[test]
    fn positions_parse_from_the_envelope_form() {
        let p = Position { epoch: 0x00ab_cdef_0123_4567, offset: 42 };
        assert_eq!(Position::parse(&p.epoch_hex(), "42"), Some(p));
        assert_eq!(Position::parse("", "1"), None);
        assert_eq!(Position::parse("12345678901234567", "1"), None);
        assert_eq!(Position::parse("zz", "1"), None);
        assert_eq!(Position::parse("ff", "-1"), None);
    }
}
