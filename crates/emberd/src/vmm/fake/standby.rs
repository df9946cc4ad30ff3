//! Fake VMM processes "started ahead" of a restore: no process, a fake PID,
//! a state a test can watch and kill through a [`FakeStandbyHandle`]; the
//! restore itself is the backend's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::FakeBackend;
use crate::vmm::{BootSpec, SnapshotFiles, StandbyVm, Vm, VmBackend, VmmError};

/// What a fake standby and its handles share.
#[derive(Debug)]
pub(super) struct StandbyState {
    pid: u32,
    /// The pack's disk it was started for.
    root_disk: PathBuf,
    stopped: AtomicBool,
    /// Killed from outside (its VMM "died").
    killed: AtomicBool,
    /// Its owner let go of it (restored or abandoned).
    dropped: AtomicBool,
}

/// A test's view of one fake standby VMM.
#[derive(Debug, Clone)]
pub struct FakeStandbyHandle {
    pub(super) state: Arc<StandbyState>,
}

impl FakeStandbyHandle {
    pub fn pid(&self) -> u32 {
        self.state.pid
    }

    /// The root disk of the spec it was started with (names the pack).
    pub fn root_disk(&self) -> &Path {
        &self.state.root_disk
    }

    /// The VMM "dies": it reports that it exited and refuses a restore.
    pub fn kill(&self) {
        self.state.killed.store(true, Ordering::SeqCst);
    }

    /// Neither stopped nor dropped by its owner.
    pub fn is_live(&self) -> bool {
        !self.state.stopped.load(Ordering::SeqCst) && !self.state.dropped.load(Ordering::SeqCst)
    }
}

/// A fake VMM waiting for its state.
pub(super) struct FakeStandby {
    backend: FakeBackend,
    spec: BootSpec,
    state: Arc<StandbyState>,
}

impl FakeStandby {
    pub(super) fn new(backend: FakeBackend, spec: BootSpec) -> Self {
        let state = Arc::new(StandbyState {
            pid: backend.shared.next_pid.fetch_add(1, Ordering::SeqCst),
            root_disk: spec.root_disk.clone(),
            stopped: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
        });
        backend.shared.standbys.lock().push(state.clone());
        FakeStandby {
            backend,
            spec,
            state,
        }
    }
}

impl Drop for FakeStandby {
    fn drop(&mut self) {
        self.state.dropped.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl StandbyVm for FakeStandby {
    fn pid(&self) -> Option<u32> {
        Some(self.state.pid)
    }

    fn has_exited(&self) -> bool {
        self.state.stopped.load(Ordering::SeqCst) || self.state.killed.load(Ordering::SeqCst)
    }

    async fn restore(self: Box<Self>, snapshot: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError> {
        if self.has_exited() {
            return Err(VmmError::ExitedEarly("the standby VMM was stopped".into()));
        }
        self.backend.restore(&self.spec, snapshot).await
    }

    async fn stop(&self) {
        self.state.stopped.store(true, Ordering::SeqCst);
    }
}
