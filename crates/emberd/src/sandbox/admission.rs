//! Admission control: how many sandboxes and how much guest memory the
//! daemon holds, and how many VMs boot at once.
//!
//! Sandboxes (booting, running, exited) and pooled VMs hold a
//! [`Reservation`], taken before any VM work starts and released when it is
//! dropped: on every failure path, and once a deleted sandbox's VM has
//! stopped. Boots take a [`BootPermit`] for the time they run. Nothing here
//! touches a VM or waits on anything but the boot semaphore.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::SandboxError;
use super::limits::Limits;

/// When a client refused for lack of room may try again: room frees up
/// when a sandbox is deleted or reaped, which the daemon cannot foresee.
const RETRY_AFTER_FULL: Duration = Duration::from_secs(5);
/// When a client refused for lack of a boot turn may try again.
const RETRY_AFTER_BOOTS: Duration = Duration::from_secs(2);

/// A turn to boot a VM; the next waiter boots when it is dropped.
pub(super) type BootPermit = OwnedSemaphorePermit;

#[derive(Debug, Default)]
struct Held {
    sandboxes: usize,
    memory_mib: u64,
}

/// The daemon's admission limits and what is held against them.
#[derive(Debug)]
pub(super) struct Admission {
    held: Mutex<Held>,
    max_sandboxes: usize,
    max_memory_mib: u64,
    boots: Arc<Semaphore>,
    max_boots: usize,
    /// How long a create waits for a boot turn before it is refused.
    boot_wait: Duration,
}

impl Admission {
    pub fn new(limits: &Limits, boot_wait: Duration) -> Arc<Self> {
        let max_boots = limits.max_concurrent_boots.max(1);
        Arc::new(Admission {
            held: Mutex::new(Held::default()),
            max_sandboxes: limits.max_sandboxes,
            max_memory_mib: limits.max_guest_memory_mib,
            boots: Arc::new(Semaphore::new(max_boots)),
            max_boots,
            boot_wait,
        })
    }

    /// Room for one more sandbox of `memory_mib`, or a refusal saying which
    /// limit is reached.
    pub fn reserve(self: &Arc<Self>, memory_mib: u32) -> Result<Reservation, SandboxError> {
        let memory_mib = u64::from(memory_mib);
        let mut held = self.held.lock();
        if held.sandboxes >= self.max_sandboxes {
            return Err(full(format!(
                "the daemon holds its maximum of {} sandboxes (--max-sandboxes)",
                self.max_sandboxes
            )));
        }
        self.check_memory(held.memory_mib, memory_mib)?;
        held.sandboxes += 1;
        held.memory_mib += memory_mib;
        Ok(Reservation {
            admission: self.clone(),
            memory_mib,
        })
    }

    fn check_memory(&self, held: u64, asked: u64) -> Result<(), SandboxError> {
        if held.saturating_add(asked) > self.max_memory_mib {
            return Err(full(format!(
                "{held} of {} MiB of guest memory are held and {asked} MiB more were asked for (--max-guest-memory-mib)",
                self.max_memory_mib
            )));
        }
        Ok(())
    }

    /// A turn to boot, waiting at most the boot wait for one.
    pub async fn boot_permit(&self) -> Result<BootPermit, SandboxError> {
        match tokio::time::timeout(self.boot_wait, self.boot_turn()).await {
            Ok(permit) => Ok(permit),
            Err(_) => Err(SandboxError::AtCapacity {
                what: format!(
                    "{} VMs are booting (--max-concurrent-boots) and none finished within {:?}",
                    self.max_boots, self.boot_wait
                ),
                retry_after: RETRY_AFTER_BOOTS,
            }),
        }
    }

    /// A turn to boot, however long it takes.
    pub async fn boot_turn(&self) -> BootPermit {
        self.boots
            .clone()
            .acquire_owned()
            .await
            .expect("the boot semaphore is never closed")
    }

    /// A turn to boot if one is free now (for background boots, which must
    /// not queue ahead of creates).
    pub fn try_boot_turn(&self) -> Option<BootPermit> {
        self.boots.clone().try_acquire_owned().ok()
    }

    /// Sandboxes and MiB of guest memory held now.
    pub fn held(&self) -> (usize, u64) {
        let held = self.held.lock();
        (held.sandboxes, held.memory_mib)
    }
}

fn full(what: String) -> SandboxError {
    SandboxError::AtCapacity {
        what,
        retry_after: RETRY_AFTER_FULL,
    }
}

/// One sandbox's room: its slot and its guest memory, given back on drop.
#[derive(Debug)]
pub(super) struct Reservation {
    admission: Arc<Admission>,
    memory_mib: u64,
}

impl Reservation {
    /// Holds `memory_mib` instead, keeping the slot; unchanged when the
    /// memory limit does not allow it.
    pub fn resize(&mut self, memory_mib: u32) -> Result<(), SandboxError> {
        let memory_mib = u64::from(memory_mib);
        let mut held = self.admission.held.lock();
        let others = held.memory_mib - self.memory_mib;
        self.admission.check_memory(others, memory_mib)?;
        held.memory_mib = others + memory_mib;
        self.memory_mib = memory_mib;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock();
        held.sandboxes -= 1;
        held.memory_mib -= self.memory_mib;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(sandboxes: usize, memory_mib: u64, boots: usize) -> Arc<Admission> {
        Admission::new(
            &Limits {
                max_sandboxes: sandboxes,
                max_guest_memory_mib: memory_mib,
                max_concurrent_boots: boots,
                ..Limits::default()
            },
            Duration::from_millis(20),
        )
    }

    #[test]
    fn reservations_count_sandboxes_and_memory_until_dropped() {
        let admission = admission(2, 1000, 1);
        let first = admission.reserve(400).unwrap();
        let second = admission.reserve(400).unwrap();
        assert_eq!(admission.held(), (2, 800));
        let error = admission.reserve(100).unwrap_err();
        assert!(
            error.to_string().contains("maximum of 2 sandboxes"),
            "{error}"
        );
        drop(first);
        let error = admission.reserve(700).unwrap_err();
        assert!(error.to_string().contains("guest memory"), "{error}");
        assert_eq!(admission.held(), (1, 400));
        let third = admission.reserve(600).unwrap();
        drop((second, third));
        assert_eq!(admission.held(), (0, 0));
    }

    #[test]
    fn a_resize_keeps_the_slot_and_respects_the_memory_limit() {
        let admission = admission(4, 1000, 1);
        let _other = admission.reserve(500).unwrap();
        let mut mine = admission.reserve(256).unwrap();
        mine.resize(500).unwrap();
        assert_eq!(admission.held(), (2, 1000));
        assert!(mine.resize(501).is_err());
        assert_eq!(admission.held(), (2, 1000));
        mine.resize(100).unwrap();
        assert_eq!(admission.held(), (2, 600));
    }

    #[tokio::test]
    async fn boots_beyond_the_bound_wait_then_are_refused() {
        let admission = admission(4, 1000, 1);
        let turn = admission.boot_permit().await.unwrap();
        let refused = admission.boot_permit().await.unwrap_err();
        assert!(
            matches!(refused, SandboxError::AtCapacity { .. }),
            "{refused}"
        );
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.boot_turn().await }
        });
        drop(turn);
        drop(waiting.await.unwrap());
    }
}
