//! Noticing a VM that ends on its own: one task per running sandbox awaits
//! its VMM's exit and moves the sandbox to `Exited` with the reason (the
//! exit status and the console's last line). A delete or the daemon's
//! shutdown ends the task first; it never stops or removes anything.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::vmm::process::describe_exit;

use super::record::{last_console_line, Sandbox};

/// Starts watching the VM of `sandbox`, if it runs one.
pub(super) fn watch(sandbox: Arc<Sandbox>, shutdown: CancellationToken) {
    let Ok(guest) = sandbox.guest() else { return };
    tokio::spawn(async move {
        let exit = tokio::select! {
            biased;
            () = sandbox.deleted.cancelled() => return,
            () = shutdown.cancelled() => return,
            exit = guest.vm.wait() => exit,
        };
        let status = match &exit {
            Ok(exit) => format!("the VM exited with {}", describe_exit(exit)),
            Err(e) => format!("the VM ended ({e})"),
        };
        let reason = match last_console_line(guest.vm.as_ref()) {
            Some(line) => format!("{status}; last console line: {line}"),
            None => status,
        };
        if sandbox.mark_exited(reason.clone()) {
            tracing::warn!(sandbox = %sandbox.id, reason, "the sandbox's VM ended on its own");
        }
    });
}
