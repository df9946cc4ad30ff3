//! The guest console on the host: a bounded ring per VM.
//!
//! Owns [`ConsoleRing`], the last [`CONSOLE_RING_BYTES`] a guest wrote to its
//! console, fed by a task that drains the VMM's console pipe. A guest that
//! floods its console costs the host this much memory and no disk; readers
//! copy out of memory and never touch a file. Must never grow past its bound
//! or block the drain on a reader.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Most console bytes kept per VM.
pub const CONSOLE_RING_BYTES: usize = 1024 * 1024;

/// The newest console output of one VM, at most a fixed number of bytes.
#[derive(Debug)]
pub struct ConsoleRing {
    bytes: Mutex<VecDeque<u8>>,
    capacity: usize,
}

impl Default for ConsoleRing {
    fn default() -> Self {
        ConsoleRing::with_capacity(CONSOLE_RING_BYTES)
    }
}

impl ConsoleRing {
    pub fn with_capacity(capacity: usize) -> Self {
        ConsoleRing {
            bytes: Mutex::new(VecDeque::new()),
            capacity,
        }
    }

    /// Appends `chunk`, dropping the oldest bytes beyond the capacity.
    pub fn push(&self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.capacity)..];
        let mut bytes = self.bytes.lock();
        let overflow = (bytes.len() + chunk.len()).saturating_sub(self.capacity);
        bytes.drain(..overflow);
        bytes.extend(chunk);
    }

    /// The last `max_bytes` bytes (fewer when less was written).
    pub fn tail(&self, max_bytes: usize) -> Vec<u8> {
        let bytes = self.bytes.lock();
        let start = bytes.len().saturating_sub(max_bytes);
        bytes.range(start..).copied().collect()
    }

    /// Bytes held now; never more than the capacity.
    pub fn len(&self) -> usize {
        self.bytes.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts the task that copies `source` (the VMM's console pipe) into
    /// the ring until it closes.
    pub fn drain_from<R: AsyncRead + Send + Unpin + 'static>(self: &Arc<Self>, mut source: R) {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match source.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => ring.push(&buf[..n]),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes_within_its_bound() {
        let ring = ConsoleRing::with_capacity(8);
        ring.push(b"hello ");
        ring.push(b"world");
        assert_eq!(ring.tail(100), b"lo world");
        assert_eq!(ring.len(), 8);
        ring.push(b"0123456789abcdef");
        assert_eq!(ring.tail(100), b"89abcdef");
        assert_eq!(ring.tail(3), b"def");
        assert_eq!(ring.len(), 8);
    }

    #[tokio::test]
    async fn the_drain_copies_a_pipe_into_the_ring() {
        let ring = Arc::new(ConsoleRing::with_capacity(4));
        let (mut writer, reader) = tokio::io::duplex(16);
        ring.drain_from(reader);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"abcdef")
            .await
            .unwrap();
        drop(writer);
        for _ in 0..100 {
            if ring.tail(10) == b"cdef" {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("ring holds {:?}", ring.tail(10));
    }
}
