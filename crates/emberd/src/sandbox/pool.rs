//! Warm pools: booted sandboxes kept ready per pack.
//!
//! Each pack has a queue of VMs that went through the launcher's whole boot
//! path (identity included) and one background filler that keeps the queue
//! at `pool_size`. The sum over all packs never holds more guest memory
//! than `pool_memory_mib`: a filler reserves its slot before it boots. A
//! pooled VM also holds its room under the daemon's admission limits, taken
//! before its boot (a filler that finds no room boots nothing) and handed
//! over with the VM; a filler boots only when a boot turn is free at once,
//! so creates never queue behind it. A hand-out wakes the filler. Pools
//! know nothing of the manager's registry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, BootPermit, Reservation};
use super::launcher::{Booted, Launcher};
use super::ManagerConfig;

/// Wait after a failed pool boot before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often a filler re-checks its pool and the ready VMs' health.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a ready VM gets to answer the filler's `Health`.
const HEALTH_PROBE_BOUND: Duration = Duration::from_secs(1);

/// A ready VM and when its agent last answered `Health`.
pub(super) struct Pooled {
    pub booted: Booted,
    /// Its room under the admission limits, handed over with it.
    pub reservation: Reservation,
    healthy_at: Arc<Mutex<Option<Instant>>>,
}

impl Pooled {
    /// True when the agent answered `Health` within `fresh`.
    pub fn answered_within(&self, fresh: Duration) -> bool {
        self.healthy_at
            .lock()
            .is_some_and(|at| at.elapsed() < fresh)
    }
}

#[derive(Default)]
struct State {
    ready: HashMap<String, VecDeque<Pooled>>,
    /// Boots in flight, per pack.
    booting: HashMap<String, usize>,
}

/// The pools of all packs.
pub(super) struct Pools {
    state: Mutex<State>,
    wake: HashMap<String, Notify>,
    size: usize,
    /// How many VMs all pools together may hold.
    capacity: usize,
    admission: Arc<Admission>,
    /// Guest memory of one pooled VM.
    memory_mib: u32,
}

impl Pools {
    pub fn new(packs: &[String], config: &ManagerConfig, admission: Arc<Admission>) -> Self {
        let capacity =
            usize::try_from(config.pool_memory_mib / u64::from(config.memory_mib.max(1)))
                .unwrap_or(usize::MAX);
        Pools {
            state: Mutex::new(State::default()),
            wake: packs.iter().map(|p| (p.clone(), Notify::new())).collect(),
            size: config.pool_size,
            capacity,
            admission,
            memory_mib: config.memory_mib,
        }
    }

    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// Takes a ready VM of `pack`, if there is one, and wakes the filler.
    pub fn take(&self, pack: &str) -> Option<Pooled> {
        let pooled = self
            .state
            .lock()
            .ready
            .get_mut(pack)
            .and_then(VecDeque::pop_front);
        if let Some(wake) = self.wake.get(pack) {
            wake.notify_one();
        }
        pooled
    }

    /// Takes a ready VM of whichever pack has the most, to make room for a
    /// sandbox; wakes that pack's filler.
    pub fn take_any(&self) -> Option<Pooled> {
        let (pack, pooled) = {
            let mut state = self.state.lock();
            let (pack, queue) = state
                .ready
                .iter_mut()
                .filter(|(_, queue)| !queue.is_empty())
                .max_by_key(|(_, queue)| queue.len())?;
            (pack.clone(), queue.pop_front()?)
        };
        if let Some(wake) = self.wake.get(&pack) {
            wake.notify_one();
        }
        Some(pooled)
    }

    /// Reserves room for one more VM of `pack`; false when the pool is full
    /// or the memory cap is reached.
    fn reserve(&self, pack: &str) -> bool {
        let mut state = self.state.lock();
        let ready = state.ready.get(pack).map_or(0, VecDeque::len);
        let booting = state.booting.get(pack).copied().unwrap_or(0);
        let total: usize = state.ready.values().map(VecDeque::len).sum::<usize>()
            + state.booting.values().sum::<usize>();
        if ready + booting >= self.size || total >= self.capacity {
            return false;
        }
        *state.booting.entry(pack.to_owned()).or_default() += 1;
        true
    }

    /// A pool slot for one more VM of `pack`, its room under the admission
    /// limits and a boot turn, or nothing when any of them is not free now.
    fn reserve_to_boot(&self, pack: &str) -> Option<(Reservation, BootPermit)> {
        if !self.reserve(pack) {
            return None;
        }
        let room = self.admission.reserve(self.memory_mib).ok();
        match room.zip(self.admission.try_boot_turn()) {
            Some(both) => Some(both),
            None => {
                self.settle(pack, None);
                None
            }
        }
    }

    /// Ends a reservation, adding the VM if the boot worked. The VM has
    /// just answered its identity push, which counts as `Health`.
    fn settle(&self, pack: &str, booted: Option<(Booted, Reservation)>) {
        let mut state = self.state.lock();
        if let Some(n) = state.booting.get_mut(pack) {
            *n = n.saturating_sub(1);
        }
        if let Some((booted, reservation)) = booted {
            state
                .ready
                .entry(pack.to_owned())
                .or_default()
                .push_back(Pooled {
                    booted,
                    reservation,
                    healthy_at: Arc::new(Mutex::new(Some(Instant::now()))),
                });
        }
    }

    /// Ready VMs per pack.
    pub fn ready_counts(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock();
        self.wake
            .keys()
            .map(|pack| (pack.clone(), state.ready.get(pack).map_or(0, VecDeque::len)))
            .collect()
    }

    /// Asks every ready VM of `pack` for `Health` and records who answered.
    async fn check_health(&self, pack: &str) {
        let probes: Vec<_> = {
            let state = self.state.lock();
            state
                .ready
                .get(pack)
                .map(|q| {
                    q.iter()
                        .map(|p| (p.booted.guest.agent.clone(), p.healthy_at.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (agent, healthy_at) in probes {
            let ok = tokio::time::timeout(HEALTH_PROBE_BOUND, agent.healthy())
                .await
                .unwrap_or(false);
            *healthy_at.lock() = ok.then(Instant::now);
        }
    }

    /// Removes every ready VM (at shutdown).
    pub fn drain(&self) -> Vec<Booted> {
        let mut state = self.state.lock();
        state
            .ready
            .values_mut()
            .flat_map(|q| q.drain(..))
            .map(|p| p.booted)
            .collect()
    }
}

/// Keeps the pool of `pack` full until `stop` is cancelled.
pub(super) async fn fill_forever(
    launcher: Arc<Launcher>,
    pools: Arc<Pools>,
    pack: String,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if let Some((reservation, turn)) = pools.reserve_to_boot(&pack) {
            let booted = launcher.boot_in_new_dir(&pack, &stop).await;
            drop(turn);
            match booted {
                Ok(booted) if stop.is_cancelled() => {
                    pools.settle(&pack, None);
                    booted.discard().await;
                    return;
                }
                Ok(booted) => {
                    tracing::debug!(pack = %pack, sandbox = %booted.id, "pool refilled");
                    pools.settle(&pack, Some((booted, reservation)));
                }
                Err(_) if stop.is_cancelled() => {
                    pools.settle(&pack, None);
                    return;
                }
                Err(e) => {
                    pools.settle(&pack, None);
                    tracing::warn!(pack = %pack, error = %crate::error_chain::render(&e), "pool boot failed; retrying later");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            continue;
        }
        let wake = async {
            if let Some(notify) = pools.wake.get(&pack) {
                notify.notified().await;
            }
        };
        // Re-check now and then, so a missed wake-up costs little, and keep
        // the ready VMs' health fresh for hand-out.
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(RECHECK_EVERY) => pools.check_health(&pack).await,
            () = stop.cancelled() => return,
        }
    }
}
