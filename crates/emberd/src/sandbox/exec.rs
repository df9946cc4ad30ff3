//! One exec: the timeout it runs under, the program the agent runs, and
//! the outcome the manager hands back. The unary and the streamed exec
//! both run through [`PreparedExec::run`]; they differ only in where the
//! output goes (collected, or handed to a sink as it comes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::guest::bounds::{exec_answer_bound, EXEC_DRAIN_LIMIT};
use crate::guest::{GuestError, OutputSink, RunOutcome, RunSpec};
use crate::image::PackArtefact;

use super::error::{Interrupted, SandboxError};
use super::model::{ExecOutcome, ExecParams, ExitStatus};
use super::record::{Guest, Sandbox};

/// How long an exec whose agent session broke waits to learn whether the
/// VM died (the VM watcher notices an exit well within this).
const EXIT_NOTICE: Duration = Duration::from_secs(1);

/// An exec whose sandbox, guest, pack and timeout have been checked.
pub(super) struct PreparedExec {
    pub sandbox: Arc<Sandbox>,
    pub guest: Arc<Guest>,
    pub pack: PackArtefact,
    pub timeout: Duration,
}

impl PreparedExec {
    /// Runs the exec to its outcome, counting it as activity. With a sink,
    /// output goes there as it comes and the outcome's output is empty. An
    /// exec whose VM ends under it answers [`SandboxError::Exited`].
    pub async fn run(
        &self,
        params: ExecParams,
        sink: Option<OutputSink<'_>>,
    ) -> Result<ExecOutcome, SandboxError> {
        let sandbox = &self.sandbox;
        let _active = sandbox.begin_exec()?;
        let result = tokio::select! {
            result = run(&self.guest, &self.pack, params, self.timeout, &sandbox.deleted, sink) => result,
            () = sandbox.exited.cancelled() => return Err(sandbox.exited_error()),
        };
        match result {
            // A broken session is most often a VM that died: say so.
            Err(e @ SandboxError::Exec(_)) => {
                match tokio::time::timeout(EXIT_NOTICE, sandbox.exited.cancelled()).await {
                    Ok(()) => Err(sandbox.exited_error()),
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    }
}

/// Timeout of an exec that names none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout an exec may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// Per-stream cap on the output an exec returns.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// The timeout an exec runs under.
pub(super) fn exec_timeout(timeout_ms: Option<u64>) -> Result<Duration, SandboxError> {
    match timeout_ms {
        None | Some(0) => Ok(DEFAULT_EXEC_TIMEOUT),
        Some(ms) if Duration::from_millis(ms) > MAX_EXEC_TIMEOUT => {
            Err(SandboxError::TimeoutTooLong {
                max_ms: MAX_EXEC_TIMEOUT.as_millis(),
            })
        }
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// Runs `params.code` with the pack's interpreter in `guest`, until it
/// ends, the sandbox is deleted, or the agent stops answering: the answer
/// is awaited for the timeout, the agent's drain limit (sent with the
/// request) and a kill-and-reap margin, so that output a lingering child
/// writes after a timeout still comes back with the timeout's status.
pub(super) async fn run(
    guest: &Guest,
    pack: &PackArtefact,
    params: ExecParams,
    timeout: Duration,
    deleted: &CancellationToken,
    sink: Option<OutputSink<'_>>,
) -> Result<ExecOutcome, SandboxError> {
    let spec = RunSpec {
        interpreter: pack.interpreter.clone(),
        code: params.code.into_bytes(),
        file_suffix: pack.file_suffix.clone(),
        stdin: params.stdin.map(String::into_bytes),
        timeout: Some(timeout),
        drain_limit: Some(EXEC_DRAIN_LIMIT),
        output_limit_bytes: DEFAULT_OUTPUT_LIMIT,
        warm_language: pack.warm_language,
        user: params.user.as_str().to_owned(),
    };
    let started = Instant::now();
    let running = async {
        match sink {
            None => guest.agent.run(spec).await,
            Some(sink) => guest.agent.run_forwarding(spec, sink).await,
        }
    };
    let outcome = tokio::select! {
        result = running => match result {
            Ok(outcome) => outcome,
            Err(GuestError::Timeout { .. }) => {
                let grace = exec_answer_bound(timeout, EXEC_DRAIN_LIMIT) - timeout;
                return Err(SandboxError::AgentUnresponsive(grace));
            }
            // A shutdown deletes every sandbox: answer as the delete would.
            Err(GuestError::ShuttingDown { .. }) => {
                return Err(SandboxError::Deleted(Interrupted::Exec))
            }
            Err(e) => return Err(SandboxError::Exec(e)),
        },
        () = deleted.cancelled() => return Err(SandboxError::Deleted(Interrupted::Exec)),
    };
    Ok(outcome_of(outcome, started.elapsed()))
}

/// The agent's report as the manager's outcome.
fn outcome_of(outcome: RunOutcome, elapsed: Duration) -> ExecOutcome {
    let status = if outcome.timed_out {
        ExitStatus::TimedOut
    } else if let Some(reason) = outcome.launch_error {
        ExitStatus::NotStarted(reason)
    } else if let Some(signal) = outcome.signal {
        ExitStatus::Signalled(signal)
    } else {
        ExitStatus::Exited(outcome.exit_code)
    };
    ExecOutcome {
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        status,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
        elapsed,
        agent_time: outcome.guest_duration,
        vm_time: outcome.vm_duration,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_wins_over_the_signal_that_enforced_it() {
        let timed_out = RunOutcome {
            timed_out: true,
            exit_code: 137,
            signal: Some(9),
            stdout: b"partial".to_vec(),
            ..RunOutcome::default()
        };
        let outcome = outcome_of(timed_out, Duration::from_millis(5));
        assert_eq!(outcome.status, ExitStatus::TimedOut);
        assert_eq!(outcome.stdout, b"partial");

        let killed = RunOutcome {
            exit_code: 143,
            signal: Some(15),
            ..RunOutcome::default()
        };
        assert_eq!(
            outcome_of(killed, Duration::ZERO).status,
            ExitStatus::Signalled(15)
        );
        let normal = RunOutcome {
            exit_code: 7,
            ..RunOutcome::default()
        };
        assert_eq!(
            outcome_of(normal, Duration::ZERO).status,
            ExitStatus::Exited(7)
        );
    }

    #[test]
    fn timeouts_default_and_are_capped() {
        assert_eq!(exec_timeout(None).unwrap(), DEFAULT_EXEC_TIMEOUT);
        assert_eq!(exec_timeout(Some(0)).unwrap(), DEFAULT_EXEC_TIMEOUT);
        assert_eq!(
            exec_timeout(Some(1500)).unwrap(),
            Duration::from_millis(1500)
        );
        let max = u64::try_from(MAX_EXEC_TIMEOUT.as_millis()).unwrap();
        assert!(exec_timeout(Some(max)).is_ok());
        assert!(matches!(
            exec_timeout(Some(max + 1)),
            Err(SandboxError::TimeoutTooLong { .. })
        ));
    }
}
