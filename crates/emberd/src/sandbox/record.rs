//! One sandbox: its identity and a state machine that holds, in each state,
//! exactly what exists in it.
//!
//! `Booting` holds nothing yet; `Running` holds the [`Guest`] (the VM and
//! its agent session); `Stopping` holds nothing again, because whoever moved
//! the sandbox there took the guest to stop it. A boot that finishes after a
//! delete finds `Stopping` and stops its own VM.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::guest::AgentClient;
use crate::vmm::Vm;

use super::error::SandboxError;
use super::model::{BootPath, SandboxState, SandboxSummary};

/// Lines of the console log shown by a sandbox's summary.
const CONSOLE_TAIL_LINES: usize = 20;
/// Bytes read from the end of the console log to find those lines.
const CONSOLE_TAIL_BYTES: u64 = 64 * 1024;

/// A VM with an open agent session.
pub(super) struct Guest {
    pub vm: Box<dyn Vm>,
    pub agent: AgentClient,
    pub boot_path: BootPath,
}

impl Guest {
    /// Stops the VM, logging (not returning) a failure: the caller is
    /// discarding it either way.
    pub async fn stop(&self, id: &str) {
        if let Err(e) = self.vm.stop().await {
            tracing::warn!(sandbox = %id, error = %e, "stopping the VM failed");
        }
    }
}

enum Phase {
    Booting,
    Running(Arc<Guest>),
    Stopping,
}

pub(super) struct Sandbox {
    pub id: String,
    pub pack: String,
    pub dir: PathBuf,
    created_at: SystemTime,
    phase: Mutex<Phase>,
    /// Cancelled on delete: ends a boot or exec in progress.
    pub deleted: CancellationToken,
}

impl Sandbox {
    /// A sandbox whose VM is about to be booted.
    pub fn booting(id: String, pack: &str, dir: PathBuf) -> Self {
        Sandbox {
            id,
            pack: pack.to_owned(),
            dir,
            created_at: SystemTime::now(),
            phase: Mutex::new(Phase::Booting),
            deleted: CancellationToken::new(),
        }
    }

    /// A sandbox whose VM is already up (handed out from a pool).
    pub fn running(id: String, pack: &str, dir: PathBuf, guest: Guest) -> Self {
        let sandbox = Sandbox::booting(id, pack, dir);
        *sandbox.phase.lock() = Phase::Running(Arc::new(guest));
        sandbox
    }

    /// Booting → running. Gives the guest back when the sandbox was deleted
    /// meanwhile, for the caller to stop.
    pub fn finish_boot(&self, guest: Guest) -> Result<(), Guest> {
        let mut phase = self.phase.lock();
        match *phase {
            Phase::Booting => {
                *phase = Phase::Running(Arc::new(guest));
                Ok(())
            }
            Phase::Running(_) | Phase::Stopping => Err(guest),
        }
    }

    /// The running guest, or why there is none.
    pub fn guest(&self) -> Result<Arc<Guest>, SandboxError> {
        match &*self.phase.lock() {
            Phase::Running(guest) => Ok(guest.clone()),
            Phase::Booting => Err(SandboxError::NotRunning(SandboxState::Booting)),
            Phase::Stopping => Err(SandboxError::NotRunning(SandboxState::Stopping)),
        }
    }

    pub fn summary(&self, backend: &'static str, with_console: bool) -> SandboxSummary {
        let (state, boot_path, vmm_pid) = match &*self.phase.lock() {
            Phase::Booting => (SandboxState::Booting, None, None),
            Phase::Running(guest) => (SandboxState::Running, Some(guest.boot_path), guest.vm.pid()),
            Phase::Stopping => (SandboxState::Stopping, None, None),
        };
        SandboxSummary {
            id: self.id.clone(),
            pack: self.pack.clone(),
            state,
            backend,
            created_at: self.created_at,
            boot_path,
            vmm_pid,
            console_tail: with_console.then(|| console_tail(&self.dir)),
            expires_at: None,
            idle_expires_at: None,
            exit_reason: None,
            shape: None,
        }
    }

    /// Moves to stopping, cancels what is in progress, stops the VM (if
    /// any) and removes the directory. Idempotent.
    pub async fn teardown(&self) {
        let previous = std::mem::replace(&mut *self.phase.lock(), Phase::Stopping);
        self.deleted.cancel();
        if let Phase::Running(guest) = previous {
            guest.stop(&self.id).await;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sandbox = %self.id, error = %e, "removing the sandbox directory failed");
            }
        }
    }
}

/// The last lines of the console log in `dir`, reading only its end.
pub(super) fn console_tail(dir: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(dir.join("console.log")) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(CONSOLE_TAIL_BYTES);
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.take(CONSOLE_TAIL_BYTES).read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    lines[start..].join("\n")
}

/// The console's last line, to explain a boot that never answered.
pub(super) fn last_console_line(dir: &Path) -> Option<String> {
    console_tail(dir).lines().last().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_is_the_last_lines_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(console_tail(dir.path()), "");
        assert_eq!(last_console_line(dir.path()), None);
        let mut text = "x".repeat(200 * 1024);
        for i in 0..30 {
            text.push_str(&format!("\nline {i}"));
        }
        std::fs::write(dir.path().join("console.log"), text).unwrap();
        let tail = console_tail(dir.path());
        assert_eq!(tail.lines().count(), CONSOLE_TAIL_LINES);
        assert!(tail.starts_with("line 10\n"), "{tail}");
        assert_eq!(last_console_line(dir.path()).as_deref(), Some("line 29"));
    }
}
