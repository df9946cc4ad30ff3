//! Guest PID 1: the boot phases before the agent serves.
//!
//! 1. mount proc, sysfs, devtmpfs, devpts, tmpfs on /run;
//! 2. load the kernel modules carried in the initramfs, in the order the
//!    image builder wrote to `/lib/modules/order` (built-in ones are skipped);
//! 3. root: the pack's squashfs (first virtio-blk disk) read-only under a
//!    tmpfs upper layer (sized by the `OverlaySize` kernel argument, default
//!    256 MiB), overlay, move the mounts, switch root. `/tmp` and `/dev/shm`
//!    are directories of that same tmpfs: everything guest code can write
//!    shares the one size cap (a full disk is the overlay's, not RAM's).
//!
//! Any failure is fatal: the caller logs it, syncs and reboots, which ends
//! the VM (the VMMs run with "reboot means exit").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use emberd_proto::kernel_args::KernelArg;
use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};

const MODULE_DIR: &str = "/lib/modules";
const ROOT_DISK: &str = "/dev/vda";
const DISK_WAIT: Duration = Duration::from_secs(10);
/// Size of the tmpfs upper layer when the host names none.
const DEFAULT_OVERLAY_MIB: u32 = 256;

/// Errors of the boot phases.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot mount {target}")]
    Mount {
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot create {path}")]
    Mkdir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the root disk {ROOT_DISK} did not appear within {DISK_WAIT:?}")]
    NoDisk,
    #[error("cannot switch to the new root")]
    SwitchRoot(#[source] nix::Error),
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), BootError> {
    mkdir(target)?;
    mount(Some(source), target, Some(fstype), flags, data).map_err(|source| BootError::Mount {
        target: target.to_owned(),
        source,
    })
}

fn mkdir(path: &str) -> Result<(), BootError> {
    std::fs::create_dir_all(path).map_err(|source| BootError::Mkdir {
        path: path.to_owned(),
        source,
    })
}

/// Phase 1.
pub fn mount_early() -> Result<(), BootError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// Phase 2. Returns how many modules were loaded.
pub fn load_modules() -> usize {
    let order = std::fs::read_to_string(Path::new(MODULE_DIR).join("order")).unwrap_or_default();
    let mut loaded = 0;
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new(MODULE_DIR).join(name);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("emberd-init: cannot open module {name}: {e}");
                continue;
            }
        };
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(nix::Error::EEXIST) => {}
            Err(e) => eprintln!("emberd-init: module {name} not loaded: {e}"),
        }
    }
    loaded
}

/// The arguments for the agent on this kernel's command line, in order.
pub fn kernel_args() -> Vec<KernelArg> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    KernelArg::all_in(&cmdline).collect()
}

/// Phase 3.
pub fn switch_to_pack_root() -> Result<(), BootError> {
    let deadline = Instant::now() + DISK_WAIT;
    while !Path::new(ROOT_DISK).exists() {
        if Instant::now() > deadline {
            return Err(BootError::NoDisk);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let overlay_mib = kernel_args()
        .into_iter()
        .find_map(|arg| match arg {
            KernelArg::OverlaySize { mib } => Some(mib),
            _ => None,
        })
        .unwrap_or(DEFAULT_OVERLAY_MIB);
    mount_fs(
        ROOT_DISK,
        "/mnt/lower",
        "squashfs",
        MsFlags::MS_RDONLY,
        None,
    )?;
    mount_fs(
        "tmpfs",
        "/mnt/rw",
        "tmpfs",
        MsFlags::empty(),
        Some(&format!("size={overlay_mib}M,mode=0755")),
    )?;
    mkdir("/mnt/rw/upper")?;
    mkdir("/mnt/rw/work")?;
    for shared in ["/mnt/rw/tmp", "/mnt/rw/shm"] {
        mkdir(shared)?;
        std::fs::set_permissions(shared, std::fs::Permissions::from_mode(0o1777)).map_err(
            |source| BootError::Mkdir {
                path: shared.to_owned(),
                source,
            },
        )?;
    }
    mount_fs(
        "overlay",
        "/mnt/root",
        "overlay",
        MsFlags::empty(),
        Some("lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work"),
    )?;
    for point in ["/proc", "/sys", "/dev", "/run"] {
        let target = format!("/mnt/root{point}");
        mkdir(&target)?;
        mount(
            Some(point),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| BootError::Mount {
            target: target.clone(),
            source,
        })?;
    }
    bind_nosuid("/mnt/rw/tmp", "/mnt/root/tmp")?;
    bind_nosuid("/mnt/rw/shm", "/mnt/root/dev/shm")?;
    chdir("/mnt/root").map_err(BootError::SwitchRoot)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(BootError::SwitchRoot)?;
    chroot(".").map_err(BootError::SwitchRoot)?;
    chdir("/").map_err(BootError::SwitchRoot)?;
    Ok(())
}

/// Binds `source` on `target`, without set-uid programs or devices.
fn bind_nosuid(source: &str, target: &str) -> Result<(), BootError> {
    mkdir(target)?;
    let error = |source| BootError::Mount {
        target: target.to_owned(),
        source,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(error)?;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(error)
}

/// Logs a fatal error, syncs and ends the VM. Never returns.
pub fn fatal(message: &str) -> ! {
    eprintln!("emberd-init: fatal: {message}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // If even reboot failed there is nothing left to do but wait.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
