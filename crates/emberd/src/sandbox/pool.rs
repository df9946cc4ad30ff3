//! Warm pools: booted sandboxes kept ready per pack.
//!
//! Each pack has a queue of booted VMs whose agents have answered `Hello`
//! and one background filler that keeps the queue at `pool_size`. The sum
//! over all packs never holds more guest memory than `pool_memory_mib`:
//! a filler reserves its slot before it boots. A hand-out wakes the filler.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::{discard, Booted, Manager, ManagerConfig};

/// Wait after a failed pool boot before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    ready: HashMap<String, VecDeque<Booted>>,
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
}

impl Pools {
    pub(super) fn new(packs: &[String], config: &ManagerConfig) -> Self {
        let capacity =
            usize::try_from(config.pool_memory_mib / u64::from(config.memory_mib.max(1)))
                .unwrap_or(usize::MAX);
        Pools {
            state: Mutex::new(State::default()),
            wake: packs.iter().map(|p| (p.clone(), Notify::new())).collect(),
            size: config.pool_size,
            capacity,
        }
    }

    /// Takes a ready VM of `pack`, if there is one, and wakes the filler.
    pub(super) fn take(&self, pack: &str) -> Option<Booted> {
        let booted = self
            .state
            .lock()
            .expect("pool lock")
            .ready
            .get_mut(pack)
            .and_then(VecDeque::pop_front);
        if let Some(wake) = self.wake.get(pack) {
            wake.notify_one();
        }
        booted
    }

    /// Reserves room for one more VM of `pack`; false when the pool is full
    /// or the memory cap is reached.
    fn reserve(&self, pack: &str) -> bool {
        let mut state = self.state.lock().expect("pool lock");
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

    /// Ends a reservation, adding the VM if the boot worked.
    fn settle(&self, pack: &str, booted: Option<Booted>) {
        let mut state = self.state.lock().expect("pool lock");
        if let Some(n) = state.booting.get_mut(pack) {
            *n = n.saturating_sub(1);
        }
        if let Some(booted) = booted {
            state
                .ready
                .entry(pack.to_owned())
                .or_default()
                .push_back(booted);
        }
    }

    /// Ready VMs per pack.
    pub(super) fn ready_counts(&self) -> std::collections::BTreeMap<String, usize> {
        let state = self.state.lock().expect("pool lock");
        self.wake
            .keys()
            .map(|pack| (pack.clone(), state.ready.get(pack).map_or(0, VecDeque::len)))
            .collect()
    }

    /// Asks every ready VM of `pack` for `Health` and records who answered.
    pub(super) async fn check_health(&self, pack: &str) {
        let probes: Vec<_> = {
            let state = self.state.lock().expect("pool lock");
            state
                .ready
                .get(pack)
                .map(|q| {
                    q.iter()
                        .map(|b| (b.agent.clone(), b.healthy_at.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (agent, healthy_at) in probes {
            let ok = tokio::time::timeout(Duration::from_secs(1), agent.healthy())
                .await
                .unwrap_or(false);
            let mut at = healthy_at.lock().expect("health lock");
            *at = if ok {
                Some(std::time::Instant::now())
            } else {
                None
            };
        }
    }

    /// Removes every ready VM (at shutdown).
    pub(super) fn drain(&self) -> Vec<Booted> {
        let mut state = self.state.lock().expect("pool lock");
        state.ready.values_mut().flat_map(|q| q.drain(..)).collect()
    }
}

/// Keeps the pool of `pack` full until the manager shuts down or goes away.
pub(super) async fn fill_forever(manager: Weak<Manager>, pack: String) {
    loop {
        let Some(strong) = manager.upgrade() else {
            return;
        };
        if strong.shutting_down.is_cancelled() {
            return;
        }
        if strong.pools.reserve(&pack) {
            match strong.boot_for_pool(&pack).await {
                Ok(booted) if strong.shutting_down.is_cancelled() => {
                    strong.pools.settle(&pack, None);
                    discard(booted).await;
                    return;
                }
                Ok(booted) => {
                    tracing::debug!(pack = %pack, sandbox = %booted.id, "pool refilled");
                    strong.pools.settle(&pack, Some(booted));
                }
                Err(e) => {
                    strong.pools.settle(&pack, None);
                    tracing::warn!(pack = %pack, error = %e, "pool boot failed; retrying later");
                    let stop = strong.shutting_down.clone();
                    drop(strong);
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            continue;
        }
        let stop = strong.shutting_down.clone();
        let wake = async {
            if let Some(notify) = strong.pools.wake.get(&pack) {
                notify.notified().await;
            }
        };
        // Re-check now and then, so a missed wake-up costs little, and keep
        // the ready VMs' health fresh for hand-out.
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                strong.pools.check_health(&pack).await;
            }
            () = stop.cancelled() => return,
        }
    }
}
