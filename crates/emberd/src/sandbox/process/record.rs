//! One background process: its output log, its end, and its input side
//! (stdin, signals, terminal size). The driver task appends to it; readers,
//! followers and writers take it by `Arc`. It never talks to the guest
//! except through its session's input half.

use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::log::{BeyondEnd, LogRead, OutputLog};
use super::model::{ProcessSnapshot, ProcessStatus};
use crate::guest::{GuestError, OutputStream, SessionInput};
use crate::sandbox::SandboxError;

/// Whether the process's stdin takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stdin {
    /// Started without `stdin: true`.
    Never,
    Open,
    Closed,
}

struct Ended {
    status: ProcessStatus,
    error: Option<String>,
    at: SystemTime,
    instant: Instant,
}

struct State {
    log: OutputLog,
    ended: Option<Ended>,
}

pub(crate) struct Process {
    pub pid: u32,
    pub command: Vec<String>,
    pub pty: bool,
    started_at: SystemTime,
    state: Mutex<State>,
    /// Taken when the process ends, so that its request stream closes.
    input: Mutex<Option<SessionInput>>,
    /// Serialises stdin writes, so that two requests' bytes never interleave.
    stdin: tokio::sync::Mutex<Stdin>,
    /// Bumped on every append and on the end.
    changed: watch::Sender<u64>,
}

impl Process {
    pub fn new(
        pid: u32,
        command: Vec<String>,
        pty: bool,
        input: Option<SessionInput>,
        stdin: bool,
        log_bytes: usize,
    ) -> Self {
        Process {
            pid,
            command,
            pty,
            started_at: SystemTime::now(),
            state: Mutex::new(State {
                log: OutputLog::new(log_bytes),
                ended: None,
            }),
            input: Mutex::new(input),
            stdin: tokio::sync::Mutex::new(if stdin { Stdin::Open } else { Stdin::Never }),
            changed: watch::Sender::new(0),
        }
    }

    pub fn snapshot(&self) -> ProcessSnapshot {
        let state = self.state.lock();
        let (status, error, ended_at) = match &state.ended {
            None => (ProcessStatus::Running, None, None),
            Some(ended) => (ended.status.clone(), ended.error.clone(), Some(ended.at)),
        };
        ProcessSnapshot {
            pid: self.pid,
            command: self.command.clone(),
            status,
            error,
            started_at: self.started_at,
            ended_at,
            pty: self.pty,
            output_bytes: state.log.end(),
            output_dropped: state.log.dropped(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state.lock().ended.is_none()
    }

    /// When it ended (monotonic), if it has.
    pub fn ended_at(&self) -> Option<Instant> {
        self.state.lock().ended.as_ref().map(|e| e.instant)
    }

    pub fn append(&self, stream: OutputStream, data: &[u8]) {
        self.state.lock().log.append(stream, data);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Records the end (the first one wins) and lets the session go.
    pub fn finish(&self, status: ProcessStatus, error: Option<String>) {
        {
            let mut state = self.state.lock();
            if state.ended.is_some() {
                return;
            }
            state.ended = Some(Ended {
                status,
                error,
                at: SystemTime::now(),
                instant: Instant::now(),
            });
        }
        drop(self.input.lock().take());
        self.changed.send_modify(|n| *n += 1);
    }

    /// A read of the log, whether the process had ended when it was taken,
    /// and the log's end then.
    pub fn read(
        &self,
        cursor: u64,
        max_bytes: usize,
        max_chunks: usize,
    ) -> Result<(LogRead, bool, u64), BeyondEnd> {
        let state = self.state.lock();
        let read = state.log.read(cursor, max_bytes, max_chunks)?;
        Ok((read, state.ended.is_some(), state.log.end()))
    }

    /// Memory its output log takes now.
    pub fn held_bytes(&self) -> usize {
        self.state.lock().log.held()
    }

    pub fn output_end(&self) -> u64 {
        self.state.lock().log.end()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolves once the process has ended.
    pub async fn ended(&self) {
        let mut changes = self.subscribe();
        while self.is_running() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    fn input(&self) -> Result<SessionInput, SandboxError> {
        self.input
            .lock()
            .clone()
            .ok_or(SandboxError::ProcessNotRunning(self.pid))
    }

    /// Writes `data` to stdin, or closes it when `eof`; waits no longer
    /// than the process lives.
    pub async fn write_stdin(&self, data: &[u8], eof: bool) -> Result<(), SandboxError> {
        let mut stdin = self.stdin.lock().await;
        match *stdin {
            Stdin::Never => return Err(SandboxError::StdinNotOpen(self.pid)),
            Stdin::Closed => return Err(SandboxError::StdinClosed(self.pid)),
            Stdin::Open => {}
        }
        let input = self.input()?;
        let write = async {
            input.write_stdin(data).await?;
            if eof {
                input.close_stdin().await?;
            }
            Ok::<(), GuestError>(())
        };
        tokio::select! {
            result = write => result.map_err(|_| SandboxError::ProcessNotRunning(self.pid))?,
            () = self.ended() => return Err(SandboxError::ProcessNotRunning(self.pid)),
        }
        if eof {
            *stdin = Stdin::Closed;
        }
        Ok(())
    }

    pub async fn signal(&self, number: i32) -> Result<(), SandboxError> {
        self.input()?
            .signal(number)
            .await
            .map_err(|_| SandboxError::ProcessNotRunning(self.pid))
    }

    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), SandboxError> {
        if !self.pty {
            return Err(SandboxError::NoTerminal(self.pid));
        }
        self.input()?
            .resize(rows, cols)
            .await
            .map_err(|_| SandboxError::ProcessNotRunning(self.pid))
    }
}
