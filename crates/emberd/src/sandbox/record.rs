//! One sandbox: its identity, its terms, and a state machine that holds, in
//! each state, exactly what exists in it.
//!
//! `Booting` holds nothing yet; `Running` holds the [`Guest`] (the VM and
//! its agent session); `Exited` keeps the guest of a VM that ended on its
//! own (its console can still be read) and why it ended; `Stopping` holds
//! nothing again, because whoever moved the sandbox there took the guest to
//! stop it. A boot that finishes after a delete finds `Stopping` and stops
//! its own VM. The record also keeps what the reaper asks: when it was
//! created, whether an exec runs, and when the last one ended. It never
//! reads a file: the console comes from the VM's ring.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::guest::AgentClient;
use crate::vmm::Vm;

use super::admission::Reservation;
use super::error::SandboxError;
use super::limits::Terms;
use super::model::{BootPath, SandboxState, SandboxSummary};
use super::process::ProcessTable;

/// Lines of the console shown by a sandbox's summary.
const CONSOLE_TAIL_LINES: usize = 20;
/// Bytes read from the end of the console ring to find those lines.
const CONSOLE_TAIL_BYTES: usize = 64 * 1024;
/// Longest console line quoted in an error or an exit reason.
const CONSOLE_LINE_CHARS: usize = 200;

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
    Exited { guest: Arc<Guest>, reason: String },
    Stopping,
}

/// Why the reaper deletes a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    Ttl,
    Idle,
}

impl Expiry {
    pub fn as_str(self) -> &'static str {
        match self {
            Expiry::Ttl => "ttl",
            Expiry::Idle => "idle",
        }
    }
}

/// What the idle timeout and the reaper look at.
struct Activity {
    /// Execs in progress.
    execs: usize,
    /// When the sandbox last had an exec end (or came up).
    last_active: Instant,
    /// Claimed by the reaper: no exec may start any more.
    reaped: bool,
}

pub(super) struct Sandbox {
    pub id: String,
    pub pack: String,
    pub dir: PathBuf,
    pub terms: Terms,
    created_at: SystemTime,
    created: Instant,
    phase: Mutex<Phase>,
    activity: Mutex<Activity>,
    /// Its room under the admission limits, given back once its VM stopped.
    reservation: Mutex<Option<Reservation>>,
    /// Cancelled on delete: ends a boot or exec in progress.
    pub deleted: CancellationToken,
    /// Cancelled when the VM ends on its own.
    pub exited: CancellationToken,
    /// Its background processes, running and recently ended.
    pub processes: ProcessTable,
}

impl Sandbox {
    /// The wall-clock time of `at`, a monotonic instant in this sandbox's life.
    fn wall_clock(&self, at: Instant) -> SystemTime {
        self.created_at + at.saturating_duration_since(self.created)
    }

    /// A sandbox whose VM is about to be booted.
    pub fn booting(
        id: String,
        pack: &str,
        dir: PathBuf,
        terms: Terms,
        reservation: Reservation,
    ) -> Self {
        let (created, created_at) = (Instant::now(), SystemTime::now());
        Sandbox {
            id,
            pack: pack.to_owned(),
            dir,
            terms,
            created_at,
            created,
            phase: Mutex::new(Phase::Booting),
            activity: Mutex::new(Activity {
                execs: 0,
                last_active: created,
                reaped: false,
            }),
            reservation: Mutex::new(Some(reservation)),
            deleted: CancellationToken::new(),
            exited: CancellationToken::new(),
            processes: ProcessTable::default(),
        }
    }

    /// A sandbox whose VM is already up (handed out from a pool).
    pub fn running(
        id: String,
        pack: &str,
        dir: PathBuf,
        guest: Guest,
        terms: Terms,
        reservation: Reservation,
    ) -> Self {
        let sandbox = Sandbox::booting(id, pack, dir, terms, reservation);
        *sandbox.phase.lock() = Phase::Running(Arc::new(guest));
        sandbox
    }

    /// Booting → running. Gives the guest back when the sandbox was deleted
    /// meanwhile, for the caller to stop. The idle clock starts here.
    pub fn finish_boot(&self, guest: Guest) -> Result<(), Guest> {
        {
            let mut phase = self.phase.lock();
            match *phase {
                Phase::Booting => *phase = Phase::Running(Arc::new(guest)),
                Phase::Running(_) | Phase::Exited { .. } | Phase::Stopping => return Err(guest),
            }
        }
        let mut activity = self.activity.lock();
        activity.last_active = Instant::now();
        Ok(())
    }

    /// The running guest, or why there is none.
    pub fn guest(&self) -> Result<Arc<Guest>, SandboxError> {
        match &*self.phase.lock() {
            Phase::Running(guest) => Ok(guest.clone()),
            Phase::Booting => Err(SandboxError::NotRunning(SandboxState::Booting)),
            Phase::Exited { reason, .. } => Err(SandboxError::Exited(reason.clone())),
            Phase::Stopping => Err(SandboxError::NotRunning(SandboxState::Stopping)),
        }
    }

    /// Running → exited, keeping the guest; false in any other state.
    pub fn mark_exited(&self, reason: String) -> bool {
        let mut phase = self.phase.lock();
        let Phase::Running(guest) = &*phase else {
            return false;
        };
        *phase = Phase::Exited {
            guest: guest.clone(),
            reason,
        };
        drop(phase);
        self.exited.cancel();
        true
    }

    /// The error an exec gets once the VM has ended on its own.
    pub fn exited_error(&self) -> SandboxError {
        match &*self.phase.lock() {
            Phase::Exited { reason, .. } => SandboxError::Exited(reason.clone()),
            _ => SandboxError::Exited("the VM ended".into()),
        }
    }

    /// Counts an exec as running until the guard drops; refused once the
    /// reaper has claimed the sandbox.
    pub fn begin_exec(&self) -> Result<ExecActivity<'_>, SandboxError> {
        let mut activity = self.activity.lock();
        if activity.reaped {
            return Err(SandboxError::NotFound);
        }
        activity.execs += 1;
        Ok(ExecActivity { sandbox: self })
    }

    /// [`Sandbox::begin_exec`] for a stream (an SSE follower, a WebSocket)
    /// that outlives the call that opened it.
    pub fn begin_stream(self: &Arc<Self>) -> Result<StreamActivity, SandboxError> {
        drop(self.begin_exec()?);
        self.activity.lock().execs += 1;
        Ok(StreamActivity {
            sandbox: self.clone(),
        })
    }

    /// Claims the sandbox for the reaper when its TTL or idle timeout has
    /// passed at `now`; from then on no exec starts in it.
    pub fn claim_expired(&self, now: Instant) -> Option<Expiry> {
        let up = matches!(*self.phase.lock(), Phase::Running(_) | Phase::Exited { .. });
        let mut activity = self.activity.lock();
        if activity.reaped {
            return None;
        }
        let ttl_due = self
            .terms
            .ttl
            .and_then(|ttl| self.created.checked_add(ttl))
            .is_some_and(|at| at <= now);
        let idle_due = up
            && activity.execs == 0
            && self
                .terms
                .idle_timeout
                .and_then(|idle| activity.last_active.checked_add(idle))
                .is_some_and(|at| at <= now);
        let expiry = match (ttl_due, idle_due) {
            (true, _) => Expiry::Ttl,
            (false, true) => Expiry::Idle,
            (false, false) => return None,
        };
        activity.reaped = true;
        Some(expiry)
    }

    pub fn summary(&self, backend: &'static str, with_console: bool) -> SandboxSummary {
        let (state, boot_path, vmm_pid, exit_reason, console, up) = match &*self.phase.lock() {
            Phase::Booting => (SandboxState::Booting, None, None, None, None, false),
            Phase::Running(guest) => (
                SandboxState::Running,
                Some(guest.boot_path),
                guest.vm.pid(),
                None,
                with_console.then(|| console_tail(guest.vm.as_ref())),
                true,
            ),
            Phase::Exited { guest, reason } => (
                SandboxState::Exited,
                Some(guest.boot_path),
                None,
                Some(reason.clone()),
                with_console.then(|| console_tail(guest.vm.as_ref())),
                true,
            ),
            Phase::Stopping => (SandboxState::Stopping, None, None, None, None, false),
        };
        let idle_expires_at = {
            let activity = self.activity.lock();
            let idle = self
                .terms
                .idle_timeout
                .filter(|_| up && activity.execs == 0);
            idle.and_then(|idle| self.wall_clock(activity.last_active).checked_add(idle))
        };
        SandboxSummary {
            id: self.id.clone(),
            pack: self.pack.clone(),
            state,
            backend,
            created_at: self.created_at,
            boot_path,
            vmm_pid,
            console_tail: console.or_else(|| with_console.then(String::new)),
            expires_at: self
                .terms
                .ttl
                .and_then(|ttl| self.created_at.checked_add(ttl)),
            idle_expires_at,
            exit_reason,
            shape: Some(self.terms.shape),
        }
    }

    /// Moves to stopping, cancels what is in progress, stops the VM (if
    /// any), removes the directory and gives back its room. Idempotent.
    pub async fn teardown(&self) {
        let previous = std::mem::replace(&mut *self.phase.lock(), Phase::Stopping);
        self.deleted.cancel();
        match previous {
            Phase::Running(guest) | Phase::Exited { guest, .. } => guest.stop(&self.id).await,
            Phase::Booting | Phase::Stopping => {}
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sandbox = %self.id, error = %e, "removing the sandbox directory failed");
            }
        }
        drop(self.reservation.lock().take());
    }
}

/// An exec in progress; its end restarts the idle clock.
pub(super) struct ExecActivity<'a> {
    sandbox: &'a Sandbox,
}

impl Drop for ExecActivity<'_> {
    fn drop(&mut self) {
        let mut activity = self.sandbox.activity.lock();
        activity.execs -= 1;
        activity.last_active = Instant::now();
    }
}

/// An open stream; its end restarts the idle clock.
pub(super) struct StreamActivity {
    sandbox: Arc<Sandbox>,
}

impl StreamActivity {
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }
}

impl Drop for StreamActivity {
    fn drop(&mut self) {
        drop(ExecActivity {
            sandbox: &self.sandbox,
        });
    }
}

/// The last lines of the VM's console, from its in-memory ring.
pub(super) fn console_tail(vm: &dyn Vm) -> String {
    tail_lines(&vm.console_tail(CONSOLE_TAIL_BYTES))
}

/// The console's last non-empty line, capped, to explain a VM that died or
/// a boot that never answered.
pub(super) fn last_console_line(vm: &dyn Vm) -> Option<String> {
    last_line(&console_tail(vm))
}

/// The last lines of console bytes, with control characters other than
/// tabs and newlines dropped (the guest wrote them).
fn tail_lines(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    lines[start..].join("\n")
}

fn last_line(tail: &str) -> Option<String> {
    let line = tail.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(CONSOLE_LINE_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_tail_is_the_last_lines_without_control_characters() {
        assert_eq!(tail_lines(b""), "");
        assert_eq!(last_line(""), None);
        let mut text = "x".repeat(200 * 1024);
        for i in 0..30 {
            text.push_str(&format!("\nline {i}\x1b[0m"));
        }
        text.push_str("\n  \n");
        let tail = tail_lines(text.as_bytes());
        assert_eq!(tail.lines().count(), CONSOLE_TAIL_LINES);
        assert!(tail.starts_with("line 11[0m\n"), "{tail}");
        assert_eq!(last_line(&tail).as_deref(), Some("line 29[0m"));
        let long = "y".repeat(1000);
        assert_eq!(last_line(&long).unwrap().len(), CONSOLE_LINE_CHARS);
    }
}
