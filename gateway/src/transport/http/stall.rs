//! A socket whose writes give up once the peer has stopped reading.
//!
//! hyper has no write timeout: a client that asks for a large reply (or pipelines requests) and
//! then never reads would hold its connection, and its `http.maxConnections` slot, forever. Each
//! write or flush that stays pending for the whole stall timeout fails with `TimedOut`, which ends
//! the connection. Progress of any size resets the clock, so a slow but live reader is served.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};

/// `inner` with a stall timeout on writes.
pub struct StallGuard<T> {
    /// The socket.
    inner: T,
    /// How long a write may wait for the peer to make room.
    timeout: Duration,
    /// Armed when a write first returns pending; cleared by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Wraps `inner`; writes fail after `timeout` without progress.
    pub fn new(inner: T, timeout: Duration) -> Self {
        StallGuard {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Turns a pending write into `TimedOut` once the stall timer has run out.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self.stalled.get_or_insert_with(|| Box::pin(sleep(timeout)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading (http.readTimeout)",
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_times_the_write_out_and_a_reader_does_not() {
        let (a, b) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(a, Duration::from_secs(5));
        // Nobody reads b: after 64 bytes the write waits, then fails after 5 s.
        let started = tokio::time::Instant::now();
        let e = guarded.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        // A slow reader that takes 64 bytes every 4 s keeps the write alive.
        let (a, mut b2) = tokio::io::duplex(64);
        drop(b);
        let mut guarded = StallGuard::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < 512 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                got += b2.read(&mut buf).await.unwrap();
            }
        });
        guarded.write_all(&[0u8; 512]).await.unwrap();
        reader.await.unwrap();
    }
}
