//! One sandbox's processes: the running ones under the operator's limit,
//! and the ended ones for a while after (their exit and output can still
//! be read). Ended records are forgotten [`RETAIN`] after they ended, or
//! sooner when more than [`KEEP_ENDED`] have ended or their logs together
//! hold more than [`KEEP_ENDED_BYTES`] (oldest first); forgetting happens
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
/// The most memory the logs of one sandbox's ended records hold together:
/// a client that starts many short, loud processes cannot make the daemon
/// keep `KEEP_ENDED` full logs.
pub const KEEP_ENDED_BYTES: usize = 64 * 1024 * 1024;

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
/// ones beyond [`KEEP_ENDED`] or [`KEEP_ENDED_BYTES`].
fn prune(processes: &mut Vec<Arc<Process>>, now: Instant) {
    processes.retain(
        |p| !matches!(p.ended_at(), Some(ended) if now.saturating_duration_since(ended) >= RETAIN),
    );
    // (when it ended, its place in start order, pid, log memory)
    let mut ended: Vec<(Instant, usize, u32, usize)> = processes
        .iter()
        .enumerate()
        .filter_map(|(at, p)| p.ended_at().map(|end| (end, at, p.pid, p.held_bytes())))
        .collect();
    // Newest first: keep while both bounds hold, forget the rest.
    ended.sort_by_key(|e| std::cmp::Reverse((e.0, e.1)));
    let mut held = 0usize;
    let mut forget = Vec::new();
    for (kept, (_, _, pid, bytes)) in ended.into_iter().enumerate() {
        held = held.saturating_add(bytes);
        if kept >= KEEP_ENDED || held > KEEP_ENDED_BYTES {
            forget.push(pid);
        }
    }
    if !forget.is_empty() {
        processes.retain(|p| p.is_running() || !forget.contains(&p.pid));
    }
}

#[cfg(test)]
pub(super) fn prune_at(table: &ProcessTable, now: Instant) {
    prune(&mut table.inner.lock().processes, now);
}
