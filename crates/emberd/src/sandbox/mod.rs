//! The sandbox manager: every sandbox of the daemon, from create to delete.
//!
//! It owns ids, the lifecycle, the warm pools, the template snapshots and the
//! work dir; it speaks domain types ([`model`]) and knows nothing of HTTP:
//! callers get a [`SandboxError`] and map it themselves. It never talks to a
//! VMM except through the [`VmBackend`](crate::vmm::VmBackend) trait.
//!
//! - [`manager`]: the registry and the public [`Manager`] API;
//! - `record`: one sandbox's state machine (booting → running → exited →
//!   stopping) and what the reaper asks of it;
//! - [`limits`]: per-sandbox sizes and timeouts, checked against the
//!   operator's maxima;
//! - `admission`: the daemon-wide limits (sandboxes, guest memory,
//!   concurrent boots) and the reservations held against them;
//! - `reaper`: deletes sandboxes past their TTL or idle timeout;
//! - `vm_watch`: notices a VM that ended on its own;
//! - `launcher`: the one boot path (restore or cold boot, agent session,
//!   identity) that creates, pools and template builds all go through;
//! - `exec`: one exec, from request to outcome (collected or streamed);
//! - [`process`]: background processes, their output logs and streams;
//! - `files`: file operations and transfers on a sandbox;
//! - `pool`: booted, warmed-up VMs kept ready per pack, their adaptive
//!   size, and (`pool_filler`) the task that refills each pack's pool;
//! - `standby`: VMM processes started ahead, per pack, waiting for the
//!   template's state, and the task that keeps each pack's count;
//! - `warmup`: the pack's warm-up exec, run before a template or a pooled
//!   VM counts as ready;
//! - `template`: template snapshots, stored and built;
//! - `background`: the tasks that build templates, fill pools and keep
//!   standby VMMs;
//! - `recovery`: the work-dir lock and clearing a crashed daemon's leftovers.

mod admission;
mod background;
mod error;
mod exec;
mod exec_stream;
mod files;
mod ids;
mod launcher;
pub mod limits;
mod manager;
mod model;
mod observe;
mod pool;
mod pool_filler;
pub mod process;
mod reaper;
mod record;
mod recovery;
mod standby;
mod template;
mod vm_watch;
mod warmup;

use std::path::PathBuf;
use std::time::Duration;

pub use error::{BootError, Interrupted, SandboxError};
pub use exec::{DEFAULT_EXEC_TIMEOUT, DEFAULT_OUTPUT_LIMIT, MAX_EXEC_TIMEOUT};
pub use exec_stream::{ExecStream, ExecStreamEvent};
pub use files::{check_depth, check_path, FileStream, FileUpload};
pub use ids::{is_sandbox_id, new_sandbox_id};
pub use limits::{Limits, ProcessLimits};
pub use manager::Manager;
pub use model::{
    BootPath, CreateParams, DaemonInfo, ExecOutcome, ExecParams, ExitStatus, GuestUser,
    SandboxState, SandboxSummary, Shape,
};
pub use pool::PoolPolicy;
pub use recovery::{WorkDirError, WorkDirLock};

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub work_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot_timeout: Duration,
    /// Size of each sandbox's writable layer, in MiB.
    pub overlay_mib: u32,
    /// Booted sandboxes kept ready per pack; 0 disables the pool.
    pub pool_size: usize,
    /// Upper bound on guest memory held by all pools together, in MiB.
    pub pool_memory_mib: u64,
    /// How pools refill and grow or shrink with demand.
    pub pool: PoolPolicy,
    /// VMM processes kept started ahead per pack, waiting for the pack's
    /// template state; 0 disables them.
    pub standby_vmms: usize,
    /// Where template snapshots live; `None` disables snapshot restore.
    pub snapshot_dir: Option<PathBuf>,
    /// Build every pack's template at startup (else after its first cold boot).
    pub warm_templates_at_start: bool,
    /// Per-sandbox maxima and timeouts, and the admission limits.
    pub limits: Limits,
}
