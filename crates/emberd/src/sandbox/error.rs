//! Errors of the sandbox manager. Each keeps its cause as a `#[source]`;
//! the HTTP layer renders the whole chain.

use std::path::PathBuf;
use std::time::Duration;

use crate::guest::files::FilesError;
use crate::guest::GuestError;
use crate::image::ManifestError;
use crate::vmm::VmmError;

use super::model::SandboxState;

/// What a delete interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    Boot,
    Exec,
    Transfer,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Interrupted::Boot => "booting",
            Interrupted::Exec => "the code was running",
            Interrupted::Transfer => "a file transfer was in progress",
        })
    }
}

/// Errors of the sandbox manager.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("unknown language pack: {0:?}")]
    UnknownPack(String),
    #[error("sandbox not found")]
    NotFound,
    #[error("sandbox is {0}, not running")]
    NotRunning(SandboxState),
    #[error("invalid request: timeout_ms must be at most {max_ms}")]
    TimeoutTooLong { max_ms: u128 },
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("sandbox was deleted while {0}")]
    Deleted(Interrupted),
    #[error("sandbox failed to boot")]
    Boot(#[source] BootError),
    #[error("cannot create the sandbox directory {path}")]
    SandboxDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0:?} of the exec's timeout")]
    AgentUnresponsive(Duration),
    #[error("exec failed")]
    Exec(#[source] GuestError),
    /// A create over an admission limit; the client may retry later.
    #[error("at capacity: {what}")]
    AtCapacity { what: String, retry_after: Duration },
    /// A create asking for more than the operator allows.
    #[error("invalid request: {field} must be at most {max} (asked for {value})")]
    OverLimit {
        field: &'static str,
        value: u64,
        max: u64,
    },
    /// A request value the manager cannot take, with the reason.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The sandbox's VM ended on its own.
    #[error("sandbox has stopped: {0}")]
    Exited(String),
    // Background processes.
    #[error("no such process: {0}")]
    ProcessNotFound(u32),
    #[error("process {0} is not running")]
    ProcessNotRunning(u32),
    #[error("too many processes running in this sandbox (limit {max}, --max-processes)")]
    TooManyProcesses { max: usize },
    #[error("cannot start the process: {0}")]
    ProcessLaunch(String),
    #[error("process {0} was started without \"stdin\": true")]
    StdinNotOpen(u32),
    #[error("the stdin of process {0} is closed")]
    StdinClosed(u32),
    #[error("process {0} has no terminal (start it with \"pty\")")]
    NoTerminal(u32),
    #[error("invalid request: {0}")]
    CursorBeyondEnd(crate::sandbox::process::BeyondEnd),
    // The files API.
    /// A guest path the daemon refuses before the guest sees it.
    #[error("invalid path: {0}")]
    BadPath(String),
    #[error("no such file: {0}")]
    NoSuchFile(String),
    /// The file is not what the operation needs (a directory, not a regular
    /// file, a directory with entries…); the message says which.
    #[error("{0}")]
    FileConflict(String),
    #[error("no space left in the sandbox")]
    NoSpace,
    #[error("transfer too large: the limit is {limit_mib} MiB (--max-transfer-mib)")]
    TransferTooLarge { limit_mib: u64 },
    /// The guest's agent predates a feature the request needs.
    #[error("the sandbox's guest image is too old to support {feature} (its agent lacks the {capability:?} capability); rebuild the images")]
    MissingCapability {
        feature: &'static str,
        capability: &'static str,
    },
    /// The agent failed a file operation in a way that is no answer about
    /// the file (a broken stream, a call past its deadline).
    #[error("the guest agent failed the file operation")]
    Files(#[source] FilesError),
}

impl From<BootError> for SandboxError {
    fn from(error: BootError) -> Self {
        SandboxError::Boot(error)
    }
}

/// Why a VM did not become a usable sandbox.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error("the pack's images are unusable")]
    Images(#[source] ManifestError),
    #[error("the guest agent did not answer within {bound:?}{}", last_line_hint(.last_console_line))]
    AgentTimeout {
        bound: Duration,
        last_console_line: Option<String>,
    },
    #[error("the guest agent session failed")]
    Agent(#[source] GuestError),
    #[error("warm-up code exited with {exit_code}: {stderr}")]
    Warmup { exit_code: i32, stderr: String },
    #[error("pooled sandbox did not answer Health")]
    Unhealthy,
    /// A VMM started ahead of a restore needs the pack's template.
    #[error("the pack has no usable template")]
    NoTemplate,
    #[error("cannot store the template in {path}")]
    TemplateStore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn last_line_hint(line: &Option<String>) -> String {
    match line {
        Some(line) => format!("; last console line: {line}"),
        None => String::new(),
    }
}
