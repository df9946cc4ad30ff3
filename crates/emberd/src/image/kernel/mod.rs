//! The guest kernel: a Debian kernel package (fetched with `apt-get
//! download`, unpacked with `dpkg-deb -x`) or a kernel file of the user's,
//! stored both as the bzImage QEMU boots and the ELF `vmlinux` Firecracker
//! boots, with the guest's modules cached for the initramfs.
//!
//! Owns resolving which kernel to build (package and version) and fetching
//! it; never writes the manifest.

mod bzimage;
mod config;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use self::bzimage::{extract_vmlinux, BzimageError};
pub use self::config::{ctrl_alt_del_support, CtrlAltDelSupport};
use super::initramfs::modules::{self, ModuleError};
use super::manifest::{KernelArtefact, Manifest};
use super::store::{hash_file, Store, StoreError};
use super::tool::{self, ToolError};

/// Which kernel to build.
#[derive(Debug, Clone, Copy)]
pub enum KernelChoice<'a> {
    /// A Debian package, e.g. `linux-image-cloud-amd64` (a meta package is
    /// followed to the real one).
    Package(&'a str),
    /// A bzImage or ELF `vmlinux` of the user's, with its drivers built in.
    File(&'a Path),
}

impl KernelChoice<'_> {
    /// The package asked for, as recorded in the manifest.
    pub fn requested(&self) -> Option<String> {
        match self {
            KernelChoice::Package(name) => Some((*name).to_owned()),
            KernelChoice::File(_) => None,
        }
    }
}

/// Errors resolving or fetching the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("apt knows no package {0}")]
    UnknownPackage(String),
    #[error("apt has no candidate for {0}")]
    NoCandidate(String),
    #[error("apt-get download {0} produced no .deb")]
    NoDeb(String),
    #[error("{0} has no boot/vmlinuz-*")]
    NoVmlinuz(String),
    #[error(transparent)]
    Bzimage(#[from] BzimageError),
    #[error("cannot cache the guest's kernel modules")]
    Modules(#[source] ModuleError),
    #[error("cannot store the kernel")]
    Store(#[source] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Identifies the kernel input: `deb:<package>=<version>`, or
/// `file:<sha256>` for a file. The version recorded by the last build of
/// the same package is reused unless `refresh`, so an up-to-date build
/// never queries apt.
pub fn resolve_source(
    choice: KernelChoice<'_>,
    refresh: bool,
    previous: Option<&Manifest>,
) -> Result<String, KernelError> {
    let package = match choice {
        KernelChoice::File(file) => {
            let hash = hash_file(file).map_err(KernelError::Store)?;
            return Ok(format!("file:{hash}"));
        }
        KernelChoice::Package(package) => package,
    };
    if !refresh {
        if let Some(kernel) = previous.map(|m| &m.kernel) {
            if kernel.requested.as_deref() == Some(package) && kernel.input.starts_with("deb:") {
                return Ok(kernel.input.clone());
            }
        }
    }
    tool::require("apt-cache", "apt")?;
    let (package, version) = match resolve_package(package)? {
        Some(found) => found,
        None => {
            // A fresh machine may have no package lists yet.
            tracing::info!("no candidate for {package}; running apt-get update");
            tool::run(Command::new("apt-get").args(["update", "-qq"]))?;
            resolve_package(package)?
                .ok_or_else(|| KernelError::UnknownPackage(package.to_owned()))?
        }
    };
    Ok(format!("deb:{package}={version}"))
}

/// Follows a meta package (`linux-image-cloud-amd64`) to the real one.
fn resolve_package(name: &str) -> Result<Option<(String, String)>, KernelError> {
    let Some(version) = candidate_version(name)? else {
        return Ok(None);
    };
    let depends = String::from_utf8_lossy(&tool::run(
        Command::new("apt-cache").args(["depends", name]),
    )?)
    .into_owned();
    let real = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && !d.starts_with('<'));
    match real {
        Some(real) if real != name => {
            let version = candidate_version(real)?
                .ok_or_else(|| KernelError::NoCandidate(real.to_owned()))?;
            Ok(Some((real.to_owned(), version)))
        }
        _ => Ok(Some((name.to_owned(), version))),
    }
}

fn candidate_version(name: &str) -> Result<Option<String>, KernelError> {
    let policy = String::from_utf8_lossy(&tool::run(
        Command::new("apt-cache").args(["policy", name]),
    )?)
    .into_owned();
    Ok(policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .find(|v| *v != "(none)")
        .map(str::to_owned))
}

/// Fetches the kernel `source` names into `store`, and caches the guest's
/// modules from its package in `modules_out`.
pub fn fetch(
    store: &Store,
    choice: KernelChoice<'_>,
    source: &str,
    modules_out: &Path,
) -> Result<KernelArtefact, KernelError> {
    let work = store.scratch_dir().map_err(KernelError::Store)?;
    let (bzimage, release, modules_root, origin) = match choice {
        KernelChoice::File(file) => (
            file.to_owned(),
            String::from("custom"),
            None,
            format!("file {}", file.display()),
        ),
        KernelChoice::Package(_) => {
            let spec = source.trim_start_matches("deb:");
            let (vmlinuz, release, modules) = unpack_package(spec, work.path())?;
            (vmlinuz, release, modules, format!("Debian package {spec}"))
        }
    };
    let image = std::fs::read(&bzimage).map_err(io_error(&bzimage))?;
    let vmlinux_tmp = work.path().join("vmlinux");
    if image.starts_with(b"\x7fELF") {
        std::fs::write(&vmlinux_tmp, &image).map_err(io_error(&vmlinux_tmp))?;
    } else {
        std::fs::write(&vmlinux_tmp, extract_vmlinux(&image)?).map_err(io_error(&vmlinux_tmp))?;
    }
    let bz_tmp = work.path().join("bzImage");
    std::fs::write(&bz_tmp, &image).map_err(io_error(&bz_tmp))?;

    let keyboard = keyboard_modules(work.path(), &release);
    modules::cache_guest_modules(modules_root.as_deref(), &keyboard, modules_out)
        .map_err(KernelError::Modules)?;

    Ok(KernelArtefact {
        bzimage: store.add(&bz_tmp, ".bzimage").map_err(KernelError::Store)?,
        vmlinux: store
            .add(&vmlinux_tmp, ".vmlinux")
            .map_err(KernelError::Store)?,
        release,
        source: origin,
        requested: choice.requested(),
        input: source.to_owned(),
    })
}

/// The modules Firecracker's Ctrl-Alt-Del needs loaded in the guest, from
/// the unpacked package's `boot/config-<release>` in `work` (none for a
/// user's kernel, which has no config here). Says what it found.
fn keyboard_modules(work: &Path, release: &str) -> Vec<&'static str> {
    let path = work.join("root/boot").join(format!("config-{release}"));
    let Ok(config) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    match ctrl_alt_del_support(&config) {
        CtrlAltDelSupport::BuiltIn => {
            tracing::debug!(
                release,
                "i8042 and atkbd are built in: Firecracker stops by Ctrl-Alt-Del"
            );
            Vec::new()
        }
        CtrlAltDelSupport::Modules(modules) => {
            tracing::info!(
                release,
                ?modules,
                "i8042/atkbd are modules: the initramfs loads them for Firecracker's Ctrl-Alt-Del"
            );
            modules
        }
        CtrlAltDelSupport::Missing(options) => {
            tracing::warn!(release, ?options, "the guest kernel lacks i8042/atkbd: Firecracker ignores Ctrl-Alt-Del there and stops VMs by signal");
            Vec::new()
        }
    }
}

/// Downloads and unpacks `spec` (`package=version`) in `work`: its
/// `boot/vmlinuz-*`, the release, and its module tree if it has one.
fn unpack_package(
    spec: &str,
    work: &Path,
) -> Result<(PathBuf, String, Option<PathBuf>), KernelError> {
    tool::run(
        Command::new("apt-get")
            .args(["download", "-q", spec])
            .current_dir(work),
    )?;
    let deb = std::fs::read_dir(work)
        .map_err(io_error(work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::NoDeb(spec.to_owned()))?;
    let root = work.join("root");
    tool::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .map_err(io_error(&boot))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .ok_or_else(|| KernelError::NoVmlinuz(spec.to_owned()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.is_dir());
    Ok((vmlinuz, release, modules))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn manifest_with_kernel(requested: &str, input: &str) -> Manifest {
        Manifest {
            kernel: KernelArtefact {
                bzimage: "blobs/a.bzimage".into(),
                vmlinux: "blobs/a.vmlinux".into(),
                release: "6.1.0-1-cloud-amd64".into(),
                source: "Debian package x".into(),
                requested: Some(requested.into()),
                input: input.into(),
            },
            initramfs: "blobs/b.cpio".into(),
            packs: BTreeMap::new(),
            inputs_key: String::new(),
            keys: BTreeMap::new(),
        }
    }

    #[test]
    fn the_recorded_kernel_version_is_reused_for_the_same_package() {
        // A version apt could never report proves apt was not asked.
        let previous = manifest_with_kernel("linux-image-cloud-amd64", "deb:recorded=0~test");
        assert_eq!(
            resolve_source(
                KernelChoice::Package("linux-image-cloud-amd64"),
                false,
                Some(&previous)
            )
            .unwrap(),
            "deb:recorded=0~test"
        );
    }

    #[test]
    fn a_user_kernel_is_keyed_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmlinux");
        std::fs::write(&file, b"\x7fELF kernel").unwrap();
        let previous = manifest_with_kernel("linux-image-cloud-amd64", "deb:recorded=0~test");
        let choice = KernelChoice::File(&file);
        let first = resolve_source(choice, false, Some(&previous)).unwrap();
        assert!(first.starts_with("file:"), "{first}");
        std::fs::write(&file, b"\x7fELF other kernel").unwrap();
        assert_ne!(
            resolve_source(choice, false, Some(&previous)).unwrap(),
            first
        );
    }

    #[test]
    fn a_user_elf_kernel_is_stored_in_both_forms_without_modules() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create().unwrap();
        let file = dir.path().join("my-vmlinux");
        std::fs::write(&file, b"\x7fELF kernel").unwrap();
        let modules = dir.path().join("cache/modules-x");
        let choice = KernelChoice::File(&file);
        let kernel = fetch(&store, choice, "file:x", &modules).unwrap();
        assert_eq!(std::fs::read(&kernel.bzimage).unwrap(), b"\x7fELF kernel");
        assert_eq!(std::fs::read(&kernel.vmlinux).unwrap(), b"\x7fELF kernel");
        assert_eq!(
            (kernel.release.as_str(), kernel.requested),
            ("custom", None)
        );
        assert_eq!(std::fs::read_to_string(modules.join("order")).unwrap(), "");
        assert!(file.is_file(), "the user's file is left in place");
    }
}
