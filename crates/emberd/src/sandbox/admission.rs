//! Admission control: how many sandboxes and how much guest memory the
//! daemon holds, and how many VMs boot at once.
//!
//! Sandboxes (booting, running, exited) and pooled VMs hold a
//! [`Reservation`], taken before any VM work starts and released when it is
//! dropped: on every failure path, and once a deleted sandbox's VM has
//! stopped. Boots take a [`BootPermit`] for the time they run; a create
//! without one waits in a bounded queue while boots keep finishing. Nothing
//! here touches a VM or waits on anything but the boot semaphore.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// Creates that may wait for a boot turn, per turn.
const WAITING_PER_TURN: usize = 4;

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
    /// Creates waiting for a boot turn now.
    waiting: AtomicUsize,
    /// Boot turns given back so far.
    finished: AtomicU64,
    /// A waiting create is refused when no boot finished for this long.
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
            waiting: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
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

    /// A turn to boot. Without a free one, the create joins a queue of
    /// at most [`WAITING_PER_TURN`] per turn and waits as long as boots
    /// keep finishing: it is refused when the queue is full or when no boot
    /// finished within the boot wait.
    pub async fn boot_permit(self: &Arc<Self>) -> Result<BootPermit, SandboxError> {
        if let Some(permit) = self.try_boot_turn() {
            return Ok(permit);
        }
        let max_waiting = self.max_boots * WAITING_PER_TURN;
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let _queued = Queued(&self.waiting);
        if waiting >= max_waiting {
            return Err(busy(format!(
                "{} VMs are booting (--max-concurrent-boots) and {waiting} creates wait for a turn",
                self.max_boots
            )));
        }
        let turn = self.boots.clone().acquire_owned();
        tokio::pin!(turn);
        loop {
            let seen = self.finished.load(Ordering::SeqCst);
            match tokio::time::timeout(self.boot_wait, &mut turn).await {
                Ok(permit) => {
                    return Ok(self.permit(permit.expect("the boot semaphore is never closed")))
                }
                Err(_) if self.finished.load(Ordering::SeqCst) == seen => {
                    return Err(busy(format!(
                        "{} VMs are booting (--max-concurrent-boots) and none finished within {:?}",
                        self.max_boots, self.boot_wait
                    )));
                }
                Err(_) => {}
            }
        }
    }

    /// A turn to boot if one is free now (background boots take only
    /// these, so that they never queue ahead of creates).
    pub fn try_boot_turn(self: &Arc<Self>) -> Option<BootPermit> {
        let permit = self.boots.clone().try_acquire_owned().ok()?;
        Some(self.permit(permit))
    }

    fn permit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> BootPermit {
        BootPermit {
            _permit: permit,
            admission: self.clone(),
        }
    }

    /// Sandboxes and MiB of guest memory held now.
    pub fn held(&self) -> (usize, u64) {
        let held = self.held.lock();
        (held.sandboxes, held.memory_mib)
    }
}

fn busy(what: String) -> SandboxError {
    SandboxError::AtCapacity {
        what,
        retry_after: RETRY_AFTER_BOOTS,
    }
}

/// One create counted as waiting for a boot turn, until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A turn to boot a VM; dropping it lets the next waiter boot.
#[derive(Debug)]
pub(super) struct BootPermit {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
}

impl Drop for BootPermit {
    fn drop(&mut self) {
        self.admission.finished.fetch_add(1, Ordering::SeqCst);
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
    async fn a_waiting_boot_is_refused_when_no_boot_finishes() {
        let admission = admission(4, 1000, 1);
        let turn = admission.boot_permit().await.unwrap();
        let refused = admission.boot_permit().await.unwrap_err();
        assert!(refused.to_string().contains("none finished"), "{refused}");
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.boot_permit().await }
        });
        drop(turn);
        waiting.await.unwrap().unwrap();
    }

    // Each boot finishes within the boot wait, so the last of a queue
    // longer than one wait still gets its turn.
    #[tokio::test]
    async fn a_queue_that_moves_keeps_waiting() {
        const BOOT: Duration = Duration::from_millis(300);
        let limits = Limits {
            max_concurrent_boots: 1,
            ..Limits::default()
        };
        let admission = Admission::new(&limits, Duration::from_millis(500));
        let boots: Vec<_> = (0..=WAITING_PER_TURN)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move {
                    let turn = admission.boot_permit().await?;
                    tokio::time::sleep(BOOT).await;
                    drop(turn);
                    Ok::<_, SandboxError>(())
                })
            })
            .collect();
        for boot in boots {
            boot.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        let limits = Limits {
            max_concurrent_boots: 1,
            ..Limits::default()
        };
        let admission = Admission::new(&limits, Duration::from_secs(600));
        let _turn = admission.boot_permit().await.unwrap();
        let waiters: Vec<_> = (0..WAITING_PER_TURN)
            .map(|_| {
                let admission = admission.clone();
                tokio::spawn(async move { admission.boot_permit().await.map(drop) })
            })
            .collect();
        while admission.waiting.load(Ordering::SeqCst) < WAITING_PER_TURN {
            tokio::task::yield_now().await;
        }
        let refused = admission.boot_permit().await.unwrap_err();
        assert!(refused.to_string().contains("wait for a turn"), "{refused}");
        for waiter in waiters {
            waiter.abort();
        }
    }
}
