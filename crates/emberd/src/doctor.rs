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

    let (backend_ok, chosen) = verdict(args.backend, firecracker.is_ok(), qemu.is_ok(), &kvm);
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

/// Whether the chosen backend can run, and what `auto` resolves to; the
/// same rule as the daemon's backend choice.
fn verdict(
    choice: BackendChoice,
    firecracker_found: bool,
    qemu_found: bool,
    kvm: &KvmStatus,
) -> (bool, &'static str) {
    let firecracker_usable = firecracker_found && kvm.is_hardware();
    match choice {
        BackendChoice::Auto if firecracker_usable => (true, "auto → firecracker"),
        BackendChoice::Auto => (qemu_found, "auto → qemu"),
        BackendChoice::Qemu => (qemu_found, "qemu"),
        BackendChoice::Firecracker => (firecracker_usable, "firecracker"),
    }
}

fn kvm_check(kvm: &KvmStatus) -> Check {
    match kvm {
        KvmStatus::Hardware { .. } => Check::pass(format!("KVM: {}", kvm.explain())),
        KvmStatus::Paravirtual => Check::fail(
            format!("KVM: {}", kvm.explain()),
            "QEMU uses TCG here (slower boots); for KVM speed and Firecracker use a host with hardware virtualisation (bare metal, or nested VT-x/AMD-V)",
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
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    cgroup_verdict(&mounts, |dir| {
        std::fs::read_to_string(Path::new(dir).join("cgroup.controllers")).ok()
    })
}

/// cgroup v2 holding the controllers the jailer needs (the unified
/// hierarchy), told apart from a hybrid one whose cgroup2 mount lacks them.
fn cgroup_verdict(mounts: &str, controllers: impl Fn(&str) -> Option<String>) -> Check {
    /// What the jailer's limits use.
    const NEEDED: [&str; 3] = ["cpu", "memory", "pids"];
    const FIX: &str = "boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1); only the jailer needs it";
    let cgroup2: Vec<&str> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
            (kind == "cgroup2").then_some(dir)
        })
        .collect();
    let listed: Vec<(&str, String)> = cgroup2
        .iter()
        .map(|dir| (*dir, controllers(dir).unwrap_or_default().trim().to_owned()))
        .collect();
    let has = |list: &str, name: &str| list.split_whitespace().any(|c| c == name);
    let usable = listed
        .iter()
        .find(|(_, list)| NEEDED.iter().all(|name| has(list, name)));
    match (usable, listed.first()) {
        (Some((dir, list)), _) => Check::pass(format!("cgroup v2 at {dir}: controllers {list}")),
        (None, Some((dir, list))) => Check::fail(
            format!(
                "cgroup v2: mounted at {dir} with controllers [{list}] only, not {} (hybrid hierarchy: they are on v1)",
                NEEDED.join(", ")
            ),
            FIX,
        ),
        (None, None) => Check::fail("cgroup v2: not mounted", FIX),
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
    fn the_backend_verdict_follows_kvm_and_the_binaries() {
        let hardware = KvmStatus::Hardware {
            module: "kvm_intel".into(),
        };
        let pvm = KvmStatus::Paravirtual;
        assert_eq!(
            verdict(BackendChoice::Auto, true, true, &hardware),
            (true, "auto → firecracker")
        );
        assert_eq!(
            verdict(BackendChoice::Auto, true, true, &pvm),
            (true, "auto → qemu")
        );
        assert_eq!(
            verdict(BackendChoice::Auto, true, false, &pvm),
            (false, "auto → qemu")
        );
        assert_eq!(
            verdict(BackendChoice::Firecracker, true, true, &pvm),
            (false, "firecracker")
        );
        assert_eq!(
            verdict(BackendChoice::Firecracker, false, true, &hardware),
            (false, "firecracker")
        );
        assert_eq!(
            verdict(BackendChoice::Qemu, false, true, &KvmStatus::Missing),
            (true, "qemu")
        );
    }

    #[test]
    fn cgroup_v2_is_told_apart_from_a_hybrid_hierarchy() {
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let check = cgroup_verdict(unified, |_| Some("cpu memory pids\n".into()));
        assert!(check.ok, "{check:?}");
        assert!(check.what.contains("cpu memory pids"), "{check:?}");
        let check = cgroup_verdict(hybrid, |_| Some("hugetlb\n".into()));
        assert!(!check.ok);
        assert!(check.what.contains("hybrid"), "{check:?}");
        assert!(check.what.contains("[hugetlb]"), "{check:?}");
        let check = cgroup_verdict("proc /proc proc rw 0 0\n", |_| None);
        assert!(!check.ok);
        assert!(check.fix.unwrap().contains("unified"));
    }

    #[test]
    fn missing_images_say_how_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        let check = images_check(dir.path());
        assert!(!check.ok);
        assert_eq!(check.fix.as_deref(), Some("make images"));
    }
}
