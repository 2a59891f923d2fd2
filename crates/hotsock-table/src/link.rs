//! The server–worker socket's two halves, each registered for readiness
//! only as far as it waits for it (both ends use them: the server's worker
//! link and the worker SDK).
//!
//! tokio registers a socket for reading and writing at once, and a Unix
//! stream socket signals "writable" to its writer every time the peer
//! reads: a process (or a server thread) asleep between batches was woken
//! for nothing each time the other side took its last batch (the echo
//! worker: 1.67 `epoll_wait` per batch read, 1.00 with these halves). Here
//! the reading half is registered for reading only, and the writing half,
//! a duplicate of the socket, writes without waiting and registers for
//! writability only while a write finds the socket full.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// Splits a socket into its reading and writing halves (made
/// non-blocking). Needs a tokio runtime with I/O enabled, as polling the
/// halves does.
#[allow(unsafe_code)]
pub fn split(socket: UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    socket.set_nonblocking(true)?;
    // The writer's own descriptor, made once here: a full socket later
    // needs no new one (a `dup` at the fd limit would fail the write).
    let writer = socket.try_clone()?;
    // SAFETY: the `AsyncFd` owns the `UnixStream`, which owns its
    // descriptor: it stays open, on the same open file description, until
    // the `AsyncFd` is dropped, and `as_raw_fd` always returns that one
    // descriptor. Nothing takes the stream out or swaps it (`get_mut`).
    let reader =
        unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    Ok((ReadHalf(reader), WriteHalf { waiting: None, socket: writer }))
}

/// Reads; woken only when there is something to read (or the peer left).
#[derive(Debug)]
pub struct ReadHalf(AsyncFd<UnixStream>);

impl AsyncRead for ReadHalf {
    #[allow(unsafe_code)]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let want = buf.remaining();
        if want == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            // Into the buffer's uninitialized room (a reader's spare
            // capacity, tens of KiB): zeroing it first would cost more than
            // the read.
            // SAFETY: `recv` only writes into the slice, never marks bytes
            // uninitialized.
            let room = unsafe { buf.unfilled_mut() };
            match guard.try_io(|socket| SockRef::from(socket.get_ref()).recv(room)) {
                Ok(Ok(n)) => {
                    // Shorter than the room it had: the socket is empty, so
                    // the next read waits for the next event instead of a
                    // system call that finds nothing (as tokio's own
                    // sockets do; data arriving meanwhile is a new edge, and
                    // `try_io` clears only the readiness it saw). Holds as
                    // long as no message on this socket carries descriptors
                    // (a `recv` stops short after one): they pass only
                    // before the split (`fdpass`).
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    // SAFETY: `recv` wrote the first `n` bytes of the room.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(error)) => return Poll::Ready(Err(error)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Writes at once; registered for writability only from a write that
/// found the socket full to the next write that took all it was given.
/// Dropping it shuts the socket's writing direction, as tokio's write half
/// does, so the peer reads the end.
#[derive(Debug)]
pub struct WriteHalf {
    /// The registration of `socket`'s descriptor while it is full. Declared
    /// first so it is dropped (and deregistered) before `socket` closes.
    waiting: Option<AsyncFd<RawFd>>,
    socket: UnixStream,
}

impl AsyncWrite for WriteHalf {
    #[allow(unsafe_code)]
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        loop {
            match (&this.socket).write(buf) {
                Ok(n) => {
                    // A write that took less than it was given found the
                    // socket full again: the registration stays for the
                    // rest, so a large write registers once, not per chunk.
                    if n == buf.len() {
                        this.waiting = None;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            let waiting = match &mut this.waiting {
                Some(waiting) => waiting,
                // SAFETY: the descriptor is `socket`'s, which this struct
                // owns and never replaces; the registration is dropped
                // before it (field order, or `waiting = None`), so the
                // descriptor stays open and the same for as long as it
                // is registered. Registering polls the socket's state, so
                // room that appeared since the write is reported: no
                // wake-up is lost.
                none => none.insert(
                    unsafe { AsyncFd::register_with_interest(this.socket.as_raw_fd(), Interest::WRITABLE) }
                        .map_err(|e| e.into_parts().1)?,
                ),
            };
            ready!(waiting.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.shutdown(Shutdown::Write))
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// Voluntary context switches of the calling thread so far.
    fn switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("voluntary_ctxt_switches")
    }

    /// Bytes go both ways; a short read leaves the socket waiting for the
    /// next event; dropping the writer is the end for the peer.
    #[test]
    fn halves_carry_bytes_and_the_writers_drop_is_the_end() {
        let (ours, mut peer) = UnixStream::pair().expect("pair");
        runtime().block_on(async move {
            let (mut rd, mut wr) = split(ours).expect("split");
            wr.write_all(b"ping").await.expect("write");
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).expect("peer read");
            assert_eq!(&got, b"ping");
            peer.write_all(b"pong").expect("peer write");
            let mut buf = Vec::with_capacity(64);
            assert_eq!(rd.read_buf(&mut buf).await.expect("read"), 4);
            assert_eq!(buf, b"pong");
            let ready = std::future::poll_fn(|cx| Poll::Ready(rd.0.poll_read_ready(cx).is_ready())).await;
            assert!(!ready, "after a short read the socket must wait for its next event");
            peer.write_all(b"more").expect("peer write");
            let read = tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut buf)).await;
            assert_eq!(read.expect("bytes after a short read must wake the reader").expect("read"), 4);
            drop(wr);
            let mut rest = Vec::new();
            peer.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            peer.read_to_end(&mut rest).expect("the writer's drop reads as the end");
            assert!(rest.is_empty());
        });
    }

    /// A write that finds the socket full waits, and goes on once the peer
    /// reads: every byte arrives, in order.
    #[test]
    fn a_full_socket_makes_the_writer_wait_and_nothing_is_lost() {
        let (ours, mut peer) = UnixStream::pair().expect("pair");
        let total = 8 << 20;
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let mut got = Vec::with_capacity(total);
            let mut chunk = vec![0u8; 4096];
            while got.len() < total {
                let n = peer.read(&mut chunk).expect("peer read");
                assert!(n > 0, "the writer ended early");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let sent: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        runtime().block_on(async move {
            let (_rd, mut wr) = split(ours).expect("split");
            tokio::time::timeout(Duration::from_secs(20), wr.write_all(&sent))
                .await
                .expect("a writer waiting on a full socket must be woken when it drains")
                .expect("write");
        });
        assert!(reader.join().expect("reader") == expected, "bytes lost or out of order");
    }

    /// The peer leaving is an answer, never a hang: a writer waiting on a
    /// full socket gets an error, and so does the reader (or the end).
    #[test]
    fn the_peer_leaving_ends_a_waiting_write_and_the_read() {
        let (ours, peer) = UnixStream::pair().expect("pair");
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(peer);
        });
        runtime().block_on(async move {
            let (mut rd, mut wr) = split(ours).expect("split");
            let big = vec![1u8; 8 << 20];
            let start = std::time::Instant::now();
            let written = tokio::time::timeout(Duration::from_secs(10), wr.write_all(&big))
                .await
                .expect("a write waiting on a full socket must end when the peer leaves");
            // Checked apart from the timeout: a timer firing polls the write
            // once more, which then finds the peer gone without any wake-up.
            let waited = start.elapsed();
            assert!(waited < Duration::from_secs(3), "the peer leaving woke the writer only after {waited:?}");
            let error = written.expect_err("nobody read 8 MiB");
            assert!(
                matches!(error.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
                "unexpected error: {error}"
            );
            let mut buf = Vec::with_capacity(16);
            let read = tokio::time::timeout(Duration::from_secs(5), rd.read_buf(&mut buf)).await;
            // The peer left bytes unread, so the kernel says reset rather
            // than the end: either way the reader learns the link is gone.
            match read.expect("the peer leaving must wake the reader") {
                Ok(n) => assert_eq!(n, 0, "the end reads as 0 bytes"),
                Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "unexpected error: {error}"),
            }
            wr.shutdown().await.expect("shutting a closed link's writer is not an error");
        });
        closer.join().expect("closer");
    }

    /// The point of these halves: a worker waiting for its next batch is
    /// not woken when the server reads the last one it wrote. Each round
    /// writes, waits for the answer, and the peer reads only after a pause
    /// (so this thread is asleep by then): one wake-up per round, the
    /// answer's; with a socket registered for writability too it was two.
    #[test]
    fn the_peer_reading_what_was_written_wakes_nobody() {
        const ROUNDS: u64 = 100;
        const FILL: usize = 4 << 20;
        let (ours, mut peer) = UnixStream::pair().expect("pair");
        let echo = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut filled = vec![0u8; FILL];
            peer.read_exact(&mut filled).expect("peer reads the fill");
            let mut byte = [0u8; 1];
            for _ in 0..ROUNDS {
                std::thread::sleep(Duration::from_millis(2));
                peer.read_exact(&mut byte).expect("peer read");
                std::thread::sleep(Duration::from_millis(2));
                peer.write_all(&byte).expect("peer write");
            }
        });
        let woken = runtime().block_on(async move {
            let (mut rd, mut wr) = split(ours).expect("split");
            // First a write that finds the socket full and waits for room:
            // once it has all gone, the writer must be deregistered again.
            let fill = vec![7u8; FILL];
            tokio::time::timeout(Duration::from_secs(20), wr.write_all(&fill))
                .await
                .expect("the fill must drain")
                .expect("fill");
            let before = switches();
            let mut byte = [0u8; 1];
            for _ in 0..ROUNDS {
                wr.write_all(b"x").await.expect("write");
                rd.read_exact(&mut byte).await.expect("read");
            }
            switches() - before
        });
        echo.join().expect("echo");
        assert!(woken < ROUNDS * 3 / 2, "{woken} wake-ups in {ROUNDS} rounds: the peer's reads woke the writer");
    }
}
