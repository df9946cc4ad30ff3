//! Whether this host has a KVM that can run stock guest kernels.
//!
//! `/dev/kvm` alone proves little: some hosts expose a paravirtual nested
//! KVM (the `kvm_pvm` module) that cannot run unmodified kernels. Hardware
//! KVM means the `kvm_intel` or `kvm_amd` module is loaded and `/dev/kvm`
//! opens read-write.

use std::path::Path;

/// What the host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    /// Hardware virtualisation through this module, and `/dev/kvm` is usable.
    Hardware { module: String },
    /// `/dev/kvm` is backed by `kvm_pvm`, which cannot run stock kernels.
    Paravirtual,
    /// No `/dev/kvm`.
    Missing,
    /// `/dev/kvm` exists but cannot be opened read-write.
    NoAccess { reason: String },
    /// `/dev/kvm` exists but no known hardware module is loaded.
    Unknown,
}

impl KvmStatus {
    /// One sentence on what this means for running VMs.
    pub fn explain(&self) -> String {
        match self {
            KvmStatus::Hardware { module } => format!("hardware KVM through {module}"),
            KvmStatus::Paravirtual => {
                "/dev/kvm is a paravirtual nested KVM (kvm_pvm), which cannot run stock kernels"
                    .into()
            }
            KvmStatus::Missing => "/dev/kvm does not exist".into(),
            KvmStatus::NoAccess { reason } => {
                format!("/dev/kvm cannot be opened read-write: {reason}")
            }
            KvmStatus::Unknown => {
                "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded".into()
            }
        }
    }

    pub fn is_hardware(&self) -> bool {
        matches!(self, KvmStatus::Hardware { .. })
    }
}

/// Probes this host.
pub fn hardware_kvm() -> KvmStatus {
    probe(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

fn probe(dev_kvm: &Path, sys_module: &Path) -> KvmStatus {
    if !dev_kvm.exists() {
        return KvmStatus::Missing;
    }
    if sys_module.join("kvm_pvm").exists() {
        return KvmStatus::Paravirtual;
    }
    let Some(module) = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| sys_module.join(m).exists())
    else {
        return KvmStatus::Unknown;
    };
    match std::fs::File::options()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        Ok(_) => KvmStatus::Hardware {
            module: module.to_owned(),
        },
        Err(e) => KvmStatus::NoAccess {
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(dev: bool, modules: &[&str]) -> (tempfile::TempDir, KvmStatus) {
        let root = tempfile::tempdir().unwrap();
        let dev_kvm = root.path().join("kvm");
        if dev {
            std::fs::write(&dev_kvm, b"").unwrap();
        }
        let sys = root.path().join("module");
        for m in modules {
            std::fs::create_dir_all(sys.join(m)).unwrap();
        }
        let status = probe(&dev_kvm, &sys);
        (root, status)
    }

    #[test]
    fn paravirtual_kvm_is_not_hardware() {
        let (_root, status) = host(true, &["kvm", "kvm_pvm"]);
        assert_eq!(status, KvmStatus::Paravirtual);
        assert!(!status.is_hardware());
    }

    #[test]
    fn intel_module_with_an_openable_device_is_hardware() {
        let (_root, status) = host(true, &["kvm", "kvm_intel"]);
        assert_eq!(
            status,
            KvmStatus::Hardware {
                module: "kvm_intel".into()
            }
        );
    }

    #[test]
    fn no_device_is_missing() {
        let (_root, status) = host(false, &["kvm_amd"]);
        assert_eq!(status, KvmStatus::Missing);
    }
}
