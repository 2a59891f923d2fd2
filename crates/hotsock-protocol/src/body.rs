//! Bodies of the structured frames, encoded by hand: fixed-width
//! little-endian integers and `u32`-length-prefixed byte strings. No serde,
//! so a worker in another language needs nothing but this layout.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Kind, ProtocolError};

/// Which job a worker process does. Event workers receive connection events;
/// task workers (a later protocol addition) receive tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Handles handshake/open/message/close events.
    Event,
    /// Handles tasks dispatched by event workers.
    Task,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Event => 0,
            Role::Task => 1,
        }
    }

    fn from_u8(byte: u8) -> Option<Role> {
        match byte {
            0 => Some(Role::Event),
            1 => Some(Role::Task),
            _ => None,
        }
    }

    /// The lower-case name used in process titles, status and logs.
    pub fn name(self) -> &'static str {
        match self {
            Role::Event => "event",
            Role::Task => "task",
        }
    }
}

/// Server → worker, first frame: who the worker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The server's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// The worker slot (0-based) this process fills.
    pub slot: u32,
    /// The code generation this process belongs to (1 for the first).
    pub generation: u64,
    /// Event or task worker.
    pub role: Role,
    /// How many events the worker may run at once, across connections.
    pub max_concurrency: u32,
    /// State the slot's previous worker handed over (`Handoff`), if any.
    pub handoff: Option<Bytes>,
    /// The shared tables, in the order of the file descriptors the server
    /// passed before Hello.
    pub tables: Vec<TableSpec>,
    /// `[cluster]`: where the cluster-wide tables live (appended in
    /// version 1's Hello; absent on a single server).
    pub cluster: Option<ClusterSpec>,
}

/// The cluster a worker's cluster-wide tables (`scope = "cluster"`) are in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterSpec {
    /// `cluster.redis`.
    pub redis: String,
    /// `cluster.prefix`.
    pub prefix: String,
    /// This node's `cluster.node_id`: with the connection id, what names a
    /// connection cluster-wide.
    pub node: String,
    /// The tables with `scope = "cluster"` (no segment is passed for them).
    pub tables: Vec<TableSpec>,
}

/// A shared table's declaration, as the worker needs it to map the segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableSpec {
    /// The table's name (`[tables.NAME]`).
    pub name: String,
    /// Its capacity in rows.
    pub rows: u32,
    /// Column names and types (`i64`, `f64`, `str:N`), in order.
    pub columns: Vec<(String, String)>,
}

/// Worker → server, answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The version the worker's SDK speaks.
    pub protocol_version: u16,
    /// Bits from [`crate::capabilities`].
    pub capabilities: u32,
}

/// The body of a `Handshake` event: the HTTP upgrade request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeRequest {
    /// The client's address, `ip:port`.
    pub peer: String,
    /// The request target: path plus query string.
    pub path: String,
    /// Header names and values as the client sent them.
    pub headers: Vec<(String, Bytes)>,
}

/// The body of a `HandshakeReply`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeReply {
    /// 101 accepts the upgrade; any 4xx/5xx rejects it with that status.
    pub status: u16,
    /// Bind the connection to this uid on accept.
    pub uid: Option<u64>,
    /// Extra response headers (for example `Sec-WebSocket-Protocol`).
    pub headers: Vec<(String, Bytes)>,
    /// Response body for a rejection.
    pub body: Bytes,
}

/// The body of a `Reply` to `ConnInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnInfo {
    /// The connection id.
    pub conn: u64,
    /// The client's address, `ip:port`.
    pub peer: String,
    /// The request target of the upgrade request.
    pub path: String,
    /// The uid the connection is bound to, if any.
    pub uid: Option<u64>,
    /// When the connection was accepted, in milliseconds since the Unix
    /// epoch (the server's clock, passed in; this crate never reads one).
    pub connected_at_unix_ms: u64,
    /// The worker slot the connection's events currently go to.
    pub slot: u32,
}

/// Reads body fields off a byte slice, turning every short read into a
/// `BadBody` error that names the frame kind.
pub(crate) struct FieldReader<'a> {
    kind: Kind,
    buf: &'a [u8],
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(kind: Kind, buf: &'a [u8]) -> FieldReader<'a> {
        FieldReader { kind, buf }
    }

    pub(crate) fn bad(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::BadBody { kind: self.kind, reason }
    }

    fn need(&self, n: usize) -> Result<(), ProtocolError> {
        if self.buf.len() < n { Err(self.bad("body ends early")) } else { Ok(()) }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.need(2)?;
        Ok(self.buf.get_u16_le())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.need(4)?;
        Ok(self.buf.get_u32_le())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.need(8)?;
        Ok(self.buf.get_u64_le())
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn string(&mut self) -> Result<String, ProtocolError> {
        let raw = self.bytes()?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|_| self.bad("string is not UTF-8"))
    }

    pub(crate) fn headers(&mut self) -> Result<Vec<(String, Bytes)>, ProtocolError> {
        let count = self.u16()? as usize;
        // Each header takes at least 8 bytes, so a count larger than the
        // remaining bytes allow is garbage; checking first keeps a forged
        // count from reserving a huge vector.
        if count * 8 > self.buf.len() {
            return Err(self.bad("header count exceeds body"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.string()?;
            let value = Bytes::copy_from_slice(self.bytes()?);
            headers.push((name, value));
        }
        Ok(headers)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.bad("trailing bytes after body")) }
    }
}

pub(crate) fn put_bytes(dst: &mut BytesMut, value: &[u8]) {
    dst.put_u32_le(u32::try_from(value.len()).unwrap_or(u32::MAX));
    dst.extend_from_slice(value);
}

pub(crate) fn put_headers(dst: &mut BytesMut, headers: &[(String, Bytes)]) {
    // More than u16::MAX headers cannot be expressed; the server caps
    // request headers far below that, so truncating the count is never hit.
    let count = headers.len().min(u16::MAX as usize);
    dst.put_u16_le(count as u16);
    for (name, value) in &headers[..count] {
        put_bytes(dst, name.as_bytes());
        put_bytes(dst, value);
    }
}

impl Hello {
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.protocol_version);
        dst.put_u32_le(self.slot);
        dst.put_u64_le(self.generation);
        dst.put_u8(self.role.to_u8());
        dst.put_u32_le(self.max_concurrency);
        dst.put_u8(u8::from(self.handoff.is_some()));
        put_bytes(dst, self.handoff.as_deref().unwrap_or_default());
        put_specs(dst, &self.tables);
        if let Some(cluster) = &self.cluster {
            dst.put_u8(1);
            put_bytes(dst, cluster.redis.as_bytes());
            put_bytes(dst, cluster.prefix.as_bytes());
            put_bytes(dst, cluster.node.as_bytes());
            put_specs(dst, &cluster.tables);
        }
    }

    /// Decodes a Hello body. The version comes first and is checked by the
    /// caller; trailing bytes are allowed so a later version can append
    /// fields that an older worker still reads the start of.
    pub(crate) fn decode_body(buf: &[u8]) -> Result<Hello, ProtocolError> {
        let mut r = FieldReader::new(Kind::Hello, buf);
        let protocol_version = r.u16()?;
        let slot = r.u32()?;
        let generation = r.u64()?;
        let role =
            Role::from_u8(r.u8()?).ok_or(ProtocolError::BadBody { kind: Kind::Hello, reason: "unknown role" })?;
        let max_concurrency = r.u32()?;
        let has_handoff = r.u8()? != 0;
        let handoff = Bytes::copy_from_slice(r.bytes()?);
        let tables = read_specs(&mut r)?;
        // Appended: an older server sends nothing here.
        let cluster = match r.is_empty() {
            true => None,
            false if r.u8()? == 0 => None,
            false => Some(ClusterSpec {
                redis: r.string()?,
                prefix: r.string()?,
                node: r.string()?,
                tables: read_specs(&mut r)?,
            }),
        };
        Ok(Hello {
            protocol_version,
            slot,
            generation,
            role,
            max_concurrency,
            handoff: has_handoff.then_some(handoff),
            tables,
            cluster,
        })
    }
}

fn put_specs(dst: &mut BytesMut, tables: &[TableSpec]) {
    dst.put_u16_le(u16::try_from(tables.len()).unwrap_or(u16::MAX));
    for table in tables {
        put_bytes(dst, table.name.as_bytes());
        dst.put_u32_le(table.rows);
        dst.put_u16_le(u16::try_from(table.columns.len()).unwrap_or(u16::MAX));
        for (name, ty) in &table.columns {
            put_bytes(dst, name.as_bytes());
            put_bytes(dst, ty.as_bytes());
        }
    }
}

fn read_specs(r: &mut FieldReader<'_>) -> Result<Vec<TableSpec>, ProtocolError> {
    let count = r.u16()? as usize;
    let mut tables = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = r.string()?;
        let rows = r.u32()?;
        let columns = r.u16()? as usize;
        let mut spec = TableSpec { name, rows, columns: Vec::with_capacity(columns.min(256)) };
        for _ in 0..columns {
            spec.columns.push((r.string()?, r.string()?));
        }
        tables.push(spec);
    }
    Ok(tables)
}

impl Ready {
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.protocol_version);
        dst.put_u32_le(self.capabilities);
    }

    pub(crate) fn decode_body(buf: &[u8]) -> Result<Ready, ProtocolError> {
        let mut r = FieldReader::new(Kind::Ready, buf);
        Ok(Ready { protocol_version: r.u16()?, capabilities: r.u32()? })
    }
}

impl HandshakeRequest {
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        put_bytes(dst, self.peer.as_bytes());
        put_bytes(dst, self.path.as_bytes());
        put_headers(dst, &self.headers);
    }

    pub(crate) fn decode_body(buf: &[u8]) -> Result<HandshakeRequest, ProtocolError> {
        let mut r = FieldReader::new(Kind::Handshake, buf);
        let request = HandshakeRequest { peer: r.string()?, path: r.string()?, headers: r.headers()? };
        r.finish()?;
        Ok(request)
    }

    /// The first value of a header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &v[..])
    }

    /// The value of a query-string parameter, undecoded (`?a=1&b=2`).
    pub fn query(&self, key: &str) -> Option<&str> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then_some(v)
        })
    }
}

impl HandshakeReply {
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.status);
        dst.put_u8(u8::from(self.uid.is_some()));
        dst.put_u64_le(self.uid.unwrap_or(0));
        put_headers(dst, &self.headers);
        dst.extend_from_slice(&self.body);
    }

    pub(crate) fn decode_body(buf: &[u8]) -> Result<HandshakeReply, ProtocolError> {
        let mut r = FieldReader::new(Kind::HandshakeReply, buf);
        let status = r.u16()?;
        let has_uid = r.u8()? != 0;
        let uid = r.u64()?;
        let headers = r.headers()?;
        let body = Bytes::copy_from_slice(r.rest());
        Ok(HandshakeReply { status, uid: has_uid.then_some(uid), headers, body })
    }
}

impl ConnInfo {
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u64_le(self.conn);
        put_bytes(dst, self.peer.as_bytes());
        put_bytes(dst, self.path.as_bytes());
        dst.put_u8(u8::from(self.uid.is_some()));
        dst.put_u64_le(self.uid.unwrap_or(0));
        dst.put_u64_le(self.connected_at_unix_ms);
        dst.put_u32_le(self.slot);
    }

    /// Decodes the body of a `Reply` to `ConnInfo`.
    pub fn decode(buf: &[u8]) -> Result<ConnInfo, ProtocolError> {
        let mut r = FieldReader::new(Kind::Reply, buf);
        let conn = r.u64()?;
        let peer = r.string()?;
        let path = r.string()?;
        let has_uid = r.u8()? != 0;
        let uid = r.u64()?;
        let info =
            ConnInfo { conn, peer, path, uid: has_uid.then_some(uid), connected_at_unix_ms: r.u64()?, slot: r.u32()? };
        r.finish()?;
        Ok(info)
    }

    /// Encodes this as a `Reply` body.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_body(&mut buf);
        buf.freeze()
    }
}

/// Encodes a list of ids (the body of `Ack` and of a `ConnList` reply).
pub(crate) fn encode_ids(ids: &[u64], dst: &mut BytesMut) {
    for id in ids {
        dst.put_u64_le(*id);
    }
}

/// Decodes a list of ids; the body must be a whole number of `u64`s.
pub(crate) fn decode_ids(kind: Kind, mut buf: &[u8]) -> Result<Vec<u64>, ProtocolError> {
    if !buf.len().is_multiple_of(8) {
        return Err(ProtocolError::BadBody { kind, reason: "id list is not a multiple of 8 bytes" });
    }
    let mut ids = Vec::with_capacity(buf.len() / 8);
    while buf.has_remaining() {
        ids.push(buf.get_u64_le());
    }
    Ok(ids)
}
