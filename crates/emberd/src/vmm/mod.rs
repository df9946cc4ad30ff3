//! VM backends.
//!
//! Owns the [`VmBackend`] trait (make a VM from a boot spec or a snapshot) and
//! the [`Vm`] trait (one running VM: agent channel, pause/resume, snapshot,
//! stop, wait). The sandbox manager only ever talks to these traits; the
//! QEMU and Firecracker modules implement them. Nothing here knows HTTP.

pub mod cgroup;
pub mod console;
#[cfg(any(test, feature = "fake-backend"))]
pub mod fake;
pub mod firecracker;
pub mod kvm;
pub mod pid_record;
pub mod process;
pub mod qemu;
pub mod vmm_user;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream connected to the guest agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// Boxed agent stream, as returned by [`Vm::connect_agent`].
pub type AgentStream = Box<dyn AgentIo>;

/// Everything a backend needs to boot one sandbox.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// `sb_<12 hex>`.
    pub sandbox_id: String,
    /// Per-sandbox directory owned by the manager: control sockets, logs,
    /// pid file. Removed by the manager after [`Vm::stop`].
    pub sandbox_dir: PathBuf,
    /// Compressed kernel (bzImage), booted by QEMU.
    pub kernel_bzimage: PathBuf,
    /// Uncompressed ELF kernel, booted by Firecracker.
    pub kernel_vmlinux: PathBuf,
    pub initramfs: PathBuf,
    /// The language pack's squashfs, attached read-only as the first disk.
    pub root_disk: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Extra kernel command-line arguments (after the backend's own).
    pub extra_kernel_args: Vec<String>,
    /// Give up when the VMM does not come up within this bound.
    pub boot_timeout: Duration,
    /// Keep the guest's RAM in this file, mapped shared, instead of in
    /// anonymous memory: the VM of a template, whose snapshot then holds
    /// the device state only and whose clones map this file copy-on-write
    /// (see [`SnapshotFiles::memory_file`]). Backends that cannot ignore it.
    pub memory_file: Option<PathBuf>,
}

/// Files making up one snapshot, inside a directory owned by the caller.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub dir: PathBuf,
}

/// Name of the guest-RAM file in a snapshot directory, where the backend
/// keeps guest memory in a file (see [`BootSpec::memory_file`]).
pub const GUEST_MEMORY_FILE: &str = "guest.ram";

impl SnapshotFiles {
    /// Where the guest's RAM lives when the snapshot was taken from a VM
    /// booted with [`BootSpec::memory_file`]: restores map it privately
    /// (copy-on-write) and never write to it.
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join(GUEST_MEMORY_FILE)
    }
}

/// What a backend can do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pause_resume: bool,
    pub snapshot: bool,
    pub restore: bool,
    /// Guest RAM can live in a file ([`BootSpec::memory_file`]) that
    /// snapshots leave out and restores map copy-on-write.
    pub memory_file: bool,
}

impl Capabilities {
    /// Pause, resume, snapshot and restore.
    pub const ALL: Capabilities = Capabilities {
        pause_resume: true,
        snapshot: true,
        restore: true,
        memory_file: true,
    };
}

/// The CPU accelerator a backend runs guests with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's Tiny Code Generator: emulation, no KVM needed.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes, and `/info` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a VM process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{backend} cannot {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
    },
    #[error("failed to launch the VMM")]
    Launch(#[source] std::io::Error),
    #[error("the VMM did not come up within {0:?}")]
    BootTimeout(Duration),
    #[error("the VMM exited early: {0}")]
    ExitedEarly(String),
    #[error("the VMM rejected {request}: {message}")]
    Api { request: String, message: String },
    #[error("cannot reach the guest agent")]
    AgentConnect(#[source] std::io::Error),
    #[error("VMM control channel failed")]
    Control(#[source] std::io::Error),
    #[error("the VMM did not answer {request} within {after:?}")]
    Unresponsive { request: String, after: Duration },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Makes VMs. One instance per daemon.
#[async_trait]
pub trait VmBackend: Send + Sync + 'static {
    /// Short name: "qemu" or "firecracker".
    fn name(&self) -> &'static str;
    /// The accelerator guests run with, if the backend has one to report.
    fn acceleration(&self) -> Option<Accel> {
        None
    }
    fn capabilities(&self) -> Capabilities;
    /// Identifies the VMM build, for snapshot content addressing.
    fn version(&self) -> String;
    /// Cold-boots a VM. On error nothing is left running.
    async fn start(&self, spec: &BootSpec) -> Result<Box<dyn Vm>, VmmError>;
    /// Starts a VM from a snapshot made by [`Vm::snapshot`] with a compatible
    /// spec. On error nothing is left running.
    async fn restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn Vm>, VmmError> {
        let _ = (spec, snapshot);
        Err(VmmError::Unsupported {
            backend: self.name(),
            operation: "restore snapshots",
        })
    }
    /// Starts a VMM process for a later restore of `snapshot` into `spec`
    /// (its sandbox dir and id are the VM's), without loading any state.
    /// On error nothing is left running.
    async fn prepare_restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn StandbyVm>, VmmError> {
        let _ = (spec, snapshot);
        Err(VmmError::Unsupported {
            backend: self.name(),
            operation: "start VMMs ahead of a restore",
        })
    }
}

/// A VMM process started ahead of a restore: running, holding no guest
/// state yet (QEMU waiting with `-incoming defer`, its RAM file mapped but
/// untouched), so a restore is only the state load.
#[async_trait]
pub trait StandbyVm: Send + Sync + 'static {
    /// PID of the VMM process on the host.
    fn pid(&self) -> Option<u32>;
    /// True once the VMM process is known to have ended.
    fn has_exited(&self) -> bool;
    /// Loads `snapshot` (of the template this standby was prepared for)
    /// and runs the guest. On error the process is stopped.
    async fn restore(self: Box<Self>, snapshot: &SnapshotFiles) -> Result<Box<dyn Vm>, VmmError>;
    /// Stops the process; idempotent.
    async fn stop(&self);
}

/// One running VM.
#[async_trait]
pub trait Vm: Send + Sync + 'static {
    /// PID of the VMM process on the host.
    fn pid(&self) -> Option<u32>;
    /// True once the VMM process is known to have ended (without waiting).
    fn has_exited(&self) -> bool;
    /// Dials a fresh byte stream to the guest agent. May be called again
    /// after the previous stream broke (for example after a restore).
    async fn connect_agent(&self) -> Result<AgentStream, VmmError>;
    async fn pause(&self) -> Result<(), VmmError>;
    async fn resume(&self) -> Result<(), VmmError>;
    /// Writes a snapshot of a paused VM into `dest.dir`.
    async fn snapshot(&self, dest: &SnapshotFiles) -> Result<(), VmmError>;
    /// Stops the VM: graceful first, SIGKILL after a bound; the process is
    /// reaped before this returns. Idempotent.
    async fn stop(&self) -> Result<(), VmmError>;
    /// Waits for the VMM process to exit.
    async fn wait(&self) -> Result<VmExit, VmmError>;
    /// The last `max_bytes` of the guest console, from memory (a bounded
    /// ring, see [`console`]); never reads a file.
    fn console_tail(&self, max_bytes: usize) -> Vec<u8> {
        let _ = max_bytes;
        Vec::new()
    }
}
