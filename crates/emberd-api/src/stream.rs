//! Server-Sent Events of streamed output: `POST /sandboxes/{id}/exec` with
//! `Accept: text/event-stream` and `GET …/processes/{pid}/output?follow=true`.
//!
//! Each event's `event:` field is one of [`event`]'s names and its `data:`
//! one JSON object: an [`OutputEvent`] for `stdout` and `stderr`, an
//! [`crate::ExecResponse`] (exec) or a [`crate::ProcessInfo`] (process) for
//! `exit`, an [`crate::ErrorBody`] for `error`.

use serde::{Deserialize, Serialize};

/// The `event:` names.
pub mod event {
    pub const STDOUT: &str = "stdout";
    pub const STDERR: &str = "stderr";
    /// The last event of a stream that ended normally.
    pub const EXIT: &str = "exit";
    /// The last event of a stream that ended abnormally (the sandbox was
    /// deleted, the guest stopped answering).
    pub const ERROR: &str = "error";
    /// A process's output fell off the start of its log before this cursor.
    pub const DROPPED: &str = "dropped";
}

/// One piece of output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputEvent {
    /// The bytes: UTF-8 text, or base64 when `base64` is set (they were not
    /// valid UTF-8).
    pub data: String,
    #[serde(default, skip_serializing_if = "crate::is_false")]
    pub base64: bool,
    /// Process output only: the log offset of this piece's first byte; the
    /// event's SSE `id` is the offset after its last byte (the cursor to
    /// resume from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<u64>,
}

/// The `data` of a `dropped` event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DroppedEvent {
    /// Bytes between the asked cursor and the oldest one still kept.
    pub dropped: u64,
    /// Where the stream resumes.
    pub cursor: u64,
}
