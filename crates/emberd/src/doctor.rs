//! `emberd doctor`: what this host can run, one line per check, each with a
//! fix when it fails. Exits non-zero when the configured backend can't run.

use std::path::{Path, PathBuf};

use crate::config::BackendChoice;
use crate::image::Manifest;
use crate::vmm::firecracker::FirecrackerBackend;
use crate::vmm::kvm::{hardware_kvm, KvmStatus};
use crate::vmm::qemu::QemuBackend;
use crate::vmm::VmBackend;

/// Flags of `emberd doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The backend the daemon would use.
    #[arg(long, env = "EMBERD_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    #[arg(long, env = "EMBERD_DATA_DIR", default_value_os_t = crate::config::default_data_dir())]
    pub data_dir: PathBuf,
    #[arg(long, env = "EMBERD_FIRECRACKER_BIN")]
    pub firecracker_bin: Option<PathBuf>,
    #[arg(long, env = "EMBERD_QEMU_BIN")]
    pub qemu_bin: Option<PathBuf>,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub what: String,
    /// How to fix it, when it failed.
    pub fix: Option<String>,
}

impl Check {
    fn pass(what: impl Into<String>) -> Check {
        Check {
            ok: true,
            what: what.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check, prints them, and returns the exit code.
pub fn run(args: &DoctorArgs) -> i32 {
    let kvm = hardware_kvm();
    let mut checks = vec![kvm_check(&kvm), kvm_permissions()];
    let firecracker = FirecrackerBackend::new(args.firecracker_bin.clone());
    checks.push(match &firecracker {
        Ok(backend) => Check::pass(format!("Firecracker: {}", backend.version())),
        Err(e) => Check::fail(
            format!("Firecracker: {e}"),
            "see docs/firecracker.md (only needed with hardware KVM)",
        ),
    });
    let qemu = QemuBackend::new(args.qemu_bin.clone(), crate::vmm::qemu::AccelChoice::Auto);
    checks.push(match &qemu {
        Ok(backend) => Check::pass(format!(
            "QEMU: {} (accel {}: {})",
            backend.version(),
            backend.accel_decision().accel,
            backend.accel_decision().reason
        )),
        Err(e) => Check::fail(format!("QEMU: {e}"), "make setup"),
    });
    checks.push(images_check(&args.data_dir));
    checks.push(disk_check(&args.data_dir));
    checks.push(cgroup_check());

    let fc_usable = firecracker.is_ok() && kvm.is_hardware();
    let backend_ok = match args.backend {
        BackendChoice::Qemu | BackendChoice::Auto if qemu.is_ok() || fc_usable => true,
        BackendChoice::Firecracker => fc_usable,
        _ => false,
    };
    let chosen = match args.backend {
        BackendChoice::Auto if fc_usable => "auto → firecracker",
        BackendChoice::Auto => "auto → qemu",
        BackendChoice::Qemu => "qemu",
        BackendChoice::Firecracker => "firecracker",
    };
    checks.push(if backend_ok {
        Check::pass(format!("backend {chosen} can run here"))
    } else {
        Check::fail(
            format!("backend {chosen} cannot run here"),
            "fix the lines above, or choose another --backend",
        )
    });
    for check in &checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        match &check.fix {
            Some(fix) => println!("{mark} {} — fix: {fix}", check.what),
            None => println!("{mark} {}", check.what),
        }
    }
    let images_ok = checks.iter().any(|c| c.ok && c.what.starts_with("images"));
    if backend_ok && images_ok {
        0
    } else {
        1
    }
}

fn kvm_check(kvm: &KvmStatus) -> Check {
    match kvm {
        KvmStatus::Hardware { .. } => Check::pass(format!("KVM: {}", kvm.explain())),
        KvmStatus::Paravirtual => Check::fail(
            format!("KVM: {}", kvm.explain()),
            "none needed: QEMU runs VMs with TCG (slower boots); use a host with hardware KVM for Firecracker",
        ),
        KvmStatus::Missing => Check::fail(
            format!("KVM: {}", kvm.explain()),
            "enable virtualisation in the firmware and load kvm_intel or kvm_amd; QEMU falls back to TCG meanwhile",
        ),
        KvmStatus::NoAccess { .. } => Check::fail(
            format!("KVM: {}", kvm.explain()),
            "add this user to the kvm group (usermod -aG kvm $USER) or run as root",
        ),
        KvmStatus::Unknown => Check::fail(
            format!("KVM: {}", kvm.explain()),
            "load kvm_intel or kvm_amd; QEMU falls back to TCG meanwhile",
        ),
    }
}

fn kvm_permissions() -> Check {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Check::pass("/dev/kvm permissions: no device (nothing to check)");
    }
    match std::fs::File::options().read(true).write(true).open(dev) {
        Ok(_) => Check::pass("/dev/kvm permissions: read-write"),
        Err(e) => Check::fail(
            format!("/dev/kvm permissions: {e}"),
            "add this user to the kvm group (usermod -aG kvm $USER) or run as root",
        ),
    }
}

fn images_check(data_dir: &Path) -> Check {
    match Manifest::load(data_dir).and_then(|m| m.verify().map(|()| m)) {
        Ok(manifest) => Check::pass(format!(
            "images in {}: kernel {}, packs {}",
            data_dir.display(),
            manifest.kernel.release,
            manifest.pack_names().join(", ")
        )),
        Err(e) => Check::fail(format!("images: {e}"), "make images"),
    }
}

fn disk_check(data_dir: &Path) -> Check {
    let probe = std::iter::successors(Some(data_dir), |p| p.parent()).find(|p| p.exists());
    let Some(probe) = probe else {
        return Check::fail("free disk: cannot find the data dir", "create it");
    };
    match nix::sys::statvfs::statvfs(probe) {
        Ok(stat) => {
            let free_gib =
                stat.blocks_available() as f64 * stat.fragment_size() as f64 / (1u64 << 30) as f64;
            if free_gib >= 2.0 {
                Check::pass(format!(
                    "free disk at {}: {free_gib:.1} GiB",
                    probe.display()
                ))
            } else {
                Check::fail(
                    format!("free disk at {}: {free_gib:.1} GiB", probe.display()),
                    "free at least 2 GiB for images and snapshots",
                )
            }
        }
        Err(e) => Check::fail(format!("free disk: {e}"), "check the data dir"),
    }
}

fn cgroup_check() -> Check {
    match std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers") {
        Ok(controllers) => Check::pass(format!("cgroup v2: controllers {}", controllers.trim())),
        Err(_) => Check::fail(
            "cgroup v2: not mounted at /sys/fs/cgroup",
            "boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1); only the jailer needs it",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paravirtual_kvm_is_reported_with_a_fix() {
        let check = kvm_check(&KvmStatus::Paravirtual);
        assert!(!check.ok);
        assert!(check.what.contains("kvm_pvm"), "{}", check.what);
        assert!(check.fix.unwrap().contains("TCG"));
    }

    #[test]
    fn missing_images_say_how_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        let check = images_check(dir.path());
        assert!(!check.ok);
        assert_eq!(check.fix.as_deref(), Some("make images"));
    }
}
