//! Timestamps of the bytes crossing one agent channel, taken at the daemon's
//! end of it: how long a call spent beyond the daemon, in the VMM and the
//! guest, as opposed to the daemon's own share of an API call.
//!
//! [`ClockedStream`] wraps the byte stream under the gRPC channel and notes
//! when each write and each read completed. A call takes a [`Mark`] before
//! it starts; once its answer has arrived, [`ChannelClock::since`] gives the
//! time from the first write after the mark (the request leaving the daemon)
//! to the latest read (the answer coming back). When several calls share the
//! channel at once, the figure can also hold some of the daemon's scheduling
//! delay; for one call at a time it is exact.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes remembered; a call whose first write has been pushed out by more
/// than this many later ones gets no figure.
const WRITES_KEPT: usize = 256;

/// The write and read times of one channel.
#[derive(Debug)]
pub struct ChannelClock {
    log: Mutex<Log>,
}

#[derive(Debug)]
struct Log {
    writes: u64,
    write_times: Vec<Instant>,
    last_read: Option<Instant>,
}

/// The channel's position when a call started.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    writes: u64,
}

impl ChannelClock {
    fn new() -> Self {
        ChannelClock {
            log: Mutex::new(Log {
                writes: 0,
                write_times: Vec::with_capacity(WRITES_KEPT),
                last_read: None,
            }),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Where the channel is now; take it before starting a call.
    pub fn mark(&self) -> Mark {
        Mark {
            writes: self.log().writes,
        }
    }

    /// From the first write after `mark` to the latest read, if both happened.
    pub fn since(&self, mark: Mark) -> Option<Duration> {
        let log = self.log();
        let behind = log.writes.checked_sub(mark.writes)?;
        if behind == 0 || behind > WRITES_KEPT as u64 {
            return None;
        }
        let first_write = log.write_times[(mark.writes % WRITES_KEPT as u64) as usize];
        log.last_read?.checked_duration_since(first_write)
    }

    fn wrote(&self) {
        let now = Instant::now();
        let mut log = self.log();
        let slot = (log.writes % WRITES_KEPT as u64) as usize;
        if slot < log.write_times.len() {
            log.write_times[slot] = now;
        } else {
            log.write_times.push(now);
        }
        log.writes += 1;
    }

    fn read(&self) {
        self.log().last_read = Some(Instant::now());
    }
}

/// A byte stream that notes its reads and writes on a [`ChannelClock`].
pub struct ClockedStream<S> {
    inner: S,
    clock: Arc<ChannelClock>,
}

impl<S> ClockedStream<S> {
    /// Wraps `inner`; returns the stream and the clock it writes to.
    pub fn new(inner: S) -> (Self, Arc<ChannelClock>) {
        let clock = Arc::new(ChannelClock::new());
        (
            ClockedStream {
                inner,
                clock: clock.clone(),
            },
            clock,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClockedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClockedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn spans_the_first_write_after_the_mark_to_the_latest_read() {
        let (near, mut far) = tokio::io::duplex(64);
        let (mut stream, clock) = ClockedStream::new(near);
        stream.write_all(b"before").await.unwrap();
        let mark = clock.mark();
        assert_eq!(clock.since(mark), None, "nothing written since the mark");
        stream.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 13];
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(clock.since(mark), None, "the first read is still to come");
        tokio::time::sleep(Duration::from_millis(20)).await;
        far.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        stream.read_exact(&mut answer).await.unwrap();
        let spent = clock.since(mark).expect("a write and a read");
        assert!(spent >= Duration::from_millis(20), "{spent:?}");
    }

    #[tokio::test]
    async fn a_mark_pushed_out_of_the_log_gets_no_figure() {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        let (mut stream, clock) = ClockedStream::new(near);
        let mark = clock.mark();
        for _ in 0..=WRITES_KEPT {
            stream.write_all(b"x").await.unwrap();
        }
        far.write_all(b"y").await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        assert_eq!(clock.since(mark), None);
        assert!(clock.since(clock.mark()).is_none());
    }
}
