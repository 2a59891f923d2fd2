//! A plain TCP client socket with two writers: the connection's task
//! (through the WebSocket library) and whoever releases the hub's lock
//! after queueing a message for an idle connection (`route::outbox` says
//! when that may write). Writing a reply or a publication straight to an
//! idle connection's socket saves waking its task for every message, which
//! was most of what a fan-out cost the server besides the send itself.
//!
//! What keeps the bytes on the wire whole frames, in order:
//! - every write, from either side, happens under this socket's one lock;
//! - a direct write is refused while the library holds bytes it could not
//!   write (`library_behind`): they may be the middle of a frame, or data
//!   the hub queued earlier;
//! - the rest of a frame a direct write could only start is written, under
//!   the lock, before anything the library writes next (`rest`).
//!
//! TLS connections never have a second writer: their bytes go through the
//! session's state, which only the task holds.

use std::io::{self, IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::Flow;
use crate::route::outbox::{DIRECT_BATCH_MAX, DirectSocket, Outgoing, Wrote};

/// RFC 6455 opcodes of the two data frames a server sends.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// A client's plain TCP socket, shared by its task and the direct writers.
/// Not `Clone`: the task's is the one strong handle, so the socket closes
/// when the task lets go of it (the outbox holds a weak one).
#[derive(Debug)]
pub(crate) struct PlainStream(Arc<Socket>);

#[derive(Debug)]
struct Socket {
    tcp: TcpStream,
    state: Mutex<WriteState>,
    /// The server's outgoing message count (`hotsock_messages_total{direction="out"}`):
    /// a direct write counts its message there, as the task counts its batches.
    sent: Arc<Flow>,
}

#[derive(Debug, Default)]
struct WriteState {
    /// The part of a directly written frame the socket did not take; goes
    /// out before anything else.
    rest: Bytes,
    /// The library's last write did not take all it offered (or waited):
    /// it holds bytes that must go out before any direct write.
    library_behind: bool,
}

impl PlainStream {
    pub(crate) fn new(tcp: TcpStream, sent: Arc<Flow>) -> PlainStream {
        PlainStream(Arc::new(Socket { tcp, state: Mutex::new(WriteState::default()), sent }))
    }

    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.0.tcp
    }

    /// The handle the outbox writes through while the task lets it. Weak:
    /// only the task keeps the socket open.
    pub(crate) fn direct(&self) -> Weak<dyn DirectSocket> {
        let weak: Weak<Socket> = Arc::downgrade(&self.0);
        weak
    }
}

impl Socket {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes what is left of a direct frame; `Ready(Ok)` once none is.
    fn poll_rest(&self, state: &mut WriteState, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !state.rest.is_empty() {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(&state.rest) {
                Ok(n) => {
                    let _ = state.rest.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl DirectSocket for Socket {
    fn write_now(&self, messages: &[&Outgoing]) -> Wrote {
        const NOTHING: Wrote = Wrote { whole: 0, started: false };
        let messages = &messages[..messages.len().min(DIRECT_BATCH_MAX)];
        let mut heads = [([0u8; 10], 0usize); DIRECT_BATCH_MAX];
        let mut payloads: [&[u8]; DIRECT_BATCH_MAX] = [&[]; DIRECT_BATCH_MAX];
        for (i, message) in messages.iter().enumerate() {
            let (opcode, data) = match message {
                Outgoing::Text(data) => (OPCODE_TEXT, data),
                Outgoing::Binary(data) => (OPCODE_BINARY, data),
                Outgoing::Close(..) => return NOTHING,
            };
            heads[i] = frame_head(opcode, data.len());
            payloads[i] = data;
        }
        let mut slices = [IoSlice::new(&[]); 2 * DIRECT_BATCH_MAX];
        for i in 0..messages.len() {
            slices[2 * i] = IoSlice::new(&heads[i].0[..heads[i].1]);
            slices[2 * i + 1] = IoSlice::new(payloads[i]);
        }
        let mut state = self.lock();
        if state.library_behind || !state.rest.is_empty() {
            return NOTHING;
        }
        // The socket's readiness is checked first (no system call when the
        // runtime knows it is full); an error is left for the task's own
        // write to meet and report.
        let mut left = match self.tcp.try_write_vectored(&slices[..2 * messages.len()]) {
            Ok(0) | Err(_) => return NOTHING,
            Ok(n) => n,
        };
        let mut wrote = NOTHING;
        let mut bytes = 0;
        for (i, message) in messages.iter().enumerate() {
            let head = &heads[i].0[..heads[i].1];
            let data = match message {
                Outgoing::Text(data) | Outgoing::Binary(data) => data,
                Outgoing::Close(..) => break,
            };
            if left >= head.len() + data.len() {
                left -= head.len() + data.len();
                wrote.whole += 1;
                bytes += data.len();
                continue;
            }
            if left > 0 {
                state.rest = if left < head.len() {
                    let mut rest = BytesMut::with_capacity(head.len() - left + data.len());
                    rest.extend_from_slice(&head[left..]);
                    rest.extend_from_slice(data);
                    rest.freeze()
                } else {
                    data.slice(left - head.len()..)
                };
                wrote.started = true;
                bytes += data.len();
            }
            break;
        }
        // Counted once per write, here rather than by the task: the rest of
        // a started frame is the task's to finish, but the message was sent.
        self.sent.add_direct((wrote.whole + usize::from(wrote.started)) as u64, bytes as u64);
        wrote
    }
}

/// A whole, unmasked data frame's head (RFC 6455 §5.2): FIN, the opcode
/// and the payload length in the shortest form.
fn frame_head(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut head = [0u8; 10];
    head[0] = 0x80 | opcode;
    if len < 126 {
        head[1] = len as u8;
        (head, 2)
    } else if let Ok(len) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&len.to_be_bytes());
        (head, 4)
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (head, 10)
    }
}

impl AsyncRead for PlainStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let tcp = &self.0.tcp;
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            // The callers read into initialized memory (the thread's
            // scratch buffer; the request head's buffer once per handshake).
            let room = buf.initialize_unfilled();
            let want = room.len();
            let mut got = 0;
            // A read shorter than the room it had emptied the socket
            // (epoll, edge-triggered): the closure says WouldBlock so tokio
            // clears the readiness, by the tick it took before the call, so
            // bytes that arrive meanwhile still wake us. The next read then
            // waits for the next event instead of making a system call that
            // finds nothing: one `recv` less per client message. tokio's own
            // `TcpStream::poll_read` does the same (tokio-rs/tokio#5866);
            // `try_read`, which a shared socket has to use, does not.
            let read = tcp.try_io(Interest::READABLE, || {
                got = (&*SockRef::from(tcp)).read(room)?;
                if got > 0 && got < want { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(got) }
            });
            match read {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for PlainStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let socket = &*self.0;
        let mut state = socket.lock();
        // Until it returns Ready with all of `buf`, the library holds bytes.
        state.library_behind = true;
        ready!(socket.poll_rest(&mut state, cx))?;
        loop {
            ready!(socket.tcp.poll_write_ready(cx))?;
            match socket.tcp.try_write(buf) {
                Ok(n) => {
                    state.library_behind = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.0;
        let mut state = socket.lock();
        socket.poll_rest(&mut state, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = &*self.0;
        let mut state = socket.lock();
        ready!(socket.poll_rest(&mut state, cx))?;
        Poll::Ready(socket2::SockRef::from(&socket.tcp).shutdown(std::net::Shutdown::Write))
    }
}

impl AsFd for PlainStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.tcp.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_heads_use_the_shortest_length_form() {
        assert_eq!(&frame_head(OPCODE_TEXT, 0).0[..2], &[0x81, 0]);
        assert_eq!(&frame_head(OPCODE_BINARY, 125).0[..2], &[0x82, 125]);
        assert_eq!(&frame_head(OPCODE_TEXT, 126).0[..4], &[0x81, 126, 0, 126]);
        assert_eq!(&frame_head(OPCODE_TEXT, 65535).0[..4], &[0x81, 126, 0xff, 0xff]);
        let (head, len) = frame_head(OPCODE_BINARY, 65536);
        assert_eq!(&head[..len], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    /// Batches of one to past the limit (64): as many whole frames as the
    /// limit lets through, in order, with their heads, read back from a
    /// real socket.
    #[tokio::test]
    async fn batches_of_every_size_go_out_as_whole_frames_in_order() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let sent = Arc::new(Flow::default());
        let stream = PlainStream::new(tcp, sent.clone());
        let mut expected = Vec::new();
        let mut next = 0usize;
        for size in [1, 2, 7, 8, 9, 63, 64, 65] {
            let batch: Vec<Outgoing> = (next..next + size)
                .map(|n| {
                    let text = format!("m{n}");
                    if n % 2 == 0 { Outgoing::Text(Bytes::from(text)) } else { Outgoing::Binary(Bytes::from(text)) }
                })
                .collect();
            let refs: Vec<&Outgoing> = batch.iter().collect();
            let wrote = stream.0.write_now(&refs);
            assert_eq!((wrote.whole, wrote.started), (size.min(DIRECT_BATCH_MAX), false), "a batch of {size}");
            for (n, message) in (next..).zip(&batch[..wrote.whole]) {
                let (opcode, data) = match message {
                    Outgoing::Text(data) => (OPCODE_TEXT, data),
                    Outgoing::Binary(data) => (OPCODE_BINARY, data),
                    Outgoing::Close(..) => unreachable!("no closes here"),
                };
                assert_eq!(&data[..], format!("m{n}").as_bytes());
                let (head, len) = frame_head(opcode, data.len());
                expected.extend_from_slice(&head[..len]);
                expected.extend_from_slice(data);
            }
            next += wrote.whole;
        }
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(got, expected);
        assert_eq!(sent.messages(), next as u64);
    }

    /// A read shorter than its buffer leaves the socket not ready, so the
    /// next read waits without a system call; bytes sent after it still
    /// wake the reader; a read that fills its buffer keeps the socket
    /// ready, for the rest.
    #[tokio::test]
    async fn a_short_read_waits_for_the_next_bytes_without_another_recv() {
        use std::future::poll_fn;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut stream = PlainStream::new(tcp, Arc::new(Flow::default()));
        let mut buf = [0u8; 16];

        peer.write_all(b"hello").await.expect("write");
        assert_eq!(stream.read(&mut buf).await.expect("read"), 5);
        let ready = poll_fn(|cx| Poll::Ready(stream.tcp().poll_read_ready(cx).is_ready())).await;
        assert!(!ready, "after a short read the socket must wait for its next event");

        peer.write_all(b"0123456789abcdefXYZ").await.expect("write");
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("bytes sent after a short read must wake the reader")
            .expect("read");
        assert_eq!(&buf[..n], b"0123456789abcdef");
        let ready = poll_fn(|cx| Poll::Ready(stream.tcp().poll_read_ready(cx).is_ready())).await;
        assert!(ready, "a read that filled its buffer may have left bytes: the socket stays ready");
        assert_eq!(stream.read(&mut buf).await.expect("read"), 3);
        assert_eq!(&buf[..3], b"XYZ");

        drop(peer);
        assert_eq!(stream.read(&mut buf).await.expect("read"), 0, "the peer's close reads as the end");
    }
}
