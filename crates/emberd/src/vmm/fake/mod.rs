//! An in-process [`VmBackend`] for tests: no VMM process, no guest kernel.
//!
//! Each fake VM's guest is a scripted stand-in of the agent
//! (`agent`), served with `emberd_proto::serve_over` on one end of an
//! in-memory duplex stream; exec code is a small script ([`script`] lists
//! the steps). The daemon side (Manager, guest client, API) runs unchanged
//! on top, so lifecycle races run in milliseconds.
//!
//! Faults are set per backend instance ([`FakeBackend::fail_boots`],
//! [`FakeBackend::hold_boots`], [`FakeBackend::stop_answering`] …) or per
//! VM through a [`FakeVmHandle`] (kill it, make its `Health` hang); never
//! through the environment. The
//! backend counts what it made, so a test can check that every VM it
//! started was stopped. Compiled only for tests and with the
//! `fake-backend` feature; it must never back a daemon users run.

mod agent;
mod guest;
pub mod script;
mod standby;
mod vm;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::watch;

use self::guest::Guest;
pub use self::standby::FakeStandbyHandle;
use self::standby::{FakeStandby, StandbyState};
use self::vm::FakeVm;
pub use self::vm::FakeVmHandle;
use super::{BootSpec, Capabilities, SnapshotFiles, Vm, VmBackend, VmmError};

/// The file a fake snapshot consists of.
pub const SNAPSHOT_FILE: &str = "fake-vm.snapshot";
/// How a fake snapshot's file begins; a restore rejects any other.
const SNAPSHOT_HEADER: &str = "fake snapshot of VM ";
/// Fake PIDs start above the largest PID Linux hands out (2^22), so that no
/// fake VM can ever be mistaken for a real process.
pub const FIRST_PID: u32 = 5_000_000;

/// Faults that apply to every VM this backend makes from now on.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    fail_boots: bool,
    fail_restores: bool,
    wrong_generation: bool,
    /// Agent calls taken and never answered, by [`AgentCall`] index.
    silent: [bool; AgentCall::COUNT],
}

/// A call the fake agent can be told to take and never answer, as an agent
/// that was stopped (SIGSTOP) or a VM that was paused would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    Hello,
    SetIdentity,
    Health,
    Quiesce,
    Exec,
}

impl AgentCall {
    const COUNT: usize = 5;
}

/// State shared by the backend, its VMs and their agents.
struct Shared {
    faults: Mutex<Faults>,
    /// True while boots are held.
    boot_hold: watch::Sender<bool>,
    /// Bumped to release execs waiting in `block`.
    release: watch::Sender<u64>,
    warm_interpreters: Mutex<Vec<String>>,
    next_pid: AtomicU32,
    vms: Mutex<Vec<Arc<Guest>>>,
    /// Every standby VMM made, oldest first.
    standbys: Mutex<Vec<Arc<StandbyState>>>,
    boots: AtomicUsize,
    restores: AtomicUsize,
    snapshots: AtomicUsize,
    boots_waiting: AtomicUsize,
    most_live: AtomicUsize,
    blocked_execs: Arc<AtomicUsize>,
    running_execs: Arc<AtomicUsize>,
    /// Calls now taken and left unanswered.
    unanswered: AtomicUsize,
    /// The `drain_limit_ms` of the last exec request.
    last_drain_limit_ms: AtomicU64,
    /// The accelerator reported, once a test sets one (none by default).
    acceleration: std::sync::OnceLock<super::Accel>,
}

impl Shared {
    fn faults(&self) -> Faults {
        *self.faults.lock()
    }

    /// Never returns when `call` is set to go unanswered.
    async fn answer_or_hang(&self, call: AgentCall) {
        if self.faults().silent[call as usize] {
            self.unanswered.fetch_add(1, Ordering::SeqCst);
            let _counted = scopeguard(|| {
                self.unanswered.fetch_sub(1, Ordering::SeqCst);
            });
            std::future::pending::<()>().await;
        }
    }

    fn set_faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock()
    }

    fn warm_interpreters(&self) -> Vec<String> {
        self.warm_interpreters.lock().clone()
    }
}

/// The fake backend. Clones share their VMs and faults: hand one clone to
/// the Manager and keep another to steer and watch it.
#[derive(Clone)]
pub struct FakeBackend {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBackend")
            .field("faults", &self.shared.faults())
            .field("live_vms", &self.live_vms())
            .finish()
    }
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeBackend {
    /// A backend without faults whose agents report `python` and `node` warm.
    pub fn new() -> Self {
        FakeBackend {
            shared: Arc::new(Shared {
                faults: Mutex::new(Faults::default()),
                boot_hold: watch::Sender::new(false),
                release: watch::Sender::new(0),
                warm_interpreters: Mutex::new(vec!["python".into(), "node".into()]),
                next_pid: AtomicU32::new(FIRST_PID),
                vms: Mutex::new(Vec::new()),
                standbys: Mutex::new(Vec::new()),
                boots: AtomicUsize::new(0),
                restores: AtomicUsize::new(0),
                snapshots: AtomicUsize::new(0),
                boots_waiting: AtomicUsize::new(0),
                most_live: AtomicUsize::new(0),
                blocked_execs: Arc::new(AtomicUsize::new(0)),
                running_execs: Arc::new(AtomicUsize::new(0)),
                unanswered: AtomicUsize::new(0),
                last_drain_limit_ms: AtomicU64::new(0),
                acceleration: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Reports `accel` as the guests' accelerator from now on (once per backend).
    pub fn report_acceleration(&self, accel: super::Accel) {
        let _ = self.shared.acceleration.set(accel);
    }

    /// Boots and restores fail (the VMM "exits early") while set.
    pub fn fail_boots(&self, fail: bool) {
        self.shared.set_faults().fail_boots = fail;
    }

    /// Restores fail (the VMM rejects the snapshot) while set.
    pub fn fail_restores(&self, fail: bool) {
        self.shared.set_faults().fail_restores = fail;
    }

    /// Agents of new and existing VMs answer `Hello` with a generation this
    /// daemon does not speak while set.
    pub fn speak_wrong_generation(&self, wrong: bool) {
        self.shared.set_faults().wrong_generation = wrong;
    }

    /// While held, boots and restores wait (counted by
    /// [`FakeBackend::boots_waiting`]) until released or until the boot
    /// spec's timeout, which fails them. `hold_boots(false)` releases them.
    pub fn hold_boots(&self, hold: bool) {
        self.shared.boot_hold.send_replace(hold);
    }

    /// While set, every agent (of new and existing VMs) takes `call` and
    /// never answers it; calls already hanging stay hung.
    pub fn stop_answering(&self, call: AgentCall, silent: bool) {
        self.shared.set_faults().silent[call as usize] = silent;
    }

    /// Agent calls now taken and left unanswered.
    pub fn unanswered_calls(&self) -> usize {
        self.shared.unanswered.load(Ordering::SeqCst)
    }

    /// The `drain_limit_ms` the last exec request carried.
    pub fn last_drain_limit_ms(&self) -> u64 {
        self.shared.last_drain_limit_ms.load(Ordering::SeqCst)
    }

    /// Releases every exec now waiting in a `block` step.
    pub fn release_blocked(&self) {
        self.shared.release.send_modify(|n| *n += 1);
    }

    /// What agents report in `Health` as their warm interpreters.
    pub fn set_warm_interpreters(&self, languages: &[&str]) {
        *self.shared.warm_interpreters.lock() = languages.iter().map(|l| (*l).to_owned()).collect();
    }

    /// Cold boots asked for, including held and failed ones.
    pub fn boots_started(&self) -> usize {
        self.shared.boots.load(Ordering::SeqCst)
    }

    /// Restores asked for, including held and failed ones.
    pub fn restores_started(&self) -> usize {
        self.shared.restores.load(Ordering::SeqCst)
    }

    /// Snapshots written.
    pub fn snapshots_taken(&self) -> usize {
        self.shared.snapshots.load(Ordering::SeqCst)
    }

    /// Boots and restores now waiting because boots are held.
    pub fn boots_waiting(&self) -> usize {
        self.shared.boots_waiting.load(Ordering::SeqCst)
    }

    /// Execs now waiting in a `block` step.
    pub fn blocked_execs(&self) -> usize {
        self.shared.blocked_execs.load(Ordering::SeqCst)
    }

    /// Execs now running in any VM.
    pub fn running_execs(&self) -> usize {
        self.shared.running_execs.load(Ordering::SeqCst)
    }

    /// Every VM this backend made, oldest first.
    pub fn vms(&self) -> Vec<FakeVmHandle> {
        self.shared
            .vms
            .lock()
            .iter()
            .map(|guest| FakeVmHandle {
                guest: guest.clone(),
            })
            .collect()
    }

    /// The VMs neither stopped nor dropped, oldest first. A VM that died
    /// stays here until its owner stops it.
    pub fn live(&self) -> Vec<FakeVmHandle> {
        self.vms()
            .into_iter()
            .filter(FakeVmHandle::is_live)
            .collect()
    }

    /// How many VMs are neither stopped nor dropped.
    pub fn live_vms(&self) -> usize {
        self.live().len()
    }

    /// The most VMs that were live at the same time.
    pub fn most_live_vms(&self) -> usize {
        self.shared.most_live.load(Ordering::SeqCst)
    }

    /// Every standby VMM this backend started, oldest first.
    pub fn standbys(&self) -> Vec<FakeStandbyHandle> {
        self.shared
            .standbys
            .lock()
            .iter()
            .map(|state| FakeStandbyHandle {
                state: state.clone(),
            })
            .collect()
    }

    /// Standby VMMs neither stopped, dropped nor restored (a killed one
    /// counts until its owner stops it, as a dead VM does).
    pub fn live_standbys(&self) -> Vec<FakeStandbyHandle> {
        self.standbys()
            .into_iter()
            .filter(FakeStandbyHandle::is_live)
            .collect()
    }

    /// The VM with fake PID `pid`.
    pub fn vm(&self, pid: u32) -> Option<FakeVmHandle> {
        self.vms().into_iter().find(|vm| vm.pid() == pid)
    }

    /// Waits while boots are held; fails like a VMM that never came up.
    async fn wait_if_held(&self, spec: &BootSpec) -> Result<(), VmmError> {
        let mut held = self.shared.boot_hold.subscribe();
        if !*held.borrow_and_update() {
            return Ok(());
        }
        self.shared.boots_waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = scopeguard(|| {
            self.shared.boots_waiting.fetch_sub(1, Ordering::SeqCst);
        });
        let released = held.wait_for(|held| !*held);
        let released = tokio::time::timeout(spec.boot_timeout, async { released.await.map(drop) });
        match released.await {
            Ok(_) => Ok(()),
            Err(_) => Err(VmmError::BootTimeout(spec.boot_timeout)),
        }
    }

    /// Makes a running VM, as a VMM would: it needs the root disk, and its
    /// guest writes a line or two to its console.
    fn make(&self, spec: &BootSpec, restored: bool) -> Result<Box<dyn Vm>, VmmError> {
        if !spec.root_disk.is_file() {
            return Err(VmmError::ExitedEarly(format!(
                "cannot open the root disk {}",
                spec.root_disk.display()
            )));
        }
        let how = if restored { "restored" } else { "booted" };
        let pid = self.shared.next_pid.fetch_add(1, Ordering::SeqCst);
        let guest = Arc::new(Guest::new(pid, spec, restored, self.shared.clone()));
        guest.console.push(
            format!(
                "fake guest {how} for {}\nemberd-init: ready\n",
                spec.sandbox_id
            )
            .as_bytes(),
        );
        let live = {
            let mut vms = self.shared.vms.lock();
            vms.push(guest.clone());
            vms.iter().filter(|g| g.is_live()).count()
        };
        self.shared.most_live.fetch_max(live, Ordering::SeqCst);
        Ok(Box::new(FakeVm { guest }))
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[async_trait]
impl VmBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn version(&self) -> String {
        "fake 1".to_owned()
    }

    fn acceleration(&self) -> Option<super::Accel> {
        self.shared.acceleration.get().copied()
    }

    async fn start(&self, spec: &BootSpec) -> Result<Box<dyn Vm>, VmmError> {
        self.shared.boots.fetch_add(1, Ordering::SeqCst);
        self.wait_if_held(spec).await?;
        if self.shared.faults().fail_boots {
            return Err(VmmError::ExitedEarly(
                "the fake VMM was told to fail boots".into(),
            ));
        }
        self.make(spec, false)
    }

    async fn restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn Vm>, VmmError> {
        self.shared.restores.fetch_add(1, Ordering::SeqCst);
        self.wait_if_held(spec).await?;
        let faults = self.shared.faults();
        if faults.fail_boots {
            return Err(VmmError::ExitedEarly(
                "the fake VMM was told to fail boots".into(),
            ));
        }
        if faults.fail_restores {
            return Err(VmmError::Api {
                request: "snapshot load".into(),
                message: "the fake VMM was told to fail restores".into(),
            });
        }
        // A snapshot is what `Vm::snapshot` wrote, else the VMM rejects it.
        let written = std::fs::read_to_string(snapshot.dir.join(SNAPSHOT_FILE));
        if !written.is_ok_and(|text| text.starts_with(SNAPSHOT_HEADER)) {
            return Err(VmmError::Api {
                request: "snapshot load".into(),
                message: format!("no usable snapshot in {}", snapshot.dir.display()),
            });
        }
        self.make(spec, true)
    }

    async fn prepare_restore(
        &self,
        spec: &BootSpec,
        _snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn super::StandbyVm>, VmmError> {
        if self.shared.faults().fail_boots {
            return Err(VmmError::ExitedEarly(
                "the fake VMM was told to fail boots".into(),
            ));
        }
        Ok(Box::new(FakeStandby::new(self.clone(), spec.clone())))
    }
}

#[cfg(test)]
mod tests;
