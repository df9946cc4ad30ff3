//! One program in the guest as a live session: its input side (stdin,
//! end of stdin, signals, terminal size) and its events as they come
//! (started, output pieces, exit).
//!
//! This is the one place the daemon opens an `Exec` stream. A unary exec
//! ([`super::AgentClient::run`]) collects a session; a streamed exec and a
//! background process forward its events. Dropping a session (both halves)
//! ends the request stream, and the agent kills the process. Output pieces
//! are as the guest sent them: each at most one protocol message, no more in
//! total than the consumer chooses to keep.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use emberd_proto::boundary::{MAX_MESSAGE_BYTES, MAX_PTY_SIDE};
use emberd_proto::v1::{exec_input, exec_output, ExecInput, ExecOutput, ExecStart, PtySize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::clock::Mark;
use super::{guest_text, AgentClient, GuestError};

/// Size of one stdin chunk sent to the agent.
pub const STDIN_CHUNK: usize = 64 * 1024;
const _: () = assert!(STDIN_CHUNK < MAX_MESSAGE_BYTES);
/// Input messages queued towards the agent before a sender waits.
const INPUT_QUEUE: usize = 16;

/// What to start: `argv`, or `interpreter` with `code` in a file.
#[derive(Debug, Clone, Default)]
pub struct StartSpec {
    pub argv: Vec<String>,
    pub interpreter: Vec<String>,
    pub code: Vec<u8>,
    pub file_suffix: String,
    pub env: HashMap<String, String>,
    /// Guest working directory; the user's home when empty.
    pub cwd: String,
    /// Killed by the agent after this long; none when `None`.
    pub timeout: Option<Duration>,
    /// How long the agent drains output after the process ended.
    pub drain_limit: Duration,
    /// Per-stream cap on what the agent forwards; `u64::MAX` for none.
    pub output_limit_bytes: u64,
    pub warm_language: Option<emberd_proto::warm::WarmLanguage>,
    /// `ExecStart.user`: empty for the sandbox user.
    pub user: String,
    /// Run on a terminal of (rows, cols).
    pub pty: Option<(u32, u32)>,
    /// Stdin sent with the start (agents with the `exec-batch` capability;
    /// at most `MAX_INLINE_STDIN_BYTES`).
    pub stdin: Vec<u8>,
    /// Stdin ends after `stdin`: no [`SessionInput::close_stdin`] needed.
    pub close_stdin: bool,
    /// The caller collects the whole output: the agent may hold it back
    /// and send it with the exit (`exec-batch`).
    pub batch_output: bool,
}

/// How a program ended, as the agent reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitReport {
    /// Exit status, 128 + signal after a signal death, -1 when it never started.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The agent's time, from the request reaching it to its answer.
    pub guest_duration: Duration,
    /// From the request leaving the daemon to the exit arriving back.
    pub vm_duration: Option<Duration>,
    /// Why the program could not be started (bounded and cleaned).
    pub launch_error: Option<String>,
}

/// One event of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Started { pid: u32, warm: bool },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitReport),
}

/// The input half of a session. Cheap to clone; the request stream stays
/// open (and the process alive) while any clone or the events half lives.
#[derive(Clone)]
pub struct SessionInput {
    tx: mpsc::Sender<ExecInput>,
}

impl SessionInput {
    async fn send(&self, kind: exec_input::Kind) -> Result<(), GuestError> {
        self.tx
            .send(ExecInput { kind: Some(kind) })
            .await
            .map_err(|_| GuestError::NoExit { call: "Exec" })
    }

    /// Writes `data` to the process's stdin, in protocol-sized chunks.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), GuestError> {
        for chunk in data.chunks(STDIN_CHUNK) {
            self.send(exec_input::Kind::Stdin(chunk.to_vec())).await?;
        }
        Ok(())
    }

    pub async fn close_stdin(&self) -> Result<(), GuestError> {
        self.send(exec_input::Kind::CloseStdin(Default::default()))
            .await
    }

    /// Delivers signal `number` to the process's group.
    pub async fn signal(&self, number: i32) -> Result<(), GuestError> {
        self.send(exec_input::Kind::Signal(number)).await
    }

    /// Resizes the process's terminal (ignored without one).
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), GuestError> {
        self.send(exec_input::Kind::Resize(PtySize { rows, cols }))
            .await
    }
}

/// The event half of a session.
pub struct SessionEvents {
    output: tonic::Streaming<ExecOutput>,
    client: AgentClient,
    mark: Mark,
    ended: bool,
    /// Events an exit message carried (a batch exec's start and the end
    /// of its output), handed out before the exit itself.
    carried: VecDeque<ExecEvent>,
    /// Holds the request stream open when no [`SessionInput`] is kept.
    _input: mpsc::Sender<ExecInput>,
}

impl SessionEvents {
    /// The next event; `None` after the exit. A stream that ends without an
    /// exit is [`GuestError::NoExit`]. Not bounded in time: the caller
    /// bounds it (a timeout, a deletion, a client that went away).
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, GuestError> {
        if let Some(event) = self.carried.pop_front() {
            return Ok(Some(event));
        }
        if self.ended {
            return Ok(None);
        }
        loop {
            let message = self
                .client
                .bounded("Exec", None, self.output.message())
                .await?
                .map_err(|status| GuestError::from_status("Exec", status))?;
            let Some(message) = message else {
                self.ended = true;
                return Err(GuestError::NoExit { call: "Exec" });
            };
            let event = match message.kind {
                Some(exec_output::Kind::Started(started)) => ExecEvent::Started {
                    pid: started.pid,
                    warm: started.warm,
                },
                Some(exec_output::Kind::Stdout(data)) => ExecEvent::Stdout(data),
                Some(exec_output::Kind::Stderr(data)) => ExecEvent::Stderr(data),
                Some(exec_output::Kind::Exit(mut exit)) => {
                    self.ended = true;
                    if exit.pid != 0 || exit.warm {
                        self.carried.push_back(ExecEvent::Started {
                            pid: exit.pid,
                            warm: exit.warm,
                        });
                    }
                    for (data, stdout) in [
                        (std::mem::take(&mut exit.stdout), true),
                        (std::mem::take(&mut exit.stderr), false),
                    ] {
                        if !data.is_empty() {
                            self.carried.push_back(if stdout {
                                ExecEvent::Stdout(data)
                            } else {
                                ExecEvent::Stderr(data)
                            });
                        }
                    }
                    self.carried.push_back(ExecEvent::Exit(ExitReport {
                        exit_code: exit.exit_code,
                        signal: (exit.signal != 0).then_some(exit.signal),
                        timed_out: exit.timed_out,
                        stdout_truncated: exit.stdout_truncated,
                        stderr_truncated: exit.stderr_truncated,
                        guest_duration: Duration::from_micros(exit.duration_us),
                        vm_duration: self.client.clock.since(self.mark),
                        launch_error: (!exit.error.is_empty()).then(|| guest_text(&exit.error)),
                    }));
                    return Ok(self.carried.pop_front());
                }
                None => continue,
            };
            return Ok(Some(event));
        }
    }
}

impl AgentClient {
    /// Starts `spec` in the guest and returns the session's two halves. The
    /// process's stdin stays open until [`SessionInput::close_stdin`] or
    /// until both halves are dropped.
    pub async fn start(
        &self,
        spec: StartSpec,
    ) -> Result<(SessionInput, SessionEvents), GuestError> {
        let start = ExecStart {
            argv: spec.argv,
            interpreter: spec.interpreter,
            code: spec.code,
            file_suffix: spec.file_suffix,
            env: spec.env,
            cwd: spec.cwd,
            timeout_ms: spec
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
                .unwrap_or(0),
            output_limit_bytes: spec.output_limit_bytes,
            warm_language: spec
                .warm_language
                .map(|l| l.as_str().to_owned())
                .unwrap_or_default(),
            user: spec.user,
            drain_limit_ms: u64::try_from(spec.drain_limit.as_millis()).unwrap_or(u64::MAX),
            pty: spec.pty.map(|(rows, cols)| PtySize {
                rows: rows.clamp(1, MAX_PTY_SIDE),
                cols: cols.clamp(1, MAX_PTY_SIDE),
            }),
            stdin: spec.stdin,
            close_stdin: spec.close_stdin,
            batch_output: spec.batch_output,
        };
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        tx.send(ExecInput {
            kind: Some(exec_input::Kind::Start(start)),
        })
        .await
        .map_err(|_| GuestError::NoExit { call: "Exec" })?;
        let mark = self.clock.mark();
        let output = self
            .bounded("Exec", None, self.raw().exec(ReceiverStream::new(rx)))
            .await?
            .map_err(|status| GuestError::from_status("Exec", status))?
            .into_inner();
        Ok((
            SessionInput { tx: tx.clone() },
            SessionEvents {
                output,
                client: self.clone(),
                mark,
                ended: false,
                carried: VecDeque::new(),
                _input: tx,
            },
        ))
    }
}
