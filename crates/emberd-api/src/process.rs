//! Background processes: `/sandboxes/{id}/processes…` (see `docs/processes.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stream::OutputEvent;

/// A terminal size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    pub rows: u32,
    pub cols: u32,
}

/// `POST /sandboxes/{id}/processes` body: exactly one of `cmd` and `code`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartProcessRequest {
    /// A program and its arguments, run as is (found on `PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Code for the pack's interpreter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (absolute); the user's home when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Keep stdin open for `POST …/stdin` and the WebSocket; when false the
    /// process reads end-of-file at once.
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub stdin: bool,
    /// Run on a terminal of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Kill the process after this long; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// "sandbox" (the default) or "root".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// `POST /sandboxes/{id}/processes` 201 body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessStarted {
    /// The process's pid in the guest; names it in every `…/processes/{pid}` route.
    pub pid: u32,
}

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    /// Ended by itself (see `exit_code`).
    Exited,
    /// Ended by a signal (see `signal`), including a timeout's kill.
    Killed,
    /// Ended without an exit status: its sandbox was deleted or its guest
    /// stopped answering.
    Lost,
}

/// One entry of `GET …/processes` and the body of `GET …/processes/{pid}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessInfo {
    pub pid: u32,
    /// The argv, or the interpreter's argv for `code`.
    pub command: Vec<String>,
    pub state: ProcessState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub timed_out: bool,
    /// Why it could not be started or was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 UTC.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub pty: bool,
    /// Bytes of output written so far: the cursor after the last byte.
    pub output_bytes: u64,
    /// Bytes of output that fell off the start of the log.
    pub output_dropped: u64,
}

/// `GET …/processes` body, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessList {
    pub processes: Vec<ProcessInfo>,
}

/// `POST …/processes/{pid}/signal` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// A name with or without `SIG` ("TERM", "SIGKILL") or a number as text.
    pub signal: String,
}

/// `POST …/processes/{pid}/resize` body.
pub type ResizeRequest = PtySize;

/// One piece of `GET …/output` (without `follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputChunk {
    /// "stdout" or "stderr".
    pub stream: String,
    #[serde(flatten)]
    pub event: OutputEvent,
}

/// `GET …/processes/{pid}/output?cursor=N` body (without `follow`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputPage {
    /// The pieces from the cursor on, in the order they were written.
    pub chunks: Vec<OutputChunk>,
    /// The cursor to ask with next.
    pub next_cursor: u64,
    /// Bytes between the asked cursor and the oldest one still kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
    /// True when the process has ended and `next_cursor` is the end of its output.
    pub complete: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A control frame of `GET …/processes/{pid}/attach` (a WebSocket text
/// frame from the client); binary frames carry stdin in and output out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AttachControl {
    Resize {
        rows: u32,
        cols: u32,
    },
    Signal {
        signal: String,
    },
    /// Close the process's stdin.
    Eof,
}

/// A text frame the daemon sends on `GET …/processes/{pid}/attach` (binary
/// frames carry the output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AttachNotice {
    /// Output fell off the start of the process's log before it was sent.
    Dropped {
        /// Bytes lost.
        dropped: u64,
        /// Where the output resumes.
        cursor: u64,
    },
    /// A frame of the client's was refused (a bad control frame, stdin
    /// after end of input); the session goes on.
    Error { error: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_notices_are_tagged_by_type() {
        let dropped = AttachNotice::Dropped {
            dropped: 10,
            cursor: 30,
        };
        assert_eq!(
            serde_json::to_value(&dropped).unwrap(),
            serde_json::json!({"type": "dropped", "dropped": 10, "cursor": 30})
        );
        let refused: AttachNotice =
            serde_json::from_str(r#"{"type":"error","error":"bad control frame"}"#).unwrap();
        assert_eq!(
            refused,
            AttachNotice::Error {
                error: "bad control frame".into()
            }
        );
    }
}
