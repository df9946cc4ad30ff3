//! One process's output log: a single byte-offset cursor over its stdout
//! and stderr together, kept as tagged frames in a bounded ring.
//!
//! Offsets only grow: byte `n` of the log is the `n`-th byte the process
//! wrote (on either stream) for ever, so a cursor names the same byte in
//! every read. When the kept bytes pass the bound, whole frames are dropped
//! from the front (the oldest one cut in two when it straddles the bound)
//! and counted. The log never holds more than its bound of output, plus a
//! small fixed cost per frame that is charged against the same bound.

use std::collections::VecDeque;

use crate::guest::OutputStream;

/// What each frame costs against the bound on top of its bytes, so that a
/// process writing single bytes alternately on stdout and stderr cannot
/// make the ring's bookkeeping outgrow its bytes.
const FRAME_COST: usize = 64;
/// A frame grows by appends of the same stream up to this size.
const FRAME_BYTES: usize = 64 * 1024;

struct Frame {
    stream: OutputStream,
    /// Offset of the frame's first byte.
    start: u64,
    data: Vec<u8>,
}

impl Frame {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// One piece of a read: bytes of one stream, from offset `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    pub stream: OutputStream,
    pub cursor: u64,
    pub data: Vec<u8>,
}

/// What a read from a cursor found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRead {
    pub chunks: Vec<LogChunk>,
    /// The offset after the last byte returned: where the next read starts.
    pub next: u64,
    /// Bytes between the asked cursor and the oldest one still kept.
    pub dropped: u64,
    /// The last chunk was cut by the read's bounds and its stream goes on
    /// at `next`.
    pub cut_mid_stream: bool,
}

impl LogRead {
    /// Holds back the start of a UTF-8 character the last chunk ends in,
    /// when the rest of it may follow: in the log already (`cut_mid_stream`),
    /// or later (`more_may_come`: the read reached the end of a process
    /// still running). A chunk cut mid-stream is never emptied, so a reader
    /// always moves on.
    pub fn hold_incomplete_tail(&mut self, more_may_come: bool) {
        let Some(last) = self.chunks.last_mut() else {
            return;
        };
        let hold = incomplete_utf8_tail(&last.data);
        let holds = if self.cut_mid_stream {
            hold < last.data.len()
        } else {
            more_may_come
        };
        if hold == 0 || !holds {
            return;
        }
        last.data.truncate(last.data.len() - hold);
        self.next -= hold as u64;
        if last.data.is_empty() {
            self.chunks.pop();
        }
    }
}

/// Why a read was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cursor {cursor} is beyond the end of the output ({end} bytes so far)")]
pub struct BeyondEnd {
    pub cursor: u64,
    pub end: u64,
}

/// The bounded ring of one process's output.
pub struct OutputLog {
    frames: VecDeque<Frame>,
    /// Offset of the oldest byte kept.
    start: u64,
    /// Offset after the newest byte: every byte ever written.
    end: u64,
    /// Bytes plus frame costs held now.
    held: usize,
    bound: usize,
}

impl OutputLog {
    /// An empty log that keeps at most `bound` bytes (at least one frame's cost).
    pub fn new(bound: usize) -> Self {
        OutputLog {
            frames: VecDeque::new(),
            start: 0,
            end: 0,
            held: 0,
            bound: bound.max(FRAME_COST + 1),
        }
    }

    /// Every byte written so far: the cursor after the last one.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes that fell off the front.
    pub fn dropped(&self) -> u64 {
        self.start
    }

    /// Memory the kept frames take, as counted against the bound.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Appends `data` written on `stream`, then drops from the front what
    /// no longer fits.
    pub fn append(&mut self, stream: OutputStream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Bytes that could never be kept are dropped before they are copied.
        let room = self.bound - FRAME_COST;
        let (skipped, data) = data.split_at(data.len().saturating_sub(room));
        self.end += skipped.len() as u64;
        if !skipped.is_empty() {
            // Everything kept so far is older than what is skipped.
            self.frames.clear();
            self.held = 0;
            self.start = self.end;
        }
        match self.frames.back_mut() {
            Some(last)
                if last.stream == stream
                    && last.end() == self.end
                    && last.data.len() + data.len() <= FRAME_BYTES =>
            {
                last.data.extend_from_slice(data);
            }
            _ => {
                self.frames.push_back(Frame {
                    stream,
                    start: self.end,
                    data: data.to_vec(),
                });
                self.held += FRAME_COST;
            }
        }
        self.held += data.len();
        self.end += data.len() as u64;
        self.trim();
    }

    /// Drops the oldest bytes until the log is within its bound.
    fn trim(&mut self) {
        while self.held > self.bound {
            let excess = self.held - self.bound;
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if front.data.len() <= excess {
                let front = self.frames.pop_front().expect("a front frame");
                self.held -= front.data.len() + FRAME_COST;
                self.start = front.end();
            } else {
                front.data.drain(..excess);
                front.start += excess as u64;
                self.held -= excess;
                self.start = front.start;
            }
        }
    }

    /// At most `max_bytes` of output from `cursor` on, in at most
    /// `max_chunks` chunks (adjacent frames of one stream make one chunk).
    /// A cursor before the oldest kept byte reads from there and says how
    /// much was lost; one past the end is refused.
    pub fn read(
        &self,
        cursor: u64,
        max_bytes: usize,
        max_chunks: usize,
    ) -> Result<LogRead, BeyondEnd> {
        if cursor > self.end {
            return Err(BeyondEnd {
                cursor,
                end: self.end,
            });
        }
        let dropped = self.start.saturating_sub(cursor);
        let mut at = cursor.max(self.start);
        let first = self.frames.partition_point(|f| f.end() <= at);
        let mut chunks: Vec<LogChunk> = Vec::new();
        let mut budget = max_bytes;
        let mut cut_mid_stream = false;
        for frame in self.frames.iter().skip(first) {
            let continues = chunks.last().is_some_and(|c| c.stream == frame.stream);
            if budget == 0 || (!continues && chunks.len() >= max_chunks) {
                cut_mid_stream = continues;
                break;
            }
            let from = usize::try_from(at - frame.start).unwrap_or(usize::MAX);
            let take = (frame.data.len() - from).min(budget);
            let piece = &frame.data[from..from + take];
            match chunks.last_mut() {
                Some(last) if continues => last.data.extend_from_slice(piece),
                _ => chunks.push(LogChunk {
                    stream: frame.stream,
                    cursor: at,
                    data: piece.to_vec(),
                }),
            }
            budget -= take;
            at += take as u64;
            if take < frame.data.len() - from {
                cut_mid_stream = true;
                break;
            }
        }
        Ok(LogRead {
            chunks,
            next: at,
            dropped,
            cut_mid_stream,
        })
    }
}

/// How many bytes at the end of `data` are the start of a UTF-8 sequence
/// that the next piece may complete (0 to 3): held back, they let text
/// split across pieces stay text.
pub fn incomplete_utf8_tail(data: &[u8]) -> usize {
    for back in 1..=data.len().min(3) {
        let byte = data[data.len() - back];
        if byte & 0xC0 == 0x80 {
            continue;
        }
        let needs = match byte {
            0xF0..=0xF4 => 4,
            0xE0..=0xEF => 3,
            0xC2..=0xDF => 2,
            _ => 1,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use OutputStream::{Stderr, Stdout};

    fn all(log: &OutputLog, cursor: u64) -> Vec<u8> {
        let read = log.read(cursor, usize::MAX, usize::MAX).unwrap();
        read.chunks.into_iter().flat_map(|c| c.data).collect()
    }

    #[test]
    fn an_incomplete_utf8_sequence_at_the_end_is_found() {
        let text = "a€😀".as_bytes();
        assert_eq!(incomplete_utf8_tail(b""), 0);
        assert_eq!(incomplete_utf8_tail(text), 0);
        // Cut inside the 4-byte emoji: 1, 2 or 3 of its bytes are held.
        for cut in 1..4 {
            assert_eq!(incomplete_utf8_tail(&text[..text.len() - cut]), 4 - cut);
        }
        // Cut inside the euro sign.
        assert_eq!(incomplete_utf8_tail(&text[..2]), 1);
        assert_eq!(incomplete_utf8_tail(&text[..3]), 2);
        // Invalid bytes are not held: they will never become text.
        assert_eq!(incomplete_utf8_tail(b"ab\xff"), 0);
        assert_eq!(incomplete_utf8_tail(b"\x80\x80\x80"), 0);
    }

    #[test]
    fn a_character_cut_by_a_read_bound_or_the_end_waits_for_its_rest() {
        let mut log = OutputLog::new(1 << 20);
        log.append(Stdout, "ab€".as_bytes()); // 61 62 e2 82 ac
        log.append(Stderr, b"!");
        // Cut by the byte bound inside the euro sign: the page ends before it.
        let mut read = log.read(0, 3, 10).unwrap();
        assert!(read.cut_mid_stream);
        read.hold_incomplete_tail(false);
        assert_eq!((read.chunks[0].data.as_slice(), read.next), (&b"ab"[..], 2));
        // A bound that leaves only the character's start still moves on.
        let mut read = log.read(2, 1, 10).unwrap();
        read.hold_incomplete_tail(false);
        assert_eq!(
            (read.chunks[0].data.as_slice(), read.next),
            (&b"\xe2"[..], 3)
        );
        // At the end of a running process, the start of a character waits.
        let mut log = OutputLog::new(1 << 20);
        log.append(Stdout, b"x\xe2\x82");
        let mut read = log.read(0, 100, 10).unwrap();
        assert!(!read.cut_mid_stream);
        read.hold_incomplete_tail(true);
        assert_eq!((read.chunks[0].data.as_slice(), read.next), (&b"x"[..], 1));
        let mut read = log.read(1, 100, 10).unwrap();
        read.hold_incomplete_tail(true);
        assert!(read.chunks.is_empty());
        assert_eq!(read.next, 1);
        // Once it has ended, nothing more will come: the bytes go as they are.
        let mut read = log.read(1, 100, 10).unwrap();
        read.hold_incomplete_tail(false);
        assert_eq!(read.chunks[0].data, b"\xe2\x82");
    }

    #[test]
    fn frames_of_one_stream_read_as_one_chunk() {
        let mut log = OutputLog::new(1 << 20);
        log.append(Stdout, &vec![b'a'; FRAME_BYTES]);
        log.append(Stdout, b"bc");
        log.append(Stderr, b"e");
        let read = log.read(10, usize::MAX, 1).unwrap();
        assert_eq!(read.chunks.len(), 1);
        assert_eq!(read.chunks[0].data.len(), FRAME_BYTES - 10 + 2);
        assert!(!read.cut_mid_stream);
        assert_eq!(read.next, FRAME_BYTES as u64 + 2);
    }

    #[test]
    fn offsets_cover_both_streams_in_the_order_written() {
        let mut log = OutputLog::new(1 << 20);
        log.append(Stdout, b"one ");
        log.append(Stdout, b"two ");
        log.append(Stderr, b"err ");
        log.append(Stdout, b"three");
        assert_eq!(log.end(), 17);
        let read = log.read(0, usize::MAX, usize::MAX).unwrap();
        let tagged: Vec<(OutputStream, u64, &[u8])> = read
            .chunks
            .iter()
            .map(|c| (c.stream, c.cursor, c.data.as_slice()))
            .collect();
        assert_eq!(
            tagged,
            vec![
                (Stdout, 0, &b"one two "[..]),
                (Stderr, 8, &b"err "[..]),
                (Stdout, 12, &b"three"[..]),
            ]
        );
        assert_eq!(read.next, 17);
        assert_eq!(read.dropped, 0);
        // A cursor inside a frame starts mid-frame.
        assert_eq!(all(&log, 5), b"wo err three");
        assert_eq!(all(&log, 17), b"");
        assert_eq!(
            log.read(18, 1, 1).unwrap_err(),
            BeyondEnd {
                cursor: 18,
                end: 17
            }
        );
    }

    #[test]
    fn reads_are_bounded_in_bytes_and_chunks_and_resume_exactly() {
        let mut log = OutputLog::new(1 << 20);
        for i in 0..100u8 {
            log.append(if i % 2 == 0 { Stdout } else { Stderr }, &[i; 10]);
        }
        let mut cursor = 0;
        let mut seen = Vec::new();
        let mut reads = 0;
        loop {
            let read = log.read(cursor, 25, 2).unwrap();
            if read.chunks.is_empty() {
                break;
            }
            assert!(read.chunks.len() <= 2);
            assert!(read.chunks.iter().map(|c| c.data.len()).sum::<usize>() <= 25);
            for chunk in &read.chunks {
                assert_eq!(chunk.cursor, seen.len() as u64);
                seen.extend_from_slice(&chunk.data);
            }
            cursor = read.next;
            reads += 1;
        }
        let expected: Vec<u8> = (0..100u8).flat_map(|i| [i; 10]).collect();
        assert_eq!(seen, expected);
        assert!(reads >= 40, "{reads}");
    }

    #[test]
    fn the_ring_keeps_its_bound_and_counts_what_it_dropped() {
        let bound = 4096;
        let mut log = OutputLog::new(bound);
        let mut written = Vec::new();
        for i in 0..1000u32 {
            let line = format!("line {i}\n");
            written.extend_from_slice(line.as_bytes());
            log.append(if i % 100 == 0 { Stderr } else { Stdout }, line.as_bytes());
            assert!(log.held <= bound, "{} > {bound}", log.held);
        }
        assert_eq!(log.end(), written.len() as u64);
        let read = log.read(0, usize::MAX, usize::MAX).unwrap();
        assert_eq!(read.dropped, log.dropped());
        assert!(read.dropped > 0);
        let kept: Vec<u8> = read.chunks.iter().flat_map(|c| c.data.clone()).collect();
        // What is kept is exactly the tail of what was written, and nearly
        // the whole bound of it (frames are split, not dropped whole).
        assert_eq!(kept, &written[read.dropped as usize..]);
        assert!(kept.len() > bound / 2, "{}", kept.len());
        assert_eq!(read.chunks[0].cursor, read.dropped);
    }

    #[test]
    fn one_write_larger_than_the_bound_keeps_its_tail() {
        let mut log = OutputLog::new(1000);
        log.append(Stdout, b"early");
        let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        log.append(Stdout, &big);
        assert_eq!(log.end(), 5005);
        let read = log.read(0, usize::MAX, usize::MAX).unwrap();
        let kept: Vec<u8> = read.chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(read.dropped as usize + kept.len(), 5005);
        assert_eq!(kept, &big[big.len() - kept.len()..]);
        assert!(log.held <= 1000);
    }

    #[test]
    fn many_tiny_alternating_writes_stay_within_the_bound() {
        let mut log = OutputLog::new(64 * 1024);
        for i in 0..100_000u32 {
            log.append(if i % 2 == 0 { Stdout } else { Stderr }, b"x");
        }
        assert!(log.held <= 64 * 1024);
        assert!(log.frames.len() <= 64 * 1024 / FRAME_COST);
        assert_eq!(log.end(), 100_000);
    }
}
