//! Forwarding one exec's output stream to the host: in chunks, up to a cap
//! (beyond it output is read and dropped, so the process never blocks on a
//! full pipe), and for a bounded time once the exec's processes are gone.

use std::time::{Duration, Instant};

use emberd_proto::v1::{exec_output, ExecOutput};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tonic::Status;

/// Largest chunk of output in one message.
const CHUNK: usize = 64 * 1024;
/// Once the process group is gone, how long a reader waits for more output
/// before it takes the pipe as abandoned: a process that escaped the group
/// may hold it open forever.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// Once the process group is gone, how long a reader may go on at most
/// (including time spent waiting for the host to take the output), when the
/// host names no limit.
pub const DEFAULT_DRAIN_LIMIT: Duration =
    Duration::from_millis(emberd_proto::boundary::DEFAULT_EXEC_DRAIN_LIMIT_MS);

/// The longest drain limit the agent accepts.
const MAX_DRAIN_LIMIT: Duration =
    Duration::from_millis(emberd_proto::boundary::MAX_EXEC_DRAIN_LIMIT_MS);

/// The drain limit an exec asked for (`0`: the default), at most
/// [`MAX_DRAIN_LIMIT`].
pub fn drain_limit(drain_limit_ms: u64) -> Duration {
    if drain_limit_ms == 0 {
        DEFAULT_DRAIN_LIMIT
    } else {
        Duration::from_millis(drain_limit_ms).min(MAX_DRAIN_LIMIT)
    }
}

/// What a forwarder did with its stream.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// Output went over the cap and was cut.
    pub truncated: bool,
    /// The end of the stream, held back (at most the `hold` asked for).
    pub held: Vec<u8>,
}

/// Forwards one output stream until EOF, holding back up to `hold` bytes
/// (0: none) for the caller to send with the exit; says whether it was cut
/// at `limit`. After `gone` turns true (the process group is dead) the
/// reader ends once the pipe stays idle for [`DRAIN_GRACE`] or
/// `drain_limit` has passed; what the group wrote before it died is still
/// forwarded.
pub async fn forward(
    mut pipe: pipe::Receiver,
    out: mpsc::Sender<Result<ExecOutput, Status>>,
    limit: u64,
    is_stdout: bool,
    mut gone: tokio::sync::watch::Receiver<bool>,
    drain_limit: Duration,
    hold: usize,
) -> Forwarded {
    let mut buf = vec![0u8; CHUNK];
    let mut sent: u64 = 0;
    let mut truncated = false;
    let mut held = Vec::new();
    let mut gone_at: Option<Instant> = None;
    let end = |truncated: bool, held: Vec<u8>| Forwarded { truncated, held };
    loop {
        let read = match gone_at {
            None => tokio::select! {
                read = pipe.read(&mut buf) => read,
                // A closed sender means the supervisor is gone too.
                _ = gone.wait_for(|gone| *gone) => {
                    gone_at = Some(Instant::now());
                    continue;
                }
            },
            Some(at) => {
                let left = drain_limit.saturating_sub(at.elapsed());
                if left.is_zero() {
                    return end(truncated, held);
                }
                match tokio::time::timeout(DRAIN_GRACE.min(left), pipe.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_idle) => return end(truncated, held),
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return end(truncated, held),
            Ok(n) => n,
        };
        let room = usize::try_from(limit.saturating_sub(sent)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if take < n {
            truncated = true;
        }
        if take == 0 {
            continue;
        }
        sent += take as u64;
        if held.len() + take <= hold {
            held.extend_from_slice(&buf[..take]);
            continue;
        }
        // Over the hold: what was held goes first, then this piece.
        for data in [std::mem::take(&mut held), buf[..take].to_vec()] {
            if data.is_empty() {
                continue;
            }
            let kind = if is_stdout {
                exec_output::Kind::Stdout(data)
            } else {
                exec_output::Kind::Stderr(data)
            };
            if out.send(Ok(ExecOutput { kind: Some(kind) })).await.is_err() {
                return end(truncated, Vec::new());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn output_pipe() -> (std::fs::File, pipe::Receiver) {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (
            std::fs::File::from(write),
            pipe::Receiver::from_owned_fd(read).unwrap(),
        )
    }

    fn data(message: ExecOutput) -> Vec<u8> {
        match message.kind {
            Some(exec_output::Kind::Stdout(data)) => data,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn output_written_before_the_group_died_reaches_a_slow_host() {
        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(1);
        // The host has not taken the last message yet: the channel is full.
        tx.send(Ok(ExecOutput {
            kind: Some(exec_output::Kind::Stdout(b"first".to_vec())),
        }))
        .await
        .unwrap();
        writer.write_all(&[7u8; 60_000]).unwrap();
        let (gone_tx, gone) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(forward(
            reader,
            tx,
            u64::MAX,
            true,
            gone,
            DEFAULT_DRAIN_LIMIT,
            0,
        ));
        gone_tx.send_replace(true);
        // Longer than the grace: the reader is waiting on the host, not the pipe.
        tokio::time::sleep(DRAIN_GRACE * 3).await;
        assert_eq!(data(rx.recv().await.unwrap().unwrap()), b"first");
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            received += data(message.unwrap()).len();
        }
        assert_eq!(received, 60_000);
        // The write end is still open (as if a process escaped the group),
        // yet the reader has ended.
        assert!(!task.await.unwrap().truncated);
        drop(writer);
    }

    #[test]
    fn the_drain_limit_is_the_hosts_within_bounds() {
        assert_eq!(drain_limit(0), DEFAULT_DRAIN_LIMIT);
        assert_eq!(drain_limit(1500), Duration::from_millis(1500));
        assert_eq!(drain_limit(u64::MAX), MAX_DRAIN_LIMIT);
    }

    #[tokio::test]
    async fn output_beyond_the_limit_is_drained_and_flagged() {
        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(64);
        let (_gone_tx, gone) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(forward(
            reader,
            tx,
            1000,
            true,
            gone,
            DEFAULT_DRAIN_LIMIT,
            0,
        ));
        // Far more than a pipe holds: the writer only finishes if the
        // reader keeps draining past the limit.
        let written = tokio::task::spawn_blocking(move || {
            for _ in 0..64 {
                writer.write_all(&[1u8; 16 * 1024]).unwrap();
            }
        });
        written.await.unwrap();
        assert!(task.await.unwrap().truncated);
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            received += data(message.unwrap()).len();
        }
        assert_eq!(received, 1000);
    }

    #[tokio::test]
    async fn output_within_the_hold_is_held_and_beyond_it_sent() {
        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(64);
        let (_gone_tx, gone) = tokio::sync::watch::channel(false);
        writer.write_all(b"short").unwrap();
        drop(writer);
        let held = forward(
            reader,
            tx,
            u64::MAX,
            true,
            gone.clone(),
            DEFAULT_DRAIN_LIMIT,
            100,
        );
        let held = held.await;
        assert_eq!(held.held, b"short");
        assert!(rx.recv().await.is_none(), "nothing sent on its own");

        let (mut writer, reader) = output_pipe();
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(forward(
            reader,
            tx,
            u64::MAX,
            true,
            gone,
            DEFAULT_DRAIN_LIMIT,
            100,
        ));
        let written = tokio::task::spawn_blocking(move || writer.write_all(&[3u8; 1000]).unwrap());
        written.await.unwrap();
        let forwarded = task.await.unwrap();
        let mut received = 0;
        while let Some(message) = rx.recv().await {
            received += data(message.unwrap()).len();
        }
        assert!(forwarded.held.len() <= 100);
        assert_eq!(received + forwarded.held.len(), 1000);
    }
}
