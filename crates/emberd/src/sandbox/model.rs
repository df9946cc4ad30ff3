//! The manager's domain types: what callers ask for and what they get back.
//! The HTTP layer converts these to and from the wire types of `emberd-api`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::vmm::Accel;

/// How a sandbox's VM came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPath {
    /// Handed out from a pool of VMs booted ahead of time.
    WarmPool,
    /// Restored from the pack's template snapshot.
    SnapshotRestore,
    /// Restored from the pack's template snapshot into a VMM process
    /// started ahead of the create (`--standby-vmms`).
    StandbyRestore,
    /// Booted from the kernel.
    ColdBoot,
}

impl BootPath {
    /// The name used in logs and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BootPath::WarmPool => "warm-pool",
            BootPath::SnapshotRestore => "snapshot-restore",
            BootPath::StandbyRestore => "standby-restore",
            BootPath::ColdBoot => "cold-boot",
        }
    }
}

impl fmt::Display for BootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    Booting,
    Running,
    Stopping,
    /// The VM ended on its own.
    Exited,
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SandboxState::Booting => "booting",
            SandboxState::Running => "running",
            SandboxState::Stopping => "stopping",
            SandboxState::Exited => "exited",
        })
    }
}

/// One sandbox as callers see it.
#[derive(Debug, Clone)]
pub struct SandboxSummary {
    pub id: String,
    pub pack: String,
    pub state: SandboxState,
    pub backend: &'static str,
    pub created_at: SystemTime,
    /// Known once the VM is up.
    pub boot_path: Option<BootPath>,
    pub vmm_pid: Option<u32>,
    /// The last lines of the guest console, when asked for.
    pub console_tail: Option<String>,
    /// When the TTL deletes it.
    pub expires_at: Option<SystemTime>,
    /// When it is deleted unless an exec comes first.
    pub idle_expires_at: Option<SystemTime>,
    /// Why the VM ended, once it has (state `Exited`).
    pub exit_reason: Option<String>,
    /// The VM's shape, once known.
    pub shape: Option<Shape>,
}

/// The size of one sandbox's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The writable layer (overlay) in MiB.
    pub disk_mib: u32,
}

/// One create as the manager takes it; `None` means the operator's default.
#[derive(Debug, Clone, Default)]
pub struct CreateParams {
    pub pack: String,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    pub disk_mib: Option<u32>,
    pub ttl_s: Option<u64>,
    /// `Some(0)` disables the idle timeout.
    pub idle_timeout_s: Option<u64>,
}

impl CreateParams {
    /// A create of `pack` with every default.
    pub fn pack(pack: &str) -> Self {
        CreateParams {
            pack: pack.to_owned(),
            ..CreateParams::default()
        }
    }
}

/// Who runs an exec's code inside the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GuestUser {
    /// The unprivileged `sandbox` user.
    #[default]
    Sandbox,
    Root,
}

impl GuestUser {
    /// The name on the wire (API and agent protocol).
    pub fn as_str(self) -> &'static str {
        match self {
            GuestUser::Sandbox => "sandbox",
            GuestUser::Root => "root",
        }
    }

    /// Parses the API's `user` field.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sandbox" => Some(GuestUser::Sandbox),
            "root" => Some(GuestUser::Root),
            _ => None,
        }
    }
}

/// The daemon as callers see it.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub guest_memory_mib: u32,
    pub guest_vcpus: u32,
    /// How a create is served when no pool has a VM ready.
    pub next_boot_path: BootPath,
    /// Sorted.
    pub packs: Vec<String>,
    pub work_dir: PathBuf,
    pub backend: &'static str,
    pub accel: Option<Accel>,
    /// Ready VMs per pack, when pools are on.
    pub pool_ready: Option<BTreeMap<String, usize>>,
    /// Sandboxes deleted for their TTL or idle timeout since the daemon started.
    pub reaped: u64,
}

/// One exec as the manager takes it.
#[derive(Debug, Clone, Default)]
pub struct ExecParams {
    pub code: String,
    pub stdin: Option<String>,
    /// `None` or 0: the default timeout.
    pub timeout_ms: Option<u64>,
    pub user: GuestUser,
}

/// How an exec's program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    /// Killed by the exec's timeout.
    TimedOut,
    Signalled(i32),
    /// The program could not be started, and why.
    NotStarted(String),
}

/// The result of one exec.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// The whole exec as the manager saw it.
    pub elapsed: Duration,
    /// The agent's own time for it, inside the guest.
    pub agent_time: Duration,
    /// From the request leaving the daemon to the answer arriving back.
    pub vm_time: Option<Duration>,
}
