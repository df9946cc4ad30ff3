//! The streamed exec: the same exec as [`Manager::exec`] (same checks,
//! timeout, caps, user, activity and errors, through the same
//! [`PreparedExec::run`](super::exec::PreparedExec::run)), with its output
//! handed out piece by piece as the guest writes it.

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::guest::OutputStream;

use super::error::SandboxError;
use super::manager::Manager;
use super::model::{ExecOutcome, ExecParams};

/// One event of a streamed exec.
#[derive(Debug)]
pub enum ExecStreamEvent {
    /// A piece of output, under the exec's per-stream cap.
    Output(OutputStream, Vec<u8>),
    /// The end: the outcome (with empty output) or why there is none.
    Done(Result<ExecOutcome, SandboxError>),
}

/// A running streamed exec; dropping it ends the exec (the agent kills it).
pub struct ExecStream {
    events: mpsc::UnboundedReceiver<ExecStreamEvent>,
    task: JoinHandle<()>,
}

impl ExecStream {
    /// The next event; `None` after [`ExecStreamEvent::Done`].
    pub async fn next(&mut self) -> Option<ExecStreamEvent> {
        self.events.recv().await
    }
}

impl Drop for ExecStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Manager {
    /// Starts `params.code` in sandbox `id` and streams its output. What
    /// the unary exec refuses before running (no such sandbox, a sandbox
    /// not running, a timeout too long) is refused here the same way.
    pub fn exec_stream(&self, id: &str, params: ExecParams) -> Result<ExecStream, SandboxError> {
        let prepared = self.prepare_exec(id, params.timeout_ms)?;
        drop(prepared.sandbox.begin_exec()?);
        // Unbounded, but bounded in fact: the exec's cap limits what comes.
        let (tx, events) = mpsc::unbounded_channel();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(
            async move {
                let output = tx.clone();
                let mut sink = move |stream: OutputStream, data: &[u8]| {
                    let _ = output.send(ExecStreamEvent::Output(stream, data.to_vec()));
                };
                let result = prepared.run(params, Some(&mut sink)).await;
                if let Ok(outcome) = &result {
                    metrics.record_exec(outcome.elapsed);
                }
                let _ = tx.send(ExecStreamEvent::Done(result));
            }
            .in_current_span(),
        );
        Ok(ExecStream { events, task })
    }
}
