//! `emberd doctor`: what this host can run, one line per check, each with a
//! fix when it fails, and last the backend `emberd serve` would run with the
//! same settings. Exits non-zero when that backend can't run.

use std::path::Path;

use crate::backend_choice::{choose_backend, choose_jailer, Backend, BackendDecision, Unjailed};
use crate::config::{ServeArgs, Settings};
use crate::image::Manifest;
use crate::vmm::cgroup::{CgroupError, VmmCgroups};
use crate::vmm::firecracker::FirecrackerBackend;
use crate::vmm::kvm::{hardware_kvm, KvmStatus};
use crate::vmm::qemu::{QemuBackend, QemuSetupError};
use crate::vmm::vmm_user::{VmmUser, VmmUserError};
use crate::vmm::{Accel, VmBackend};

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

/// Resolves the settings as `emberd serve` does, runs every check, prints
/// them, and returns the exit code.
pub fn run(args: &ServeArgs) -> i32 {
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(e) => {
            print(&[Check::fail(
                format!("settings: {e}"),
                "fix the flag, the EMBERD_* variable or the config file",
            )]);
            return 1;
        }
    };
    let (checks, ok) = checks(&settings);
    print(&checks);
    if ok {
        0
    } else {
        1
    }
}

/// Every check, and whether the chosen backend can run with built images.
fn checks(settings: &Settings) -> (Vec<Check>, bool) {
    let kvm = hardware_kvm();
    let mut checks = vec![kvm_check(&kvm), kvm_permissions()];
    let firecracker = FirecrackerBackend::new(settings.firecracker_bin.clone());
    checks.push(match &firecracker {
        Ok(backend) => Check::pass(format!("Firecracker: {}", backend.version())),
        Err(e) => Check::fail(
            format!("Firecracker: {e}"),
            "see docs/firecracker.md (only needed with hardware KVM)",
        ),
    });
    if let Ok(backend) = &firecracker {
        checks.push(snapshots_check(&backend.version()));
        checks.extend(boot_entry_check(&settings.data_dir, &backend.version()));
        let jailer = settings.jailer.as_deref().unwrap_or(Path::new("jailer"));
        checks.push(jailer_check(
            choose_jailer(
                settings.no_jailer,
                crate::host_tools::find_in_path(jailer).is_some(),
                nix::unistd::geteuid().is_root(),
            ),
            jailer,
            &settings.vmm_user,
        ));
    }
    let qemu = QemuBackend::new(settings.qemu_bin.clone(), settings.accel);
    checks.push(match &qemu {
        Ok(backend) => Check::pass(format!(
            "QEMU: {} (accel {}: {})",
            backend.version(),
            backend.accel_decision().accel,
            backend.accel_decision().reason
        )),
        Err(e) => Check::fail(format!("QEMU: {e}"), "make setup"),
    });
    checks.push(seccomp_check(&qemu));
    checks.push(vmm_user_check(
        nix::unistd::geteuid().is_root(),
        &settings.vmm_user,
        VmmUser::for_daemon(nix::unistd::geteuid(), &settings.vmm_user),
    ));
    let images = images_check(&settings.data_dir);
    let images_ok = images.ok;
    checks.push(images);
    checks.push(disk_check(&settings.data_dir));
    checks.push(cgroup_check());
    checks.push(vmm_cgroup_check(VmmCgroups::probe()));

    let decision = choose_backend(settings.backend, firecracker.is_ok(), &kvm);
    let accel = match decision.backend {
        Backend::Qemu => qemu.as_ref().ok().and_then(|b| b.acceleration()),
        Backend::Firecracker => firecracker.as_ref().ok().and_then(|b| b.acceleration()),
    };
    if decision.backend == Backend::Qemu && accel == Some(Accel::Tcg) {
        checks.push(tcg_check());
    }
    let backend = verdict(&decision, accel, qemu.is_ok());
    let backend_ok = backend.ok;
    checks.push(backend);
    (checks, backend_ok && images_ok)
}

fn print(checks: &[Check]) {
    for check in checks {
        let mark = if check.ok { "ok  " } else { "FAIL" };
        match &check.fix {
            Some(fix) => println!("{mark} {} — fix: {fix}", check.what),
            None => println!("{mark} {}", check.what),
        }
    }
}

/// What `emberd serve` would run, and whether it can: the backend
/// [`choose_backend`] picked, its accelerator, and why.
fn verdict(decision: &BackendDecision, accel: Option<Accel>, qemu_usable: bool) -> Check {
    let problem = match (&decision.obstacle, decision.backend) {
        (Some(obstacle), _) => Some(obstacle.to_string()),
        (None, Backend::Qemu) if !qemu_usable => Some("QEMU is not usable".to_owned()),
        (None, _) => None,
    };
    match problem {
        None => Check::pass(format!(
            "backend {decision}{} can run here: {}",
            accel.map(|a| format!(" with {a}")).unwrap_or_default(),
            decision.reason
        )),
        Some(problem) => Check::fail(
            format!(
                "backend {decision} cannot run here: {problem} ({})",
                decision.reason
            ),
            "fix the lines above, or choose another --backend",
        ),
    }
}

/// QEMU's seccomp sandbox, which every QEMU VMM runs under.
fn seccomp_check(qemu: &Result<QemuBackend, QemuSetupError>) -> Check {
    match qemu {
        Ok(_) => Check::pass("QEMU seccomp sandbox: supported; VMMs run under -sandbox on with spawning, obsolete and resource-control calls denied"),
        Err(e @ QemuSetupError::NoSeccomp { .. }) => Check::fail(
            format!("QEMU seccomp sandbox: {e}"),
            "install Debian's qemu-system-x86 (built with seccomp)",
        ),
        Err(QemuSetupError::NotFound { .. } | QemuSetupError::Version { .. }) => {
            Check::fail("QEMU seccomp sandbox: no usable QEMU to ask", "make setup")
        }
    }
}

/// Which user VMMs run as.
fn vmm_user_check(root: bool, name: &str, user: Result<Option<VmmUser>, VmmUserError>) -> Check {
    match (root, user) {
        (_, Ok(Some(user))) => Check::pass(format!(
            "VMM user: QEMU drops to {} (uid {}, gid {}) with -runas",
            user.name, user.uid, user.gid
        )),
        (false, Ok(None)) => Check::pass(format!(
            "VMM user: not used (the daemon is not root, so VMMs run as its own unprivileged uid {}); {name} would be used as root",
            nix::unistd::geteuid()
        )),
        (true, Ok(None)) => Check::fail("VMM user: none", "make setup"),
        (_, Err(e)) => Check::fail(
            format!("VMM user: {e}"),
            "make setup (creates emberd-vmm), or pass --vmm-user",
        ),
    }
}

/// Whether each VMM gets its own cgroup with limits.
fn vmm_cgroup_check(probe: Result<std::path::PathBuf, CgroupError>) -> Check {
    match probe {
        Ok(group) => Check::pass(format!(
            "VMM cgroups: each VMM gets cpu, memory and pids limits in its own group under {}/emberd",
            group.display()
        )),
        Err(e) => Check::fail(
            format!("VMM cgroups: VMMs run without cpu, memory and pids limits: {e}"),
            "boot with the unified cgroup v2 hierarchy and run the daemon in a group that delegates cpu, memory and pids (systemd: Delegate=yes)",
        ),
    }
}

/// What running under TCG means for containment.
fn tcg_check() -> Check {
    Check::fail(
        "TCG: guests are emulated, and QEMU's security policy does not treat TCG as a security boundary",
        "use KVM (a host with hardware virtualisation) for hostile code",
    )
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

/// Whether this Firecracker's snapshots are used (v1.15.1 or later, not v1.16.0).
fn snapshots_check(firecracker_version: &str) -> Check {
    match crate::vmm::firecracker::snapshots_refused(firecracker_version) {
        None => Check::pass(format!(
            "Firecracker snapshots: {firecracker_version} takes and restores templates"
        )),
        Some(reason) => Check::fail(
            format!("Firecracker snapshots: {reason}"),
            "install Firecracker v1.15.1 or later, not v1.16.0 (docs/firecracker.md)",
        ),
    }
}

/// Whether Firecracker runs in its jailer, as `serve` decides it.
fn jailer_check(decision: Result<(), Unjailed>, jailer: &Path, vmm_user: &str) -> Check {
    match decision {
        Ok(()) => Check::pass(format!(
            "Firecracker jailer: {} runs each VMM as {vmm_user} in a chroot",
            jailer.display()
        )),
        Err(why @ Unjailed::OptedOut) => Check::pass(format!("Firecracker jailer: off ({why})")),
        Err(why) => Check::fail(
            format!("Firecracker jailer: off ({why}); VMMs run unconfined by it"),
            "install the release's jailer as `jailer` and run the daemon as root (docs/firecracker.md)",
        ),
    }
}

/// Which entry Firecracker takes into the built kernel (PVH or the 64-bit
/// Linux boot protocol); nothing when no kernel is built yet.
fn boot_entry_check(data_dir: &Path, firecracker_version: &str) -> Option<Check> {
    let vmlinux = Manifest::load(data_dir).ok()?.kernel.vmlinux;
    let release = crate::vmm::firecracker::parse_release(firecracker_version)?;
    Some(
        match crate::vmm::firecracker::boot_entry(&vmlinux, release) {
            Ok(entry) => Check::pass(format!(
                "Firecracker boot entry: {entry} ({})",
                vmlinux.display()
            )),
            Err(e) => Check::fail(
                format!(
                    "Firecracker boot entry: {} is no ELF kernel: {e}",
                    vmlinux.display()
                ),
                "make images",
            ),
        },
    )
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
    const FIX: &str = "boot with the unified hierarchy (systemd.unified_cgroup_hierarchy=1); per-VMM limits need it";
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
    use crate::backend_choice::BackendChoice;

    #[test]
    fn paravirtual_kvm_is_reported_with_a_fix() {
        let check = kvm_check(&KvmStatus::Paravirtual);
        assert!(!check.ok);
        assert!(check.what.contains("kvm_pvm"), "{}", check.what);
        assert!(check.fix.unwrap().contains("TCG"));
    }

    #[test]
    fn the_verdict_says_what_serve_would_run_and_why() {
        let pvm = KvmStatus::Paravirtual;
        let decision = choose_backend(BackendChoice::Auto, false, &pvm);
        let check = verdict(&decision, Some(Accel::Tcg), true);
        assert!(check.ok, "{check:?}");
        assert_eq!(
            check.what,
            format!(
                "backend auto → qemu with tcg can run here: no hardware KVM for Firecracker: {}",
                pvm.explain()
            )
        );

        let check = verdict(&decision, None, false);
        assert!(!check.ok, "{check:?}");
        assert!(
            check
                .what
                .starts_with("backend auto → qemu cannot run here: QEMU is not usable"),
            "{check:?}"
        );

        let hardware = KvmStatus::Hardware {
            module: "kvm_amd".into(),
        };
        let decision = choose_backend(BackendChoice::Auto, true, &hardware);
        let check = verdict(&decision, Some(Accel::Kvm), false);
        assert!(check.ok, "{check:?}");
        assert!(
            check
                .what
                .starts_with("backend auto → firecracker with kvm can run here"),
            "{check:?}"
        );

        let decision = choose_backend(BackendChoice::Firecracker, true, &pvm);
        let check = verdict(&decision, Some(Accel::Kvm), true);
        assert!(!check.ok, "{check:?}");
        assert!(
            check
                .what
                .starts_with("backend firecracker cannot run here: Firecracker needs hardware KVM"),
            "{check:?}"
        );
        assert!(check.fix.unwrap().contains("--backend"));
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
    fn the_vmm_user_line_says_who_the_vmms_run_as() {
        let user = VmmUser {
            name: "emberd-vmm".into(),
            uid: 999,
            gid: 995,
        };
        let check = vmm_user_check(true, "emberd-vmm", Ok(Some(user)));
        assert!(check.ok, "{check:?}");
        assert!(check.what.contains("emberd-vmm (uid 999"), "{check:?}");
        let check = vmm_user_check(
            true,
            "emberd-vmm",
            Err(VmmUserError::Missing {
                name: "emberd-vmm".into(),
            }),
        );
        assert!(!check.ok);
        assert!(check.fix.unwrap().contains("make setup"));
        let check = vmm_user_check(false, "emberd-vmm", Ok(None));
        assert!(check.ok);
        assert!(check.what.contains("not root"), "{check:?}");
    }

    #[test]
    fn the_cgroup_line_says_whether_vmms_get_limits() {
        let check = vmm_cgroup_check(Ok("/sys/fs/cgroup/emberd.service".into()));
        assert!(check.ok);
        assert!(
            check.what.contains("cpu, memory and pids limits"),
            "{check:?}"
        );
        let check = vmm_cgroup_check(Err(CgroupError::NotUnified("/sys/fs/cgroup".into())));
        assert!(!check.ok);
        assert!(check.what.contains("run without"), "{check:?}");
    }

    #[test]
    fn tcg_is_not_called_a_security_boundary() {
        let check = tcg_check();
        assert!(!check.ok);
        assert!(check.what.contains("not treat TCG as a security boundary"));
        assert!(check.fix.unwrap().contains("KVM"));
    }

    #[test]
    fn the_firecracker_lines_say_whether_snapshots_and_the_jailer_are_used() {
        assert!(snapshots_check("Firecracker v1.15.1").ok);
        let old = snapshots_check("Firecracker v1.14.0");
        assert!(!old.ok && old.what.contains("#5809"), "{}", old.what);
        assert!(!snapshots_check("Firecracker v1.16.0").ok);
        let jailer = Path::new("/usr/local/bin/jailer");
        let on = jailer_check(Ok(()), jailer, "emberd-vmm");
        assert!(on.ok && on.what.contains("as emberd-vmm"), "{}", on.what);
        assert!(jailer_check(Err(Unjailed::OptedOut), jailer, "u").ok);
        let not_root = jailer_check(Err(Unjailed::NotRoot), jailer, "u");
        assert!(
            !not_root.ok && not_root.what.contains("needs root"),
            "{}",
            not_root.what
        );
    }

    #[test]
    fn the_boot_entry_line_says_how_firecracker_enters_the_built_kernel() {
        let data = tempfile::tempdir().unwrap();
        assert!(boot_entry_check(data.path(), "Firecracker v1.15.1").is_none());
        let manifest = |vmlinux: &Path| {
            let text = serde_json::json!({
                "kernel": {"bzimage": "k", "vmlinux": vmlinux, "release": "r", "source": "s"},
                "initramfs": "i", "packs": {}, "inputs_key": "x"
            });
            std::fs::write(data.path().join("manifest.json"), text.to_string()).unwrap();
        };
        // An ELF without the PVH note (this test binary) is entered through
        // the Linux boot protocol; PVH detection is tested beside the parser.
        manifest(&std::env::current_exe().unwrap());
        let check = boot_entry_check(data.path(), "Firecracker v1.15.1 (jailed)").unwrap();
        assert!(check.ok, "{}", check.what);
        assert!(
            check.what.contains("64-bit Linux boot protocol"),
            "{}",
            check.what
        );
        let not_elf = data.path().join("vmlinux");
        std::fs::write(&not_elf, vec![b'M'; 128]).unwrap();
        manifest(&not_elf);
        let check = boot_entry_check(data.path(), "Firecracker v1.15.1").unwrap();
        assert!(
            !check.ok && check.what.contains("no ELF kernel"),
            "{}",
            check.what
        );
    }

    #[test]
    fn missing_images_say_how_to_build_them() {
        let dir = tempfile::tempdir().unwrap();
        let check = images_check(dir.path());
        assert!(!check.ok);
        assert_eq!(check.fix.as_deref(), Some("make images"));
    }
}
