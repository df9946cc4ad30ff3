//! Warm pools: booted, warmed-up sandboxes kept ready per pack.
//!
//! Each pack has a queue of VMs that went through the launcher's whole boot
//! path (identity included) and the pack's warm-up exec, and one background
//! filler (`pool_filler.rs`) that keeps the queue at the pack's target. The
//! sum over all packs never holds more guest memory than `pool_memory_mib`:
//! a filler reserves its slot before it boots. A pooled VM also holds its
//! room under the daemon's admission limits, taken before its boot (a
//! filler that finds no room boots nothing) and handed over with the VM; a
//! filler boots only when a boot turn and a refill turn are free at once,
//! so creates never queue behind it. A hand-out wakes the filler.
//!
//! The target adapts to demand (see `docs/snapshots-and-pools.md`): it
//! starts at `pool_size`, grows by one (up to the policy's maximum) each
//! time a create finds the pool empty, and shrinks by one towards
//! `pool_size` each `shrink_after` without a hand-out or a miss, the VM
//! over the target being stopped. Pools know nothing of the manager's
//! registry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::admission::{Admission, BootPermit, Reservation};
use super::launcher::Booted;
use super::ManagerConfig;

/// How long a ready VM gets to answer the filler's `Health`.
const HEALTH_PROBE_BOUND: Duration = Duration::from_secs(1);

/// How pools refill and how their size follows demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Most ready VMs per pack when creates keep finding the pool empty;
    /// below `pool_size` (0 included) means `pool_size`: no growth.
    pub max_size: usize,
    /// Pool boots (restore or boot, then warm-up) in flight at once over
    /// all packs; 0 means no bound beyond the boot turns.
    pub max_refills: usize,
    /// How long a refill waits after a hand-out, so that the sandbox just
    /// handed out runs its first exec without a boot beside it.
    pub refill_settle: Duration,
    /// A pack's target shrinks by one after this long without demand.
    pub shrink_after: Duration,
}

impl Default for PoolPolicy {
    /// A fixed-size pool, refilled at once with no bound of its own.
    fn default() -> Self {
        PoolPolicy {
            max_size: 0,
            max_refills: 0,
            refill_settle: Duration::ZERO,
            shrink_after: Duration::from_secs(60),
        }
    }
}

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

/// One pack's pool.
struct Pack {
    ready: VecDeque<Pooled>,
    /// Boots in flight.
    booting: usize,
    /// How many VMs the filler keeps ready now.
    target: usize,
    /// The last hand-out or miss (or shrink step).
    demand_at: Instant,
}

#[derive(Default)]
struct State {
    packs: HashMap<String, Pack>,
    /// The last hand-out of any pack.
    handed_out_at: Option<Instant>,
}

/// What a filler holds while it boots one VM for its pool.
pub(super) struct RefillTurn {
    pub reservation: Reservation,
    /// Given back once the VM is booted (its warm-up needs none).
    pub boot: BootPermit,
    /// Held until the VM is ready or discarded.
    pub refill: Option<OwnedSemaphorePermit>,
}

/// The pools of all packs.
pub(super) struct Pools {
    state: Mutex<State>,
    pub(super) wake: HashMap<String, Notify>,
    size: usize,
    max_size: usize,
    /// How many VMs all pools together may hold.
    capacity: usize,
    admission: Arc<Admission>,
    /// Guest memory of one pooled VM.
    memory_mib: u32,
    refills: Option<Arc<Semaphore>>,
    pub(super) policy: PoolPolicy,
}

impl Pools {
    pub fn new(packs: &[String], config: &ManagerConfig, admission: Arc<Admission>) -> Self {
        let capacity =
            usize::try_from(config.pool_memory_mib / u64::from(config.memory_mib.max(1)))
                .unwrap_or(usize::MAX);
        let size = config.pool_size;
        let now = Instant::now();
        let state = State {
            packs: packs
                .iter()
                .map(|p| {
                    let pack = Pack {
                        ready: VecDeque::new(),
                        booting: 0,
                        target: size,
                        demand_at: now,
                    };
                    (p.clone(), pack)
                })
                .collect(),
            handed_out_at: None,
        };
        let policy = config.pool.clone();
        Pools {
            state: Mutex::new(state),
            wake: packs.iter().map(|p| (p.clone(), Notify::new())).collect(),
            size,
            max_size: policy.max_size.max(size),
            capacity,
            admission,
            memory_mib: config.memory_mib,
            refills: (policy.max_refills > 0).then(|| Arc::new(Semaphore::new(policy.max_refills))),
            policy,
        }
    }

    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// Takes a ready VM of `pack`, if there is one, and wakes the filler.
    pub fn take(&self, pack: &str) -> Option<Pooled> {
        let pooled = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let taken = state.packs.get_mut(pack).and_then(|p| {
                p.demand_at = now;
                p.ready.pop_front()
            });
            if taken.is_some() {
                state.handed_out_at = Some(now);
            }
            taken
        };
        self.wake_filler(pack);
        pooled
    }

    /// A create of `pack` found no usable VM in the pool: the target grows
    /// by one, up to the policy's maximum.
    pub fn missed(&self, pack: &str) {
        if let Some(p) = self.state.lock().packs.get_mut(pack) {
            p.target = (p.target + 1).min(self.max_size);
            p.demand_at = Instant::now();
        }
        self.wake_filler(pack);
    }

    /// Takes a ready VM of whichever pack has the most, to make room for a
    /// sandbox; wakes that pack's filler.
    pub fn take_any(&self) -> Option<Pooled> {
        let (pack, pooled) = {
            let mut state = self.state.lock();
            let (pack, p) = state
                .packs
                .iter_mut()
                .filter(|(_, p)| !p.ready.is_empty())
                .max_by_key(|(_, p)| p.ready.len())?;
            (pack.clone(), p.ready.pop_front()?)
        };
        self.wake_filler(&pack);
        Some(pooled)
    }

    fn wake_filler(&self, pack: &str) {
        if let Some(wake) = self.wake.get(pack) {
            wake.notify_one();
        }
    }

    /// Wakes every filler (a refill turn came free).
    pub(super) fn wake_all(&self) {
        for wake in self.wake.values() {
            wake.notify_one();
        }
    }

    /// How many VMs each pack's filler keeps ready now.
    pub fn targets(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock();
        state
            .packs
            .iter()
            .map(|(pack, p)| (pack.clone(), p.target))
            .collect()
    }

    /// How long a refill should still wait for the last hand-out to settle.
    pub(super) fn settle_left(&self) -> Option<Duration> {
        let at = self.state.lock().handed_out_at?;
        let left = (at + self.policy.refill_settle).saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// True when `pack` has fewer VMs ready or booting than its target.
    pub(super) fn below_target(&self, pack: &str) -> bool {
        self.state
            .lock()
            .packs
            .get(pack)
            .is_some_and(|p| p.ready.len() + p.booting < p.target)
    }

    /// Reserves room for one more VM of `pack`; false when the pool is at
    /// its target or the memory cap is reached.
    fn reserve(&self, pack: &str) -> bool {
        let mut state = self.state.lock();
        let total: usize = state
            .packs
            .values()
            .map(|p| p.ready.len() + p.booting)
            .sum();
        let Some(p) = state.packs.get_mut(pack) else {
            return false;
        };
        if p.ready.len() + p.booting >= p.target || total >= self.capacity {
            return false;
        }
        p.booting += 1;
        true
    }

    /// A pool slot for one more VM of `pack`, its room under the admission
    /// limits, a boot turn and a refill turn, or nothing when any of them
    /// is not free now.
    pub(super) fn reserve_to_boot(&self, pack: &str) -> Option<RefillTurn> {
        if !self.reserve(pack) {
            return None;
        }
        let refill = match &self.refills {
            Some(refills) => match refills.clone().try_acquire_owned() {
                Ok(permit) => Some(Some(permit)),
                Err(_) => None,
            },
            None => Some(None),
        };
        let room = self.admission.reserve(self.memory_mib).ok();
        let boot = self.admission.try_boot_turn();
        match (refill, room, boot) {
            (Some(refill), Some(reservation), Some(boot)) => Some(RefillTurn {
                reservation,
                boot,
                refill,
            }),
            _ => {
                self.settle(pack, None);
                None
            }
        }
    }

    /// Ends a reservation, adding the VM if its boot and warm-up worked.
    /// The VM has just answered its warm-up, which counts as `Health`.
    pub(super) fn settle(&self, pack: &str, booted: Option<(Booted, Reservation)>) {
        let mut state = self.state.lock();
        let Some(p) = state.packs.get_mut(pack) else {
            return;
        };
        p.booting = p.booting.saturating_sub(1);
        if let Some((booted, reservation)) = booted {
            p.ready.push_back(Pooled {
                booted,
                reservation,
                healthy_at: Arc::new(Mutex::new(Some(Instant::now()))),
            });
        }
    }

    /// One shrink step of `pack` when it saw no demand for the policy's
    /// `shrink_after`: the target goes down by one (never below
    /// `pool_size`), and a ready VM over it is returned, to be stopped.
    pub(super) fn shrink_if_idle(&self, pack: &str) -> Option<Pooled> {
        let mut state = self.state.lock();
        let p = state.packs.get_mut(pack)?;
        if p.target > self.size && p.demand_at.elapsed() >= self.policy.shrink_after {
            p.target -= 1;
            p.demand_at = Instant::now();
            tracing::debug!(pack, target = p.target, "pool shrinks after a quiet spell");
        }
        (p.ready.len() + p.booting > p.target)
            .then(|| p.ready.pop_back())
            .flatten()
    }

    /// Ready VMs per pack.
    pub fn ready_counts(&self) -> BTreeMap<String, usize> {
        let state = self.state.lock();
        self.wake
            .keys()
            .map(|pack| {
                let ready = state.packs.get(pack).map_or(0, |p| p.ready.len());
                (pack.clone(), ready)
            })
            .collect()
    }

    /// Asks every ready VM of `pack` for `Health` and records who answered.
    pub(super) async fn check_health(&self, pack: &str) {
        let probes: Vec<_> = {
            let state = self.state.lock();
            state
                .packs
                .get(pack)
                .map(|p| {
                    p.ready
                        .iter()
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
            .packs
            .values_mut()
            .flat_map(|p| p.ready.drain(..))
            .map(|p| p.booted)
            .collect()
    }
}
