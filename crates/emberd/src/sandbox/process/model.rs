//! The domain types of background processes, as the manager takes and
//! hands them; the HTTP layer converts them to `emberd-api` types.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

pub use super::log::LogChunk;
use crate::sandbox::GuestUser;

/// What a process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessCommand {
    /// A program and its arguments.
    Argv(Vec<String>),
    /// Code for the pack's interpreter.
    Code(String),
}

/// One process start as the manager takes it.
#[derive(Debug, Clone)]
pub struct ProcessParams {
    pub command: ProcessCommand,
    pub env: BTreeMap<String, String>,
    /// Absolute; the user's home when `None`.
    pub cwd: Option<String>,
    /// Keep stdin open for writes; else the process reads end-of-file at
    /// once (unless it runs on a terminal, whose input is always open).
    pub stdin: bool,
    /// Run on a terminal of (rows, cols).
    pub pty: Option<(u32, u32)>,
    pub timeout: Option<Duration>,
    pub user: GuestUser,
}

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessStatus {
    Running,
    /// Ended by itself with this status.
    Exited(i32),
    /// Ended by a signal (a timeout's kill included).
    Killed {
        signal: i32,
        exit_code: i32,
        timed_out: bool,
    },
    /// Ended without an exit status (its sandbox went away, its session broke).
    Lost,
}

/// One process as callers see it.
#[derive(Debug, Clone)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub command: Vec<String>,
    pub status: ProcessStatus,
    /// Why it was lost, when it was.
    pub error: Option<String>,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub pty: bool,
    /// Bytes written so far: the cursor after the last one.
    pub output_bytes: u64,
    /// Bytes that fell off the start of the log.
    pub output_dropped: u64,
}

/// A page of a process's output.
#[derive(Debug, Clone)]
pub struct OutputPage {
    pub chunks: Vec<LogChunk>,
    pub next_cursor: u64,
    /// Bytes between the asked cursor and the oldest one still kept.
    pub dropped: u64,
    /// The process has ended and `next_cursor` is the end of its output.
    pub complete: bool,
}

/// One event of a process's followed output.
#[derive(Debug, Clone)]
pub enum FollowEvent {
    /// Output before `cursor` fell off the log: `dropped` bytes were lost.
    Dropped {
        dropped: u64,
        cursor: u64,
    },
    Output(LogChunk),
    /// The process ended and every byte up to its end was delivered.
    Exit(ProcessSnapshot),
}
