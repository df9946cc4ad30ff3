//! Starting one Firecracker process, directly or through its jailer, with
//! its console drained into a bounded ring.
//!
//! Owns the two ways a Firecracker runs ([`FcProcess`]), the files a VM
//! needs as Firecracker will name them ([`VmFiles`]), and the jailed launch:
//! jail, jailer, pid file, pidfd, crash-recovery record. Must never leave a
//! jail or a process behind when a launch fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::jail::{cgroup_limits, Jail, JailerConfig};
use super::pidfd::PidfdProcess;
use super::{instance_id, SNAPSHOT_MEMORY, SNAPSHOT_STATE};
use crate::vmm::console::ConsoleRing;
use crate::vmm::process::{describe_exit, SpawnOptions, VmProcess};
use crate::vmm::{pid_record, BootSpec, SnapshotFiles, VmExit, VmmError};

/// Firecracker's stderr (and the jailer's) in the sandbox dir; the guest
/// console (stdout) goes to the ring.
pub const VMM_LOG: &str = "vmm.log";
/// The API socket, as Firecracker names it when jailed (in its chroot).
pub const JAILED_API_SOCKET: &str = "/fc.sock";
/// Most of a log read for an error message.
const LOG_TAIL: usize = 4096;

/// A running Firecracker: the daemon's child, or the jailer's orphan.
pub enum FcProcess {
    Direct(VmProcess),
    Jailed(PidfdProcess),
}

impl FcProcess {
    pub fn pid(&self) -> u32 {
        match self {
            FcProcess::Direct(p) => p.pid(),
            FcProcess::Jailed(p) => p.pid(),
        }
    }

    pub fn exited(&self) -> Option<VmExit> {
        match self {
            FcProcess::Direct(p) => p.exited(),
            FcProcess::Jailed(p) => p.exited(),
        }
    }

    pub async fn stop(&self) {
        match self {
            FcProcess::Direct(p) => p.stop().await,
            FcProcess::Jailed(p) => p.stop().await,
        }
    }

    pub async fn wait(&self) -> Result<VmExit, VmmError> {
        match self {
            FcProcess::Direct(p) => p.wait().await,
            FcProcess::Jailed(p) => p.wait().await,
        }
    }
}

/// The files of one VM as Firecracker names them in API calls: host paths
/// when it runs directly, chroot paths when jailed.
pub struct VmFiles {
    pub kernel: String,
    pub initrd: String,
    pub root_disk: String,
    pub snapshot_state: String,
    pub snapshot_memory: String,
}

impl VmFiles {
    pub fn direct(spec: &BootSpec, snapshot: Option<&SnapshotFiles>) -> VmFiles {
        let show = |p: &Path| p.to_string_lossy().into_owned();
        let snapshot_dir = snapshot.map_or_else(PathBuf::new, |s| s.dir.clone());
        VmFiles {
            kernel: show(&spec.kernel_vmlinux),
            initrd: show(&spec.initramfs),
            root_disk: show(&spec.root_disk),
            snapshot_state: show(&snapshot_dir.join(SNAPSHOT_STATE)),
            snapshot_memory: show(&snapshot_dir.join(SNAPSHOT_MEMORY)),
        }
    }

    /// Links what a boot (or, with `snapshot`, a restore) reads into `jail`.
    /// The names are fixed, so a snapshot's recorded drive path holds in
    /// every clone's jail.
    fn jailed(
        jail: &Jail,
        spec: &BootSpec,
        snapshot: Option<&SnapshotFiles>,
    ) -> Result<VmFiles, VmmError> {
        let link = |from: &Path, name: &str| jail.link_in(from, name).map_err(launch_error);
        let root_disk = link(&spec.root_disk, "rootfs.squashfs")?;
        let (kernel, initrd, snapshot_state, snapshot_memory) = match snapshot {
            Some(snapshot) => (
                String::new(),
                String::new(),
                link(&snapshot.dir.join(SNAPSHOT_STATE), SNAPSHOT_STATE)?,
                link(&snapshot.dir.join(SNAPSHOT_MEMORY), SNAPSHOT_MEMORY)?,
            ),
            None => (
                link(&spec.kernel_vmlinux, "vmlinux")?,
                link(&spec.initramfs, "initrd")?,
                format!("/{SNAPSHOT_STATE}"),
                format!("/{SNAPSHOT_MEMORY}"),
            ),
        };
        Ok(VmFiles {
            kernel,
            initrd,
            root_disk,
            snapshot_state,
            snapshot_memory,
        })
    }
}

/// A jailed Firecracker, up and known by its pidfd.
pub struct Jailed {
    pub process: FcProcess,
    pub jail: Jail,
    pub files: VmFiles,
}

/// Builds the jail, runs the jailer, and takes over the Firecracker it
/// leaves running (pid from its pid file). The jail is removed on failure.
pub async fn spawn_jailed(
    config: &JailerConfig,
    firecracker: &Path,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    spec: &BootSpec,
    snapshot: Option<&SnapshotFiles>,
    console: &Arc<ConsoleRing>,
) -> Result<Jailed, VmmError> {
    let id = instance_id(&spec.sandbox_id);
    let jail = Jail::create(config, firecracker, &id).map_err(launch_error)?;
    let files = VmFiles::jailed(&jail, spec, snapshot)?;
    jail.writable_file(config, "fc.log")?;
    let limits = config
        .cgroups
        .then(|| cgroup_limits(spec.vcpus, spec.memory_mib));
    let mut command = jail.command(
        config,
        firecracker,
        &id,
        limits,
        &["--api-sock", JAILED_API_SOCKET],
    );
    command.envs(env.iter().map(|(k, v)| (k, v)));
    new_network_namespace(&mut command);
    let log = spec.sandbox_dir.join(VMM_LOG);
    let jailer = VmProcess::spawn_with(
        command,
        &log,
        SpawnOptions {
            console: Some(console),
            launcher_only: true,
            ..SpawnOptions::default()
        },
    )?;
    let exit = match tokio::time::timeout(spec.boot_timeout, jailer.wait()).await {
        Ok(exit) => exit?,
        Err(_) => {
            jailer.stop().await;
            return Err(VmmError::BootTimeout(spec.boot_timeout));
        }
    };
    if exit.code != Some(0) {
        return Err(VmmError::ExitedEarly(format!(
            "the jailer exited ({}): {}",
            describe_exit(&exit),
            last_line(console, &log)
        )));
    }
    let pid = std::fs::read_to_string(jail.pid_file())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            VmmError::ExitedEarly(format!(
                "the jailer left no pid in {}",
                jail.pid_file().display()
            ))
        })?;
    let process = PidfdProcess::open(pid)?;
    if let Err(e) = pid_record::write(&spec.sandbox_dir, pid) {
        process.stop().await;
        return Err(VmmError::Launch(e));
    }
    Ok(Jailed {
        process: FcProcess::Jailed(process),
        jail,
        files,
    })
}

/// The jailer (and so Firecracker) gets a network namespace of its own,
/// empty: the guest has no network, and the VMM needs none.
fn new_network_namespace(command: &mut Command) {
    // SAFETY: the closure only calls unshare(2), async-signal-safe, between
    // fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The last non-empty line of the console, else of `log` (its end only).
pub fn last_line(console: &ConsoleRing, log: &Path) -> String {
    let console = String::from_utf8_lossy(&console.tail(LOG_TAIL)).into_owned();
    let log = read_tail(log);
    [console, log]
        .iter()
        .find_map(|text| {
            text.lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// The end of the file at `path` (empty when it cannot be read).
pub fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL as u64)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL as u64).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn launch_error(e: impl std::error::Error + Send + Sync + 'static) -> VmmError {
    VmmError::Launch(std::io::Error::other(e))
}
