//! The task behind one process: it owns the session's events, appends the
//! output to the process's log and records how it ended. Dropping the
//! events (when the task ends) drops the session, and the agent kills the
//! process's group; a sandbox that is deleted or whose VM ends marks its
//! processes lost at once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::model::ProcessStatus;
use super::record::Process;
use crate::guest::{ExecEvent, OutputStream, SessionEvents};

/// Drives `process` from `events` until it ends or its sandbox goes away.
pub(super) async fn drive(
    process: Arc<Process>,
    mut events: SessionEvents,
    deleted: CancellationToken,
    exited: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = deleted.cancelled() => {
                process.finish(ProcessStatus::Lost, Some("the sandbox was deleted".into()));
                return;
            }
            () = exited.cancelled() => {
                process.finish(ProcessStatus::Lost, Some("the sandbox's VM stopped".into()));
                return;
            }
        };
        match event {
            Ok(Some(ExecEvent::Stdout(data))) => process.append(OutputStream::Stdout, &data),
            Ok(Some(ExecEvent::Stderr(data))) => process.append(OutputStream::Stderr, &data),
            Ok(Some(ExecEvent::Started { .. })) => {}
            Ok(Some(ExecEvent::Exit(report))) => {
                let status = match report.signal {
                    Some(signal) => ProcessStatus::Killed {
                        signal,
                        exit_code: report.exit_code,
                        timed_out: report.timed_out,
                    },
                    None if report.timed_out => ProcessStatus::Killed {
                        signal: 9,
                        exit_code: report.exit_code,
                        timed_out: true,
                    },
                    None => ProcessStatus::Exited(report.exit_code),
                };
                process.finish(status, report.launch_error);
                return;
            }
            Ok(None) => {
                process.finish(ProcessStatus::Lost, Some("the session ended".into()));
                return;
            }
            Err(e) => {
                let error = crate::error_chain::render(&e);
                tracing::debug!(pid = process.pid, %error, "a process's session broke");
                process.finish(ProcessStatus::Lost, Some(error));
                return;
            }
        }
    }
}
