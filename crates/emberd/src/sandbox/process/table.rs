//! One sandbox's processes: the running ones under the operator's limit,
//! and the ended ones for a while after (their exit and output can still
//! be read). Ended records are forgotten [`RETAIN`] after they ended, or
//! sooner when more than [`KEEP_ENDED`] have ended; forgetting happens
//! when the table is next used, which no caller can tell apart from a
//! timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::record::Process;
use crate::sandbox::SandboxError;

/// How long an ended process's record is kept.
pub const RETAIN: Duration = Duration::from_secs(10 * 60);
/// The most ended records kept per sandbox.
pub const KEEP_ENDED: usize = 100;

#[derive(Default)]
struct Inner {
    /// In start order.
    processes: Vec<Arc<Process>>,
    /// Starts between their reservation and their record.
    starting: usize,
}

#[derive(Default)]
pub(crate) struct ProcessTable {
    inner: Mutex<Inner>,
}

/// A start's place under the running limit, given back on drop.
pub(crate) struct Slot<'a> {
    table: &'a ProcessTable,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.table.inner.lock().starting -= 1;
    }
}

impl ProcessTable {
    /// Room for one more running process, or why there is none.
    pub fn reserve(&self, max_running: usize) -> Result<Slot<'_>, SandboxError> {
        let mut inner = self.inner.lock();
        let running = inner.processes.iter().filter(|p| p.is_running()).count();
        if running + inner.starting >= max_running {
            return Err(SandboxError::TooManyProcesses { max: max_running });
        }
        inner.starting += 1;
        Ok(Slot { table: self })
    }

    /// Adds a started process; an ended record with the same (reused) pid
    /// is forgotten. A pid a running process already has is refused: the
    /// guest said something impossible.
    pub fn insert(&self, process: Arc<Process>) -> Result<(), SandboxError> {
        let mut inner = self.inner.lock();
        prune(&mut inner.processes, Instant::now());
        if inner
            .processes
            .iter()
            .any(|p| p.pid == process.pid && p.is_running())
        {
            return Err(SandboxError::ProcessLaunch(format!(
                "the guest reported pid {}, which a running process already has",
                process.pid
            )));
        }
        inner.processes.retain(|p| p.pid != process.pid);
        inner.processes.push(process);
        Ok(())
    }

    pub fn get(&self, pid: u32) -> Result<Arc<Process>, SandboxError> {
        let mut inner = self.inner.lock();
        prune(&mut inner.processes, Instant::now());
        inner
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .cloned()
            .ok_or(SandboxError::ProcessNotFound(pid))
    }

    /// Every process still known, oldest first.
    pub fn list(&self) -> Vec<Arc<Process>> {
        let mut inner = self.inner.lock();
        prune(&mut inner.processes, Instant::now());
        inner.processes.clone()
    }
}

/// Forgets ended records past [`RETAIN`] at `now`, then the oldest ended
/// ones beyond [`KEEP_ENDED`].
fn prune(processes: &mut Vec<Arc<Process>>, now: Instant) {
    processes.retain(
        |p| !matches!(p.ended_at(), Some(ended) if now.saturating_duration_since(ended) >= RETAIN),
    );
    let mut ended: Vec<(Instant, u32)> = processes
        .iter()
        .filter_map(|p| p.ended_at().map(|at| (at, p.pid)))
        .collect();
    if ended.len() > KEEP_ENDED {
        ended.sort();
        let forget: Vec<u32> = ended[..ended.len() - KEEP_ENDED]
            .iter()
            .map(|(_, pid)| *pid)
            .collect();
        processes.retain(|p| p.is_running() || !forget.contains(&p.pid));
    }
}

#[cfg(test)]
pub(super) fn prune_at(table: &ProcessTable, now: Instant) {
    prune(&mut table.inner.lock().processes, now);
}
