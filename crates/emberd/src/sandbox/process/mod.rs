//! Background processes: programs that outlive the request that started
//! them, with a replayable output log, stdin, signals and a terminal.
//!
//! - `log`: the bounded ring of one process's output under one cursor;
//! - `record`: one process (log, end, input side);
//! - `driver`: the task that owns a process's session and fills its log;
//! - `table`: one sandbox's processes, the running limit and retention;
//! - `signal`: signal names;
//! - `model`: the domain types.
//!
//! A process dies with its sandbox. A process that merely runs is no
//! activity: only API calls and open streams keep a sandbox from its idle
//! timeout.

mod driver;
mod log;
mod model;
mod record;
mod signal;
mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use emberd_proto::boundary::{capability, MAX_PTY_SIDE};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::guest::bounds::EXEC_DRAIN_LIMIT;
use crate::guest::{ExecEvent, StartSpec};

use super::error::{Interrupted, SandboxError};
use super::manager::Manager;
use super::record::{Sandbox, StreamActivity};

pub use self::log::{incomplete_utf8_tail, BeyondEnd, LogChunk};
pub use self::model::{
    FollowEvent, OutputPage, ProcessCommand, ProcessParams, ProcessSnapshot, ProcessStatus,
};
pub use self::signal::parse_signal;
pub(super) use self::table::ProcessTable;
pub use self::table::{KEEP_ENDED, RETAIN};

use self::record::Process;

/// How long the agent gets to report a process started.
const START_BOUND: Duration = Duration::from_secs(30);
/// Most output bytes in one page of `…/output`.
pub const PAGE_BYTES: usize = 1024 * 1024;
/// Most chunks in one page.
pub const PAGE_CHUNKS: usize = 4096;
/// Most output bytes in one followed event.
pub const FOLLOW_CHUNK: usize = 64 * 1024;

impl Manager {
    /// Starts a background process in sandbox `id`; returns once the agent
    /// reports it started (a program that cannot be started is
    /// [`SandboxError::ProcessLaunch`]).
    pub async fn start_process(
        &self,
        id: &str,
        params: ProcessParams,
    ) -> Result<ProcessSnapshot, SandboxError> {
        let prepared = self.prepare_exec(id, None)?;
        let sandbox = prepared.sandbox.clone();
        let _active = sandbox.begin_exec()?;
        if let Some(cwd) = &params.cwd {
            if !cwd.starts_with('/') {
                return Err(SandboxError::Invalid(format!(
                    "cwd must be an absolute path, not {:?}",
                    cwd.chars().take(64).collect::<String>()
                )));
            }
        }
        if let Some((rows, cols)) = params.pty {
            check_pty_size(rows, cols)?;
            if !prepared.guest.agent.has_capability(capability::PTY) {
                return Err(SandboxError::MissingCapability {
                    feature: "terminals (pty)",
                    capability: capability::PTY,
                });
            }
        }
        let limits = self.config().limits.processes;
        let _slot = sandbox.processes.reserve(limits.max_running)?;
        let pack = &prepared.pack;
        let (command, spec) = match params.command {
            ProcessCommand::Argv(argv) => {
                if argv.is_empty() || argv[0].is_empty() {
                    return Err(SandboxError::Invalid("cmd must name a program".into()));
                }
                let spec = StartSpec {
                    argv: argv.clone(),
                    ..StartSpec::default()
                };
                (argv, spec)
            }
            ProcessCommand::Code(code) => {
                let spec = StartSpec {
                    interpreter: pack.interpreter.clone(),
                    code: code.into_bytes(),
                    file_suffix: pack.file_suffix.clone(),
                    ..StartSpec::default()
                };
                (pack.interpreter.clone(), spec)
            }
        };
        let spec = StartSpec {
            env: HashMap::from_iter(params.env),
            cwd: params.cwd.unwrap_or_default(),
            timeout: params.timeout,
            drain_limit: EXEC_DRAIN_LIMIT,
            output_limit_bytes: u64::MAX,
            user: params.user.as_str().to_owned(),
            pty: params.pty,
            ..spec
        };
        let agent = &prepared.guest.agent;
        let starting = async {
            let (input, mut events) = agent.start(spec).await.map_err(SandboxError::Exec)?;
            let mut early = Vec::new();
            loop {
                match events.next().await.map_err(SandboxError::Exec)? {
                    Some(ExecEvent::Started { pid, .. }) => return Ok((pid, input, events, early)),
                    Some(ExecEvent::Stdout(data)) => early.push((true, data)),
                    Some(ExecEvent::Stderr(data)) => early.push((false, data)),
                    Some(ExecEvent::Exit(report)) => {
                        return Err(SandboxError::ProcessLaunch(
                            report
                                .launch_error
                                .unwrap_or_else(|| "the process ended before it started".into()),
                        ))
                    }
                    None => {
                        return Err(SandboxError::Exec(crate::guest::GuestError::NoExit {
                            call: "Exec",
                        }))
                    }
                }
            }
        };
        let (pid, input, events, early) = tokio::select! {
            started = tokio::time::timeout(START_BOUND, starting) => match started {
                Ok(started) => started?,
                Err(_) => return Err(SandboxError::AgentUnresponsive(START_BOUND)),
            },
            () = sandbox.deleted.cancelled() => return Err(SandboxError::Deleted(Interrupted::Exec)),
            () = sandbox.exited.cancelled() => return Err(sandbox.exited_error()),
        };
        // A terminal's input is always open: it is how one types into it.
        let stdin = params.stdin || params.pty.is_some();
        if !stdin {
            // The process reads end-of-file at once, as from /dev/null.
            let _ = input.close_stdin().await;
        }
        let process = Arc::new(Process::new(
            pid,
            command,
            params.pty.is_some(),
            Some(input),
            stdin,
            limits.log_bytes,
        ));
        for (stdout, data) in early {
            let stream = if stdout {
                crate::guest::OutputStream::Stdout
            } else {
                crate::guest::OutputStream::Stderr
            };
            process.append(stream, &data);
        }
        sandbox.processes.insert(process.clone())?;
        tokio::spawn(
            driver::drive(
                process.clone(),
                events,
                sandbox.deleted.clone(),
                sandbox.exited.clone(),
            )
            .instrument(tracing::info_span!("process", sandbox = %id, pid)),
        );
        tracing::debug!(sandbox = %id, pid, "process started");
        Ok(process.snapshot())
    }

    /// Sandbox `id`'s processes, running and recently ended, oldest first.
    pub fn processes(&self, id: &str) -> Result<Vec<ProcessSnapshot>, SandboxError> {
        let sandbox = self.lookup(id)?;
        drop(sandbox.begin_exec()?);
        Ok(sandbox
            .processes
            .list()
            .iter()
            .map(|p| p.snapshot())
            .collect())
    }

    /// Process `pid` of sandbox `id`. Counts as activity.
    pub fn process(&self, id: &str, pid: u32) -> Result<ProcessHandle, SandboxError> {
        let sandbox = self.lookup(id)?;
        drop(sandbox.begin_exec()?);
        let process = sandbox.processes.get(pid)?;
        Ok(ProcessHandle {
            sandbox,
            process,
            closing: self.streams_closing().clone(),
        })
    }
}

fn check_pty_size(rows: u32, cols: u32) -> Result<(), SandboxError> {
    let range = 1..=MAX_PTY_SIDE;
    if range.contains(&rows) && range.contains(&cols) {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!(
            "a terminal's rows and cols must be between 1 and {MAX_PTY_SIDE}, not {rows}x{cols}"
        )))
    }
}

/// One process of one sandbox, as the API's routes use it.
pub struct ProcessHandle {
    sandbox: Arc<Sandbox>,
    process: Arc<Process>,
    /// The daemon's shutdown, which ends followers.
    closing: CancellationToken,
}

impl ProcessHandle {
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    pub fn snapshot(&self) -> ProcessSnapshot {
        self.process.snapshot()
    }

    /// Writes `data` to its stdin, then closes stdin when `eof`.
    pub async fn write_stdin(&self, data: &[u8], eof: bool) -> Result<(), SandboxError> {
        let _active = self.sandbox.begin_exec()?;
        tokio::select! {
            result = self.process.write_stdin(data, eof) => result,
            () = self.sandbox.deleted.cancelled() => Err(SandboxError::Deleted(Interrupted::Exec)),
        }
    }

    /// Sends signal `name` ("TERM", "SIGKILL", "15") to its process group.
    pub async fn signal(&self, name: &str) -> Result<(), SandboxError> {
        let number = parse_signal(name)?;
        self.process.signal(number).await
    }

    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), SandboxError> {
        check_pty_size(rows, cols)?;
        self.process.resize(rows, cols).await
    }

    /// A page of output from `cursor`: at most `max_bytes` (and never
    /// more than [`PAGE_BYTES`]) in at most [`PAGE_CHUNKS`] chunks.
    pub fn page(&self, cursor: u64, max_bytes: usize) -> Result<OutputPage, SandboxError> {
        let (read, ended, end) = self
            .process
            .read(cursor, max_bytes.clamp(1, PAGE_BYTES), PAGE_CHUNKS)
            .map_err(SandboxError::CursorBeyondEnd)?;
        let mut read = read;
        read.hold_incomplete_tail(read.next == end && !ended);
        Ok(OutputPage {
            complete: ended && read.next == end,
            chunks: read.chunks,
            next_cursor: read.next,
            dropped: read.dropped,
        })
    }

    /// Its output from `cursor` (the current end when `None`) as it comes,
    /// until it ends; holds the sandbox active while open.
    pub fn follow(&self, cursor: Option<u64>) -> Result<ProcessFollower, SandboxError> {
        let end = self.process.output_end();
        let cursor = cursor.unwrap_or(end);
        if cursor > end {
            return Err(SandboxError::CursorBeyondEnd(BeyondEnd { cursor, end }));
        }
        Ok(ProcessFollower {
            active: self.sandbox.begin_stream()?,
            changes: self.process.subscribe(),
            process: self.process.clone(),
            closing: self.closing.clone(),
            cursor,
            done: false,
        })
    }
}

/// A process's output as it comes, from a cursor on.
pub struct ProcessFollower {
    process: Arc<Process>,
    closing: CancellationToken,
    active: StreamActivity,
    changes: watch::Receiver<u64>,
    cursor: u64,
    done: bool,
}

impl ProcessFollower {
    /// The cursor after the last byte handed out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The next event; `Ok(None)` after the exit. The sandbox's deletion is
    /// an error, after which the follower ends.
    pub async fn next(&mut self) -> Result<Option<FollowEvent>, SandboxError> {
        let deleted = self.active.sandbox().deleted.clone();
        loop {
            if self.done {
                return Ok(None);
            }
            if deleted.is_cancelled() {
                self.done = true;
                return Err(SandboxError::Deleted(Interrupted::Exec));
            }
            if self.closing.is_cancelled() {
                self.done = true;
                return Err(SandboxError::ShuttingDown);
            }
            self.changes.borrow_and_update();
            let (mut read, ended, end) = self
                .process
                .read(self.cursor, FOLLOW_CHUNK, 1)
                .map_err(SandboxError::CursorBeyondEnd)?;
            if read.dropped > 0 {
                self.cursor += read.dropped;
                return Ok(Some(FollowEvent::Dropped {
                    dropped: read.dropped,
                    cursor: self.cursor,
                }));
            }
            read.hold_incomplete_tail(read.next == end && !ended);
            if let Some(chunk) = read.chunks.pop() {
                self.cursor = read.next;
                return Ok(Some(FollowEvent::Output(chunk)));
            }
            if ended && read.next == end {
                self.done = true;
                return Ok(Some(FollowEvent::Exit(self.process.snapshot())));
            }
            tokio::select! {
                changed = self.changes.changed() => {
                    if changed.is_err() {
                        self.done = true;
                        return Ok(None);
                    }
                }
                () = deleted.cancelled() => {}
                () = self.closing.cancelled() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
