//! Standby VMMs: per pack, a few VMM processes started ahead of need and
//! waiting for the pack's template state (QEMU with `-incoming defer` and
//! the template's RAM file mapped), so that a create that misses the warm
//! pool has only the state load, the agent session and the identity left.
//!
//! Each standby lives in its own sandbox directory (the VMM's sockets are
//! named in it), whose id and directory become the sandbox's at hand-out,
//! as a pooled VM's do. A standby holds a sandbox slot under the admission
//! limits but no guest memory: the create that takes it resizes the slot's
//! reservation to the guest's memory, and gives the standby back when the
//! memory limit refuses. It also holds a lease on the template it was
//! started for: one whose template was rebuilt, condemned or given up, or
//! whose VMM ended, is stopped and replaced, never restored.
//!
//! One task per pack ([`keep_ready`]) starts standbys while the pack has a
//! usable template and fewer than `--standby-vmms` ready or starting. A
//! start takes the slot, a boot turn that is free now (creates never queue
//! behind it) and one of [`MAX_STARTS`] start turns, all at once or not at
//! all, and waits for the last hand-out to settle first. Nothing here
//! talks to a guest.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::vmm::{StandbyVm, VmmError};

use super::admission::{Admission, Reservation};
use super::error::{BootError, SandboxError};
use super::launcher::Launcher;
use super::template::Lease;

/// Standby VMMs starting at once over all packs.
const MAX_STARTS: usize = 1;
/// Wait after a failed start before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often a filler re-checks its standbys (VMM alive, template current).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// A VMM process started ahead of a restore, in its own sandbox directory.
pub(super) struct Standby {
    pub id: String,
    pub dir: PathBuf,
    pub vm: Box<dyn StandbyVm>,
    /// The template it was started for, kept for its restore.
    pub lease: Lease,
    /// A sandbox slot with no guest memory until hand-out.
    pub room: Reservation,
}

impl Standby {
    /// Stops the VMM and removes its directory.
    pub async fn discard(self) {
        self.vm.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
struct Pack {
    ready: VecDeque<Standby>,
    /// Starts in flight.
    starting: usize,
}

/// What a filler holds while it starts one standby.
struct StartTurn {
    room: Reservation,
    _boot: super::admission::BootPermit,
    _start: tokio::sync::OwnedSemaphorePermit,
}

/// The standby VMMs of all packs.
pub(super) struct Standbys {
    per_pack: usize,
    packs: Mutex<HashMap<String, Pack>>,
    wake: HashMap<String, Notify>,
    admission: Arc<Admission>,
    starts: Arc<Semaphore>,
    /// The last hand-out of any pack.
    handed_out_at: Mutex<Option<Instant>>,
    /// How long a start waits after a hand-out.
    settle: Duration,
}

impl Standbys {
    pub fn new(
        packs: &[String],
        per_pack: usize,
        settle: Duration,
        admission: Arc<Admission>,
    ) -> Self {
        Standbys {
            per_pack,
            packs: Mutex::new(packs.iter().map(|p| (p.clone(), Pack::default())).collect()),
            wake: packs.iter().map(|p| (p.clone(), Notify::new())).collect(),
            admission,
            starts: Arc::new(Semaphore::new(MAX_STARTS)),
            handed_out_at: Mutex::new(None),
            settle,
        }
    }

    pub fn enabled(&self) -> bool {
        self.per_pack > 0
    }

    /// Takes a ready standby of `pack` whose VMM runs and whose template
    /// `is_current`; wakes the filler. Those it passes over (VMM ended,
    /// template changed) come back apart, to be discarded.
    pub fn take(
        &self,
        pack: &str,
        is_current: impl Fn(&Lease) -> bool,
    ) -> (Option<Standby>, Vec<Standby>) {
        let mut unusable = Vec::new();
        let taken = {
            let mut packs = self.packs.lock();
            let mut taken = None;
            if let Some(p) = packs.get_mut(pack) {
                while let Some(standby) = p.ready.pop_front() {
                    if standby.vm.has_exited() || !is_current(&standby.lease) {
                        unusable.push(standby);
                    } else {
                        taken = Some(standby);
                        break;
                    }
                }
            }
            taken
        };
        if taken.is_some() {
            *self.handed_out_at.lock() = Some(Instant::now());
        }
        self.wake_filler(pack);
        (taken, unusable)
    }

    /// Gives back a standby a create took but could not use (its memory
    /// was refused), first in line.
    pub fn put_back(&self, pack: &str, standby: Standby) {
        if let Some(p) = self.packs.lock().get_mut(pack) {
            p.ready.push_front(standby);
        }
    }

    /// Takes a ready standby of whichever pack has the most, to make room
    /// for a sandbox; wakes that pack's filler.
    pub fn take_any(&self) -> Option<Standby> {
        let (pack, standby) = {
            let mut packs = self.packs.lock();
            let (pack, p) = packs
                .iter_mut()
                .filter(|(_, p)| !p.ready.is_empty())
                .max_by_key(|(_, p)| p.ready.len())?;
            (pack.clone(), p.ready.pop_front()?)
        };
        self.wake_filler(&pack);
        Some(standby)
    }

    /// Ready standbys of `pack` (dead ones included until their filler
    /// notices, within a second).
    pub fn ready(&self, pack: &str) -> usize {
        self.packs.lock().get(pack).map_or(0, |p| p.ready.len())
    }

    /// Wakes the filler of `pack` (a template of it was built).
    pub fn wake_filler(&self, pack: &str) {
        if let Some(wake) = self.wake.get(pack) {
            wake.notify_one();
        }
    }

    /// Removes every ready standby (at shutdown).
    pub fn drain(&self) -> Vec<Standby> {
        let mut packs = self.packs.lock();
        packs.values_mut().flat_map(|p| p.ready.drain(..)).collect()
    }

    /// Removes the ready standbys of `pack` that are of no use any more.
    fn prune(&self, pack: &str, is_current: impl Fn(&Lease) -> bool) -> Vec<Standby> {
        let mut packs = self.packs.lock();
        let Some(p) = packs.get_mut(pack) else {
            return Vec::new();
        };
        let (keep, gone): (Vec<_>, Vec<_>) = p
            .ready
            .drain(..)
            .partition(|s| !s.vm.has_exited() && is_current(&s.lease));
        p.ready = keep.into();
        gone
    }

    fn below_target(&self, pack: &str) -> bool {
        self.packs
            .lock()
            .get(pack)
            .is_some_and(|p| p.ready.len() + p.starting < self.per_pack)
    }

    fn settle_left(&self) -> Option<Duration> {
        let at = (*self.handed_out_at.lock())?;
        let left = (at + self.settle).saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// A slot, a boot turn and a start turn for one more standby of
    /// `pack`, or nothing when any of them is not free now.
    fn reserve(&self, pack: &str) -> Option<StartTurn> {
        {
            let mut packs = self.packs.lock();
            let p = packs.get_mut(pack)?;
            if p.ready.len() + p.starting >= self.per_pack {
                return None;
            }
            p.starting += 1;
        }
        let start = self.starts.clone().try_acquire_owned().ok();
        let room = self.admission.reserve(0).ok();
        let boot = self.admission.try_boot_turn();
        match (start, room, boot) {
            (Some(start), Some(room), Some(boot)) => Some(StartTurn {
                room,
                _boot: boot,
                _start: start,
            }),
            _ => {
                self.settle_start(pack, None);
                None
            }
        }
    }

    /// Ends a start, adding the standby if it came up.
    fn settle_start(&self, pack: &str, standby: Option<Standby>) {
        let mut packs = self.packs.lock();
        if let Some(p) = packs.get_mut(pack) {
            p.starting = p.starting.saturating_sub(1);
            p.ready.extend(standby);
        }
    }
}

/// Keeps `--standby-vmms` standbys of `pack` ready until `stop` is
/// cancelled, replacing those whose VMM ended or whose template changed.
pub(super) async fn keep_ready(
    launcher: Arc<Launcher>,
    standbys: Arc<Standbys>,
    pack: String,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let gone = standbys.prune(&pack, |lease| launcher.template_is_current(&pack, lease));
        for standby in gone {
            tracing::debug!(pack = %pack, sandbox = %standby.id, "standby VMM discarded: its VMM ended or its template changed");
            standby.discard().await;
        }
        if standbys.below_target(&pack) && launcher.template_for(&pack).is_some() {
            if let Some(left) = standbys.settle_left() {
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    () = stop.cancelled() => return,
                }
            }
            if let Some(turn) = standbys.reserve(&pack) {
                // Not cut short by `stop`: a start is bounded by the boot
                // timeout, and what it made is discarded below.
                let started = start(&launcher, &pack, turn.room).await;
                match started {
                    Ok(standby) if stop.is_cancelled() => {
                        standbys.settle_start(&pack, None);
                        standby.discard().await;
                        return;
                    }
                    Ok(standby) => {
                        tracing::debug!(pack = %pack, sandbox = %standby.id, pid = ?standby.vm.pid(), "standby VMM ready");
                        standbys.settle_start(&pack, Some(standby));
                    }
                    Err(e) => {
                        standbys.settle_start(&pack, None);
                        if stop.is_cancelled() {
                            return;
                        }
                        if matches!(
                            &e,
                            SandboxError::Boot(BootError::Vmm(VmmError::Unsupported { .. }))
                        ) {
                            tracing::warn!(pack = %pack, error = %crate::error_chain::render(&e), "--standby-vmms has no effect with this backend");
                            return;
                        }
                        tracing::warn!(pack = %pack, error = %crate::error_chain::render(&e), "starting a standby VMM failed; retrying later");
                        tokio::select! {
                            () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
                continue;
            }
        }
        let wake = async {
            if let Some(notify) = standbys.wake.get(&pack) {
                notify.notified().await;
            }
        };
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(RECHECK_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Starts one standby of `pack` for its current template, in a fresh
/// sandbox directory (removed again when the start fails).
async fn start(
    launcher: &Launcher,
    pack: &str,
    room: Reservation,
) -> Result<Standby, SandboxError> {
    let artefact = launcher.pack(pack)?;
    let lease = launcher
        .template_lease(pack)
        .ok_or(SandboxError::Boot(BootError::NoTemplate))?;
    let (id, dir) = launcher.new_sandbox_dir()?;
    let spec = launcher.boot_spec(&id, &dir, artefact);
    match launcher.backend.prepare_restore(&spec, lease.files()).await {
        Ok(vm) => Ok(Standby {
            id,
            dir,
            vm,
            lease,
            room,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(BootError::Vmm(e).into())
        }
    }
}
