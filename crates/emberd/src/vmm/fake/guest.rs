//! The state of one fake VM, shared by its [`FakeVm`](super::vm::FakeVm),
//! its agent sessions and the handles of the test: its life, its sessions
//! and what its agent has been asked.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::{AgentCall, Shared};
use crate::vmm::console::ConsoleRing;
use crate::vmm::BootSpec;

/// Where a fake VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    Running,
    /// Died on its own ([`FakeVmHandle::kill`]); not yet stopped.
    Died,
    Stopped,
    /// Dropped without a stop; real backends kill such a VM.
    Dropped,
}

/// The state of one fake VM, shared by its [`FakeVm`], its agent sessions
/// and the handles of the test.
pub(super) struct Guest {
    pub(super) pid: u32,
    pub(super) sandbox_id: String,
    pub(super) root_disk: PathBuf,
    pub(super) restored: bool,
    pub(super) backend: Arc<Shared>,
    pub(super) booted_at: Instant,
    pub(super) life: watch::Sender<Life>,
    pub(super) paused: AtomicBool,
    pub(super) sessions: Mutex<Vec<AbortHandle>>,
    pub(super) quiesced: AtomicBool,
    pub(super) health_hangs: AtomicBool,
    pub(super) health_calls: AtomicU64,
    pub(super) identity: Mutex<Option<String>>,
    pub(super) running_execs: Arc<AtomicUsize>,
    pub(super) next_exec_pid: AtomicU32,
    /// What the guest wrote to its console.
    pub(super) console: ConsoleRing,
    /// The spec it was made from.
    pub(super) spec: BootSpec,
    /// Every agent call received, in order.
    pub(super) calls: Mutex<Vec<AgentCall>>,
}

impl Guest {
    pub(super) fn new(pid: u32, spec: &BootSpec, restored: bool, backend: Arc<Shared>) -> Self {
        Guest {
            pid,
            sandbox_id: spec.sandbox_id.clone(),
            root_disk: spec.root_disk.clone(),
            restored,
            backend,
            booted_at: Instant::now(),
            life: watch::Sender::new(Life::Running),
            paused: AtomicBool::new(false),
            sessions: Mutex::new(Vec::new()),
            quiesced: AtomicBool::new(false),
            health_hangs: AtomicBool::new(false),
            health_calls: AtomicU64::new(0),
            identity: Mutex::new(None),
            running_execs: Arc::new(AtomicUsize::new(0)),
            next_exec_pid: AtomicU32::new(100),
            console: ConsoleRing::default(),
            spec: spec.clone(),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Records an agent call, then answers it or hangs as told.
    pub(super) async fn took(&self, call: AgentCall) {
        self.calls.lock().push(call);
        self.backend.answer_or_hang(call).await;
    }

    pub(super) fn life(&self) -> Life {
        *self.life.borrow()
    }

    /// True until the VM is stopped or dropped (a VM that died counts: its
    /// owner has yet to stop it).
    pub(super) fn is_live(&self) -> bool {
        matches!(self.life(), Life::Running | Life::Died)
    }

    /// Moves to `to` unless the VM already ended that way or further, and
    /// breaks every agent session if it stops running.
    pub(super) fn end(&self, to: Life) {
        let changed = self.life.send_if_modified(|life| {
            let allowed = match to {
                Life::Running => false,
                Life::Died => *life == Life::Running,
                Life::Stopped | Life::Dropped => matches!(*life, Life::Running | Life::Died),
            };
            if allowed {
                *life = to;
            }
            allowed
        });
        if changed {
            for session in self.sessions.lock().drain(..) {
                session.abort();
            }
        }
    }
}
