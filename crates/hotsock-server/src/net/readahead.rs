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

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> ReadAhead<S> {
        ReadAhead { inner, pending: Vec::new(), start: 0 }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether bytes read earlier are waiting to be taken.
    pub(crate) fn has_pending(&self) -> bool {
        self.start < self.pending.len()
    }

    /// Hands out waiting bytes; frees the buffer once all are taken.
    fn take_pending(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.pending.len() - self.start);
        buf.put_slice(&self.pending[self.start..self.start + n]);
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
        if this.has_pending() {
            this.take_pending(buf);
            return Poll::Ready(Ok(()));
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut read = ReadBuf::new(&mut scratch[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            let n = buf.remaining().min(got.len());
            buf.put_slice(&got[..n]);
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn small_reads_are_served_from_one_socket_read_and_the_rest_is_freed() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        client.write_all(&data).await.expect("write");
        drop(client);
        let mut reader = ReadAhead::new(server);
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
