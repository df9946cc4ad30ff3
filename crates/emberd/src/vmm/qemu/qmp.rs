//! A minimal QMP client: greeting, capabilities negotiation, commands.
//!
//! QMP is newline-delimited JSON on a Unix socket. The only commands emberd
//! sends are a handful of argument-light ones (`stop`, `cont`, `migrate`,
//! `query-status`, `query-migrate`, `quit`), so a few lines of serde beat a
//! full QAPI binding (see docs/design-notes.md).

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Errors of the QMP channel.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP channel closed")]
    Closed,
    #[error("QMP sent malformed JSON")]
    Json(#[from] serde_json::Error),
    #[error("QMP command {command} failed: {message}")]
    Command { command: String, message: String },
}

/// One negotiated QMP session.
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
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
                message: format!("unexpected greeting {greeting}"),
            });
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs `command` and returns its `return` value; events read while
    /// waiting are skipped.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut text = serde_json::to_string(&request)?;
        text.push('\n');
        self.writer.write_all(text.as_bytes()).await?;
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
                        .to_owned(),
                });
            }
        }
    }
}
