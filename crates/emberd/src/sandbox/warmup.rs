//! The warm-up exec: the pack's warm-up code, run once in a VM before it
//! is snapshotted as a template or handed out from a pool, so that the
//! first real exec finds the interpreter's pages and (under TCG) its
//! translated code warm. Bounded like any exec; a warm-up that fails
//! fails the VM it ran in.

use std::time::{Duration, Instant};

use emberd_proto::warm::WarmLanguage;

use crate::guest::{guest_bytes, AgentClient, RunSpec};
use crate::image::PackArtefact;

use super::error::{BootError, SandboxError};
use super::exec::DEFAULT_EXEC_TIMEOUT;

/// Cap on the warm-up's output (only its stderr is ever shown).
const WARMUP_OUTPUT_LIMIT: u64 = 64 * 1024;
/// How long a warm-up waits for the guest's pre-started interpreter
/// (each `Health` probe is bounded on its own).
const WARM_INTERPRETER_BOUND: Duration = Duration::from_secs(30);

/// Waits (bounded) for the pack's pre-started interpreter, then runs the
/// pack's warm-up code through it; an exit other than 0 is an error.
pub(super) async fn warm_up(agent: &AgentClient, pack: &PackArtefact) -> Result<(), SandboxError> {
    if let Some(language) = pack.warm_language {
        wait_until_warm(agent, language).await;
    }
    let spec = RunSpec {
        interpreter: pack.interpreter.clone(),
        code: pack.warmup.clone().into_bytes(),
        file_suffix: pack.file_suffix.clone(),
        timeout: Some(DEFAULT_EXEC_TIMEOUT),
        output_limit_bytes: WARMUP_OUTPUT_LIMIT,
        warm_language: pack.warm_language,
        ..RunSpec::default()
    };
    // Bounded by its timeout, the drain limit and the kill-and-reap margin.
    let outcome = agent.run(spec).await.map_err(SandboxError::Exec)?;
    if outcome.exit.exit_code != 0 {
        return Err(BootError::Warmup {
            exit_code: outcome.exit.exit_code,
            stderr: guest_bytes(&outcome.stderr),
        }
        .into());
    }
    Ok(())
}

/// Waits (bounded) until the agent's pre-started interpreter for `language`
/// is ready. Without one, execs still work.
async fn wait_until_warm(agent: &AgentClient, language: WarmLanguage) {
    let deadline = Instant::now() + WARM_INTERPRETER_BOUND;
    while Instant::now() < deadline {
        if agent
            .warm_interpreters()
            .await
            .is_some_and(|warm| warm.contains(&language))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        %language,
        "the warm interpreter did not come up; execs run one-shot"
    );
}
