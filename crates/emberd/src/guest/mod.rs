//! The daemon's end of the host↔guest protocol.
//!
//! Owns one gRPC connection to the agent of one sandbox ([`AgentClient`]):
//! the `Hello` handshake, identity push, health checks, quiesce, and running
//! one program to completion with its output collected under a cap
//! ([`AgentClient::run`]). The byte stream underneath comes from the VM
//! backend; nothing here knows which one. [`clock`] times each call at the
//! daemon's end of that stream.
//!
//! Every call runs under a deadline ([`bounds`]) and ends when the daemon
//! shuts down; every string the guest sends is bounded and cleaned
//! ([`untrusted`]) before it leaves this module.

pub mod bounds;
pub mod clock;
pub mod files;
pub mod session;
pub mod untrusted;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emberd_proto::boundary::{
    capability, MAX_EXEC_DRAIN_LIMIT_MS, MAX_INLINE_STDIN_BYTES, MAX_MESSAGE_BYTES,
};
use emberd_proto::v1::{
    agent_client::AgentClient as RawAgentClient, HealthRequest, HelloRequest, Identity,
    QuiesceRequest,
};
use emberd_proto::warm::WarmLanguage;
use emberd_proto::PROTOCOL_GENERATION;
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use self::bounds::{
    exec_answer_bound, EXEC_DRAIN_LIMIT, HEALTH_BOUND, IDENTITY_BOUND, QUIESCE_BOUND,
};
use self::clock::{ChannelClock, ClockedStream};
pub use self::session::{
    ExecEvent, ExitReport, SessionEvents, SessionInput, StartSpec, STDIN_CHUNK,
};
pub use self::untrusted::{guest_bytes, guest_text, guest_warning_allowed, GUEST_TEXT_MAX_BYTES};
use crate::vmm::AgentStream;

/// The most capabilities kept from an agent's `Hello`.
const MAX_CAPABILITIES: usize = 64;

/// Errors talking to the guest agent.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot open a protocol session to the guest agent")]
    Connect(#[source] tonic::transport::Error),
    #[error("the guest agent speaks protocol generation {agent}, this daemon speaks {host}")]
    Generation { agent: u32, host: u32 },
    #[error("the guest agent refused {call}: {message}")]
    Refused { call: &'static str, message: String },
    #[error("the connection to the guest agent broke during {call}")]
    Broken {
        call: &'static str,
        #[source]
        source: tonic::Status,
    },
    #[error("the guest agent ended {call} without an exit status")]
    NoExit { call: &'static str },
    #[error("the guest agent did not answer {call} within {bound:?}")]
    Timeout { call: &'static str, bound: Duration },
    #[error("the daemon is shutting down; {call} was abandoned")]
    ShuttingDown { call: &'static str },
}

impl GuestError {
    fn from_status(call: &'static str, status: tonic::Status) -> Self {
        use tonic::Code;
        // The message is the guest's: bound and clean it before anyone sees it.
        let status = tonic::Status::new(status.code(), guest_text(status.message()));
        match status.code() {
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::ResourceExhausted => GuestError::Refused {
                call,
                message: status.message().to_owned(),
            },
            _ => GuestError::Broken {
                call,
                source: status,
            },
        }
    }
}

/// What the agent said about itself in `Hello`.
#[derive(Debug, Clone)]
pub struct AgentHello {
    pub generation: u32,
    pub agent_version: String,
    pub capabilities: Vec<String>,
}

/// One program to run in the guest.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// Interpreter argv; the code file is appended by the agent.
    pub interpreter: Vec<String>,
    pub code: Vec<u8>,
    pub file_suffix: String,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Option<Duration>,
    /// How long the agent drains output after the process ended; the
    /// default ([`bounds::EXEC_DRAIN_LIMIT`]) when `None`.
    pub drain_limit: Option<Duration>,
    /// Per-stream cap on collected output.
    pub output_limit_bytes: u64,
    /// Ask for the agent's pre-started interpreter of this language.
    pub warm_language: Option<WarmLanguage>,
    /// Who runs it in the guest (`ExecStart.user`): empty for the sandbox user.
    pub user: String,
}

/// How a program ended, with its collected output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent's report; its `*_truncated` flags also say when the
    /// daemon's own cap cut a stream.
    pub exit: ExitReport,
    /// True when it was forked from a pre-started interpreter.
    pub warm: bool,
}

/// A protocol session with one agent. Cheap to clone; clones share the
/// connection, and calls on it may run concurrently.
#[derive(Clone)]
pub struct AgentClient {
    channel: Channel,
    clock: Arc<ChannelClock>,
    /// Cancelled when the daemon shuts down: every call then ends.
    shutdown: CancellationToken,
    /// What the agent listed in `Hello` (`emberd_proto::boundary::capability`).
    capabilities: Arc<[String]>,
}

impl AgentClient {
    /// Opens a session over `stream` and performs the `Hello` handshake.
    /// The handshake waits for the guest to boot: bound it by the caller's
    /// boot timeout.
    pub async fn handshake(stream: AgentStream) -> Result<(Self, AgentHello), GuestError> {
        Self::handshake_until(stream, CancellationToken::new()).await
    }

    /// [`AgentClient::handshake`] for a session whose calls all end when
    /// `shutdown` is cancelled.
    pub async fn handshake_until(
        stream: AgentStream,
        shutdown: CancellationToken,
    ) -> Result<(Self, AgentHello), GuestError> {
        let (stream, clock) = ClockedStream::new(stream);
        let channel = emberd_proto::channel_over(stream)
            .await
            .map_err(GuestError::Connect)?;
        let mut client = AgentClient {
            channel,
            clock,
            shutdown,
            capabilities: Arc::new([]),
        };
        let hello = client.bounded("Hello", None, client.hello()).await??;
        client.capabilities = hello.capabilities.clone().into();
        Ok((client, hello))
    }

    /// True when the agent listed `name` among its capabilities in `Hello`.
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }

    /// Runs `call` until it ends, `bound` passes, or the daemon shuts down.
    async fn bounded<T>(
        &self,
        call: &'static str,
        bound: Option<Duration>,
        future: impl std::future::Future<Output = T>,
    ) -> Result<T, GuestError> {
        let deadline = async {
            match bound {
                Some(bound) => tokio::time::sleep(bound).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = future => Ok(result),
            () = deadline => Err(GuestError::Timeout {
                call,
                bound: bound.unwrap_or_default(),
            }),
            () = self.shutdown.cancelled() => Err(GuestError::ShuttingDown { call }),
        }
    }

    fn raw(&self) -> RawAgentClient<Channel> {
        RawAgentClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    async fn hello(&self) -> Result<AgentHello, GuestError> {
        let reply = self
            .raw()
            .hello(HelloRequest {
                generation: PROTOCOL_GENERATION,
                host_version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .await
            .map_err(|status| GuestError::from_status("Hello", status))?
            .into_inner();
        if reply.generation != PROTOCOL_GENERATION {
            return Err(GuestError::Generation {
                agent: reply.generation,
                host: PROTOCOL_GENERATION,
            });
        }
        Ok(AgentHello {
            generation: reply.generation,
            agent_version: guest_text(&reply.agent_version),
            capabilities: reply
                .capabilities
                .iter()
                .take(MAX_CAPABILITIES)
                .map(|c| guest_text(c))
                .collect(),
        })
    }

    /// The interpreters the agent has warm, when it answers `Health` within
    /// [`HEALTH_BOUND`]. Names the daemon does not know are left out.
    pub async fn warm_interpreters(&self) -> Option<Vec<WarmLanguage>> {
        let reply = self
            .bounded(
                "Health",
                Some(HEALTH_BOUND),
                self.raw().health(HealthRequest {}),
            )
            .await
            .ok()?
            .ok()?;
        let names = reply.into_inner().warm_interpreters;
        Some(
            names
                .iter()
                .filter_map(|n| WarmLanguage::from_wire(n))
                .collect(),
        )
    }

    /// True when the agent answers `Health` with ok within [`HEALTH_BOUND`].
    pub async fn healthy(&self) -> bool {
        matches!(
            self.bounded("Health", Some(HEALTH_BOUND), self.raw().health(HealthRequest {})).await,
            Ok(Ok(reply)) if reply.get_ref().ok
        )
    }

    /// Gives the guest its own clock, entropy, hostname and sandbox id,
    /// within [`IDENTITY_BOUND`].
    pub async fn set_identity(&self, sandbox_id: &str) -> Result<(), GuestError> {
        let mut seed = vec![0u8; 64];
        rand::thread_rng().fill_bytes(&mut seed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut raw = self.raw();
        let call = raw.set_identity(Identity {
            unix_time_ns: i64::try_from(now.as_nanos()).unwrap_or(i64::MAX),
            entropy_seed: seed,
            hostname: sandbox_id.to_owned(),
            sandbox_id: sandbox_id.to_owned(),
        });
        self.bounded("SetIdentity", Some(IDENTITY_BOUND), call)
            .await?
            .map_err(|status| GuestError::from_status("SetIdentity", status))?;
        Ok(())
    }

    /// Asks the agent to flush and stop taking work before a snapshot,
    /// within [`QUIESCE_BOUND`].
    pub async fn quiesce(&self) -> Result<(), GuestError> {
        let mut raw = self.raw();
        self.bounded(
            "Quiesce",
            Some(QUIESCE_BOUND),
            raw.quiesce(QuiesceRequest {}),
        )
        .await?
        .map_err(|status| GuestError::from_status("Quiesce", status))?;
        Ok(())
    }

    /// Runs one program to completion and collects its output. With a
    /// timeout, the answer is awaited for [`bounds::exec_answer_bound`] of
    /// it (without one, until the daemon shuts down or the future is
    /// dropped). Dropping the returned future drops the session, and the
    /// agent kills the process.
    pub async fn run(&self, spec: RunSpec) -> Result<RunOutcome, GuestError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let mut sink = |stream: OutputStream, data: &[u8]| match stream {
            OutputStream::Stdout => stdout.extend_from_slice(data),
            OutputStream::Stderr => stderr.extend_from_slice(data),
        };
        // The whole output is collected: the agent may hold it for the exit.
        let mut outcome = self.run_into(spec, &mut sink, true).await?;
        outcome.stdout = stdout;
        outcome.stderr = stderr;
        Ok(outcome)
    }

    /// [`AgentClient::run`] that hands each piece of output to `sink` as it
    /// arrives (under the same per-stream cap) instead of collecting it:
    /// the outcome's `stdout` and `stderr` stay empty.
    pub async fn run_forwarding(
        &self,
        spec: RunSpec,
        sink: OutputSink<'_>,
    ) -> Result<RunOutcome, GuestError> {
        self.run_into(spec, sink, false).await
    }

    /// Runs `spec`, handing output to `sink`; with `batch`, the agent may
    /// hold output back and send it with the exit.
    async fn run_into(
        &self,
        spec: RunSpec,
        sink: OutputSink<'_>,
        batch: bool,
    ) -> Result<RunOutcome, GuestError> {
        let drain_limit = spec
            .drain_limit
            .unwrap_or(EXEC_DRAIN_LIMIT)
            .min(Duration::from_millis(MAX_EXEC_DRAIN_LIMIT_MS));
        let answer_bound = spec
            .timeout
            .map(|timeout| exec_answer_bound(timeout, drain_limit));
        let limit = spec.output_limit_bytes;
        let stdin = spec.stdin.unwrap_or_default();
        // An agent that takes a whole exec in one message gets it so: the
        // start, its stdin and the end of it in one write, and (when the
        // output is collected) the answer back in as few as it allows.
        let offered = self.has_capability(capability::EXEC_BATCH);
        let inline = offered && stdin.len() <= MAX_INLINE_STDIN_BYTES;
        let (inline_stdin, stdin) = if inline {
            (stdin, Vec::new())
        } else {
            (Vec::new(), stdin)
        };
        let start = StartSpec {
            interpreter: spec.interpreter,
            code: spec.code,
            file_suffix: spec.file_suffix,
            timeout: spec.timeout,
            drain_limit,
            output_limit_bytes: limit,
            warm_language: spec.warm_language,
            user: spec.user,
            stdin: inline_stdin,
            close_stdin: inline,
            batch_output: offered && batch,
            ..StartSpec::default()
        };
        self.bounded(
            "Exec",
            answer_bound,
            self.collect(start, stdin, limit, sink),
        )
        .await?
    }

    async fn collect(
        &self,
        start: StartSpec,
        stdin: Vec<u8>,
        limit: u64,
        sink: OutputSink<'_>,
    ) -> Result<RunOutcome, GuestError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let closed = start.close_stdin;
        let (input, mut events) = self.start(start).await?;
        // Stdin goes in while output comes back: a program that answers
        // before reading all its input must not stall the writer.
        let feed = async move {
            if !closed && input.write_stdin(&stdin).await.is_ok() {
                let _ = input.close_stdin().await;
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(feed);
        let mut outcome = RunOutcome::default();
        let mut sent = [0usize; 2];
        let mut cut = [false; 2];
        loop {
            let event = tokio::select! {
                event = events.next() => event?,
                () = &mut feed => unreachable!("the stdin feed never ends"),
            };
            match event {
                Some(ExecEvent::Started { warm, .. }) => outcome.warm = warm,
                Some(ExecEvent::Stdout(data)) => {
                    let piece = capped(&mut sent[0], &data, limit);
                    cut[0] |= piece.len() < data.len();
                    if !piece.is_empty() {
                        sink(OutputStream::Stdout, piece);
                    }
                }
                Some(ExecEvent::Stderr(data)) => {
                    let piece = capped(&mut sent[1], &data, limit);
                    cut[1] |= piece.len() < data.len();
                    if !piece.is_empty() {
                        sink(OutputStream::Stderr, piece);
                    }
                }
                Some(ExecEvent::Exit(mut exit)) => {
                    exit.stdout_truncated |= cut[0];
                    exit.stderr_truncated |= cut[1];
                    outcome.exit = exit;
                    return Ok(outcome);
                }
                None => return Err(GuestError::NoExit { call: "Exec" }),
            }
        }
    }
}

/// Which stream a piece of output came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Where [`AgentClient::run_forwarding`] hands each piece of output.
pub type OutputSink<'a> = &'a mut (dyn FnMut(OutputStream, &[u8]) + Send);

/// The part of `data` that fits under `limit` after `sent` bytes; counts it.
fn capped<'d>(sent: &mut usize, data: &'d [u8], limit: usize) -> &'d [u8] {
    let take = limit.saturating_sub(*sent).min(data.len());
    *sent += take;
    &data[..take]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_and_flagged() {
        let mut sent = 0;
        assert_eq!(capped(&mut sent, b"abc", 5), b"abc");
        assert_eq!(capped(&mut sent, b"defg", 5), b"de");
        assert_eq!(capped(&mut sent, b"x", 5), b"");
        assert_eq!(sent, 5);
    }

    #[test]
    fn protocol_refusals_are_told_apart_from_broken_connections() {
        let refused = GuestError::from_status("Exec", tonic::Status::invalid_argument("bad"));
        assert!(matches!(refused, GuestError::Refused { .. }));
        let broken = GuestError::from_status("Exec", tonic::Status::unavailable("gone"));
        assert!(matches!(broken, GuestError::Broken { .. }));
    }

    #[test]
    fn guest_messages_in_errors_are_bounded_and_cleaned() {
        let hostile = format!("\u{1b}[31m{}", "x".repeat(1 << 20));
        let refused =
            GuestError::from_status("Exec", tonic::Status::invalid_argument(hostile.clone()));
        let GuestError::Refused { message, .. } = &refused else {
            panic!("{refused:?}")
        };
        assert!(message.len() <= GUEST_TEXT_MAX_BYTES);
        assert!(!message.contains('\u{1b}'));
        let broken = GuestError::from_status("Exec", tonic::Status::unavailable(hostile));
        let rendered = crate::error_chain::render(&broken);
        assert!(
            rendered.len() <= GUEST_TEXT_MAX_BYTES + 200,
            "{}",
            rendered.len()
        );
        assert!(!rendered.contains('\u{1b}'));
    }
}
