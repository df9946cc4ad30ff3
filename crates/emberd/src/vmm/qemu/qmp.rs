//! A minimal QMP client: greeting, capabilities negotiation, commands,
//! and handing QEMU a file descriptor.
//!
//! QMP is newline-delimited JSON on a Unix socket. The only commands emberd
//! sends are a handful of argument-light ones (`stop`, `cont`, `getfd`,
//! `migrate`, `query-status`, `query-migrate`, `quit`), so a few lines of
//! serde beat a full QAPI binding (see docs/design-notes.md). Every call
//! has a deadline, and a message is read up to a bound: a QEMU that stops
//! answering, or answers without end, costs a typed error, never a hang.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Largest QMP message read; QEMU's answers to emberd's commands are a few
/// hundred bytes.
const MAX_MESSAGE: u64 = 1024 * 1024;

/// Errors of the QMP channel.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP channel closed")]
    Closed,
    #[error("QMP sent malformed JSON")]
    Json(#[from] serde_json::Error),
    #[error("QMP sent a message over {MAX_MESSAGE} bytes")]
    TooLong,
    #[error("QMP command {command} failed: {message}")]
    Command { command: String, message: String },
    #[error("QMP command {command} got no answer within {after:?}")]
    Timeout { command: String, after: Duration },
}

/// One negotiated QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation
    /// mode, all within `deadline`.
    pub async fn connect(path: &Path, deadline: Duration) -> Result<Self, QmpError> {
        within("qmp_capabilities", deadline, async {
            let stream = UnixStream::connect(path).await?;
            let (read, writer) = stream.into_split();
            let mut qmp = Qmp {
                reader: BufReader::new(read),
                writer,
            };
            let greeting = qmp.read_message().await?;
            if greeting.get("QMP").is_none() {
                return Err(QmpError::Command {
                    command: "greeting".into(),
                    message: "unexpected greeting".into(),
                });
            }
            qmp.send(&request("qmp_capabilities", None)?).await?;
            qmp.reply("qmp_capabilities").await?;
            Ok(qmp)
        })
        .await
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_MESSAGE)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Err(QmpError::Closed);
        }
        if !line.ends_with(b"\n") && read as u64 == MAX_MESSAGE {
            return Err(QmpError::TooLong);
        }
        Ok(serde_json::from_slice(&line)?)
    }

    async fn send(&mut self, text: &str) -> Result<(), QmpError> {
        self.writer.write_all(text.as_bytes()).await?;
        Ok(())
    }

    /// The `return` value answering `command`; events read while waiting
    /// are skipped.
    async fn reply(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let message = self.read_message().await?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    message: error
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .chars()
                        .take(512)
                        .collect(),
                });
            }
        }
    }

    /// Runs `command` and returns its `return` value, or a timeout after
    /// `deadline` (the session is then out of step and must be dropped).
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        deadline: Duration,
    ) -> Result<Value, QmpError> {
        within(command, deadline, async {
            self.send(&request(command, arguments)?).await?;
            self.reply(command).await
        })
        .await
    }

    /// Hands `fd` to QEMU under `name` (QMP `getfd`, the descriptor riding
    /// along as SCM_RIGHTS), for a later `fd:<name>` URI.
    pub async fn pass_fd(
        &mut self,
        name: &str,
        fd: BorrowedFd<'_>,
        deadline: Duration,
    ) -> Result<(), QmpError> {
        let text = request("getfd", Some(json!({ "fdname": name })))?;
        within("getfd", deadline, async {
            let stream: &UnixStream = self.writer.as_ref();
            let sent = loop {
                stream.writable().await?;
                let attempt = stream.try_io(Interest::WRITABLE, || {
                    let fds = [fd.as_raw_fd()];
                    sendmsg::<()>(
                        stream.as_raw_fd(),
                        &[IoSlice::new(text.as_bytes())],
                        &[ControlMessage::ScmRights(&fds)],
                        MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                });
                match attempt {
                    Ok(sent) => break sent,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(QmpError::Io(e)),
                }
            };
            // The descriptor went with the first byte; the rest is plain.
            self.send(&text[sent..]).await?;
            self.reply("getfd").await.map(drop)
        })
        .await
    }
}

fn request(command: &str, arguments: Option<Value>) -> Result<String, QmpError> {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut text = serde_json::to_string(&request)?;
    text.push('\n');
    Ok(text)
}

async fn within<T>(
    command: &str,
    deadline: Duration,
    call: impl std::future::Future<Output = Result<T, QmpError>>,
) -> Result<T, QmpError> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(QmpError::Timeout {
                command: command.to_owned(),
                after: deadline,
            })
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{IoSliceMut, Read};
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use tokio::net::UnixListener;

    use super::*;

    /// A QMP peer that greets, negotiates, then hands the connection to `then`.
    pub(crate) async fn fake_qemu<F, Fut>(dir: &Path, then: F) -> std::path::PathBuf
    where
        F: FnOnce(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).contains("qmp_capabilities"));
            stream.write_all(b"{\"return\": {}}\n").await.unwrap();
            then(stream).await;
        });
        path
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_gives_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path(), |stream| async move {
            // Reads, never answers, keeps the connection open.
            let mut stream = stream;
            let mut buf = [0u8; 256];
            while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let started = std::time::Instant::now();
        let err = qmp
            .execute("query-status", None, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, QmpError::Timeout { command, .. } if command == "query-status"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_peer_that_never_greets_gives_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let err = Qmp::connect(&path, Duration::from_millis(200))
            .await
            .err()
            .expect("no session without a greeting");
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn an_endless_message_is_cut_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_qemu(dir.path(), |mut stream| async move {
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf).await;
            let chunk = vec![b'x'; 64 * 1024];
            while stream.write_all(&chunk).await.is_ok() {}
        })
        .await;
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let err = qmp
            .execute("query-status", None, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::TooLong), "{err}");
    }

    #[tokio::test]
    async fn getfd_hands_the_descriptor_over() {
        let dir = tempfile::tempdir().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let path = fake_qemu(dir.path(), |stream| async move {
            let stream = stream.into_std().unwrap();
            stream.set_nonblocking(false).unwrap();
            let (text, fd) = tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 256];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                )
                .unwrap();
                let fd = msg.cmsgs().unwrap().find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                });
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                use std::io::Write;
                (&stream).write_all(b"{\"return\": {}}\n").unwrap();
                (text, fd)
            })
            .await
            .unwrap();
            let _ = done_tx.send((text, fd));
        })
        .await;
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let file_path = dir.path().join("migration");
        let file = std::fs::File::create(&file_path).unwrap();
        qmp.pass_fd(
            "migration",
            std::os::fd::AsFd::as_fd(&file),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let (text, fd) = done_rx.await.unwrap();
        assert!(text.contains("\"getfd\""), "{text}");
        assert!(text.contains("\"fdname\":\"migration\""), "{text}");
        // SAFETY: the descriptor was just received and is owned by nobody else.
        let received = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd.expect("an fd")) });
        use std::io::Write;
        (&received).write_all(b"through the fd").unwrap();
        let mut written = String::new();
        std::fs::File::open(&file_path)
            .unwrap()
            .read_to_string(&mut written)
            .unwrap();
        assert_eq!(written, "through the fd");
    }
}
