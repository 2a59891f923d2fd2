//! A read buffer shared by all the connections of a thread instead of one
//! per connection.
//!
//! tungstenite keeps a read buffer per connection for the connection's
//! whole life, and reads at most that much per system call. With
//! `ReadAhead` under it, the socket is read in one call of up to
//! [`SCRATCH_BYTES`] into a per-thread scratch buffer; what tungstenite does
//! not take at once waits in a buffer of exactly that size, freed as soon as
//! it is taken. So an idle connection holds only tungstenite's small buffer
//! (`limits.read_buffer_bytes`), and a busy one still reads many frames per
//! system call.
//!
//! It also follows the client's frame headers as the bytes go up
//! ([`Boundary`]), so that a connection can be stopped between two
//! messages with nothing half-parsed in the library (`stop_at_boundary`):
//! that is where `hotsock upgrade` moves a connection to the new server.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One system call's worth of reading, per runtime thread.
pub(crate) const SCRATCH_BYTES: usize = 64 << 10;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// A stream whose reads go through the thread's scratch buffer.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Bytes read from the socket and not yet taken, from `start`.
    pending: Vec<u8>,
    start: usize,
    boundary: Boundary,
    /// Hand nothing up past the end of the current message; the waker of
    /// the read that found the boundary, woken by `resume`.
    stopping: Option<Option<Waker>>,
}

impl<S> ReadAhead<S> {
    /// `early`: bytes the HTTP upgrade read past its request (the client's
    /// first frames), handed up before anything from the socket.
    pub(crate) fn new(inner: S, early: Vec<u8>) -> ReadAhead<S> {
        ReadAhead { inner, pending: early, start: 0, boundary: Boundary::default(), stopping: None }
    }

    /// From here on, reads end at the end of the current message, and
    /// return `Pending` there until `resume`.
    pub(crate) fn stop_at_boundary(&mut self) {
        if self.stopping.is_none() {
            self.stopping = Some(None);
        }
    }

    /// Reads go on as before `stop_at_boundary`.
    pub(crate) fn resume(&mut self) {
        if let Some(Some(waker)) = self.stopping.take() {
            waker.wake();
        }
    }

    /// `stop_at_boundary` is in force.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Stopped, and at the boundary: everything handed up was whole
    /// messages.
    pub(crate) fn stopped(&self) -> bool {
        self.stopping.is_some() && self.boundary.at_boundary()
    }

    /// Bytes read from the socket and not handed up yet.
    pub(crate) fn leftover(&self) -> &[u8] {
        &self.pending[self.start..]
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether bytes read earlier are waiting to be taken.
    pub(crate) fn has_pending(&self) -> bool {
        self.start < self.pending.len()
    }

    /// Hands out waiting bytes; frees the buffer once all are taken.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>, limit: usize) {
        let n = buf.remaining().min(self.pending.len() - self.start).min(limit);
        let taken = &self.pending[self.start..self.start + n];
        buf.put_slice(taken);
        self.boundary.feed(taken);
        self.start += n;
        if self.start == self.pending.len() {
            self.pending = Vec::new();
            self.start = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let limit = match &mut this.stopping {
            None => usize::MAX,
            Some(waker) => match this.boundary.room() {
                0 => {
                    *waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                room => room,
            },
        };
        if this.has_pending() {
            this.take_pending(buf, limit);
            return Poll::Ready(Ok(()));
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            let n = buf.remaining().min(got.len()).min(limit);
            buf.put_slice(&got[..n]);
            this.boundary.feed(&got[..n]);
            if n < got.len() {
                this.pending = got[n..].to_vec();
                this.start = 0;
            }
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Where the bytes handed upward stand in the client's frame stream (RFC
/// 6455 §5.2 headers only; the WebSocket library validates the rest), so
/// a connection can stop reading exactly between two messages: a binary
/// upgrade moves it there, with every byte after that point either still
/// in the socket or in [`ReadAhead::leftover`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Boundary {
    /// The header under way: its bytes so far (at most 14).
    header: [u8; HEADER_MAX],
    header_len: u8,
    /// Payload bytes of the current frame not yet handed up (`None`: in a
    /// header, or between frames).
    payload_left: Option<u64>,
    /// The current frame is a data frame that ends its message (FIN set)
    /// or a control frame, which never changes `in_message`.
    finishes: bool,
    control: bool,
    /// A fragmented data message is under way (its first frame had no FIN).
    in_message: bool,
}

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const HEADER_MAX: usize = 14;

impl Boundary {
    /// Between two messages: nothing of a message has been handed up that
    /// the library could still be holding half of.
    pub(crate) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left.is_none() && !self.in_message
    }

    /// How many bytes may be handed up without starting a new message (0
    /// at a boundary).
    pub(crate) fn room(&self) -> usize {
        if self.at_boundary() {
            return 0;
        }
        match self.payload_left {
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX),
            None => self.header_needed() - usize::from(self.header_len),
        }
    }

    /// Bytes the current header has in all (2 until its length byte is in).
    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let second = self.header[1];
        let extended = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
    }

    /// Follows `bytes`, the next ones handed up.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if let Some(left) = self.payload_left {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                bytes = &bytes[take..];
                self.payload_left = Some(left - take as u64);
                if left == take as u64 {
                    self.end_frame();
                }
                continue;
            }
            let want = self.header_needed() - usize::from(self.header_len);
            let take = want.min(bytes.len());
            let at = usize::from(self.header_len);
            self.header[at..at + take].copy_from_slice(&bytes[..take]);
            self.header_len += take as u8;
            bytes = &bytes[take..];
            // The length byte may have just made the header longer.
            if usize::from(self.header_len) == self.header_needed() {
                self.start_payload();
            }
        }
    }

    fn start_payload(&mut self) {
        let (first, second) = (self.header[0], self.header[1]);
        let len = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut be = [0u8; 8];
                be.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(be)
            }
            short => u64::from(short),
        };
        self.control = first & 0x08 != 0;
        self.finishes = first & 0x80 != 0;
        self.header_len = 0;
        self.payload_left = Some(len);
        if len == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        self.payload_left = None;
        if !self.control {
            self.in_message = !self.finishes;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy, any, prop_oneof};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A client frame (masked, as clients send them).
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend((0..len).map(|i| (i % 251) as u8 ^ 0x5a));
        out
    }

    /// A stream of messages (whole, fragmented, control frames between and
    /// inside them) and the offsets where a message ends.
    fn stream(messages: &[(Vec<usize>, bool)]) -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, mut ends) = (Vec::new(), vec![0]);
        for (fragments, ping_inside) in messages {
            for (i, &len) in fragments.iter().enumerate() {
                let last = i + 1 == fragments.len();
                bytes.extend(frame(last, if i == 0 { 2 } else { 0 }, len));
                if *ping_inside && !last {
                    bytes.extend(frame(true, 9, 3));
                }
            }
            ends.push(bytes.len());
            if *ping_inside {
                // A control frame between messages is a message of its own.
                bytes.extend(frame(true, 10, 0));
                ends.push(bytes.len());
            }
        }
        (bytes, ends)
    }

    fn sizes() -> impl Strategy<Value = usize> {
        prop_oneof![0usize..=130, 65530usize..=65540, Just(70_000usize)]
    }

    proptest::proptest! {
        /// Fed in any chunks, the tracker is at a boundary exactly where a
        /// message ends, and `room` never carries a read past one.
        #[test]
        fn boundaries_are_where_messages_end(
            messages in proptest::collection::vec((proptest::collection::vec(sizes(), 1..4), any::<bool>()), 1..6),
            chunks in proptest::collection::vec(1usize..5000, 1..40),
        ) {
            let (bytes, ends) = stream(&messages);
            let mut boundary = Boundary::default();
            let mut at = 0;
            let mut chunk = chunks.iter().cycle();
            while at < bytes.len() {
                let n = (*chunk.next().unwrap_or(&1)).min(bytes.len() - at);
                boundary.feed(&bytes[at..at + n]);
                at += n;
                proptest::prop_assert_eq!(boundary.at_boundary(), ends.contains(&at), "at byte {}", at);
            }
            // A stopping reader, from the start: each step ends at or before
            // the next message end, and steps reach every end in turn.
            let mut boundary = Boundary::default();
            let mut at = 0;
            for &end in &ends[1..] {
                boundary.feed(&bytes[at..at + 1]);
                at += 1;
                while !boundary.at_boundary() {
                    let room = boundary.room().min(bytes.len() - at);
                    proptest::prop_assert!(room > 0 && at + room <= end, "room {} at {} before {}", room, at, end);
                    boundary.feed(&bytes[at..at + room]);
                    at += room;
                }
                proptest::prop_assert_eq!(at, end);
                proptest::prop_assert_eq!(boundary.room(), 0);
            }
        }
    }

    /// Stopped mid-message, a reader hands up the rest of that message and
    /// nothing more; what it had read beyond is the leftover, and a reader
    /// made from the leftover (the new server's) continues the stream.
    #[tokio::test]
    async fn a_stopped_reader_ends_at_the_message_end_and_keeps_the_rest() {
        let (first, second) = (frame(true, 2, 300), frame(true, 1, 20));
        let early = [first.clone(), second.clone()].concat();
        let (_client, server) = tokio::io::duplex(1024);
        let mut reader = ReadAhead::new(server, early);
        let mut head = [0u8; 10];
        reader.read_exact(&mut head).await.expect("head");
        reader.stop_at_boundary();
        let mut rest = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Some(Ok(n)) = futures_util::FutureExt::now_or_never(reader.read(&mut chunk)) {
            rest.extend_from_slice(&chunk[..n]);
        }
        assert_eq!([&head[..], &rest].concat(), first, "exactly the first message");
        assert!(reader.stopped());
        assert_eq!(reader.leftover(), &second[..]);
        // Resumed, the same reader goes on with the second message.
        reader.resume();
        let n = reader.read(&mut chunk).await.expect("read");
        assert_eq!(&chunk[..n], &second[..]);
    }

    /// The WebSocket library over a stopped reader yields the messages
    /// before the boundary and then waits; nothing is lost in the library.
    #[tokio::test]
    async fn the_websocket_library_stops_with_nothing_half_read() {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::protocol::Role;
        let early =
            [frame(true, 2, 5), frame(false, 2, 4), frame(true, 9, 3), frame(true, 0, 4), frame(true, 2, 7)].concat();
        let (_client, server) = tokio::io::duplex(1024);
        let mut ws =
            tokio_tungstenite::WebSocketStream::from_raw_socket(ReadAhead::new(server, early), Role::Server, None)
                .await;
        let first = ws.next().await.expect("first").expect("ok");
        assert_eq!(first.len(), 5);
        ws.get_mut().stop_at_boundary();
        // Mid-stream of the library: it may have taken the next frames
        // already; whatever it took it completes, then it waits.
        let mut got = vec![first.len()];
        while let Some(Some(Ok(message))) = futures_util::FutureExt::now_or_never(ws.next()) {
            if message.is_binary() {
                got.push(message.len());
            }
        }
        assert!(ws.get_ref().stopped());
        let leftover = ws.get_ref().leftover().to_vec();
        // The rest, read by a fresh library instance over the leftover.
        let (_client, server) = tokio::io::duplex(1024);
        let mut moved =
            tokio_tungstenite::WebSocketStream::from_raw_socket(ReadAhead::new(server, leftover), Role::Server, None)
                .await;
        while let Some(Some(Ok(message))) = futures_util::FutureExt::now_or_never(moved.next()) {
            if message.is_binary() {
                got.push(message.len());
            }
        }
        assert_eq!(got, vec![5, 8, 7], "every message once, in order, across the two");
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_socket_read_and_the_rest_is_freed() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client.write_all(&data).await.expect("write");
        drop(client);
        let mut reader = ReadAhead::new(server, Vec::new());
        let mut got = Vec::new();
        let mut chunk = [0u8; 300];
        loop {
            let n = reader.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            // Whatever is left over is held exactly, and gone once taken.
            assert!(reader.pending.capacity() <= SCRATCH_BYTES);
        }
        assert_eq!(got, data);
        assert!(!reader.has_pending());
        assert_eq!(reader.pending.capacity(), 0, "the leftover buffer is freed when drained");
    }
}
