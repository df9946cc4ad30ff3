//! Picking the kernel modules a guest needs, with their dependencies, in
//! load order.
//!
//! Debian's kernel packages ship `.ko` (or `.ko.xz`) files but no
//! `modules.dep`, so dependencies are read from each module's `.modinfo`
//! section: NUL-separated `key=value` strings, of which `depends=` names
//! the modules it needs. Modules listed in `modules.builtin` are part of the
//! kernel and skipped.
//!
//! The chosen modules are cached decompressed, with an `order` file, for
//! the initramfs to pack.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The modules a sandbox needs: virtio-mmio devices, the pack disk, the
/// agent channels and the root file system.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "vmw_vsock_virtio_transport",
    "squashfs",
    "overlay",
];

/// Errors choosing modules.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {name} is neither built in nor present under {dir}")]
    Missing { name: String, dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel modules depend on each other in a cycle through {0}")]
    Cycle(String),
}

/// Writes the [`GUEST_MODULES`] and `extra` of the tree at `modules_root`
/// (none for a kernel without modules) and their dependencies into `out`,
/// decompressed, with `out/order` listing them in load order.
pub fn cache_guest_modules(
    modules_root: Option<&Path>,
    extra: &[&str],
    out: &Path,
) -> Result<(), ModuleError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ModuleError::Write { path, source }
    };
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).map_err(write_error(out))?;
    let mut order = String::new();
    if let Some(modules_root) = modules_root {
        let tree = ModuleTree::scan(modules_root)?;
        let wanted: Vec<&str> = GUEST_MODULES.iter().chain(extra).copied().collect();
        for path in tree.load_order(&wanted, read_module)? {
            let name = format!(
                "{}.ko",
                module_name(
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                )
            );
            let bytes = read_module(&path).map_err(|source| ModuleError::Read {
                path: path.clone(),
                source,
            })?;
            let target = out.join(&name);
            std::fs::write(&target, bytes).map_err(write_error(&target))?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    let order_path = out.join("order");
    std::fs::write(&order_path, order).map_err(write_error(&order_path))
}

/// Reads a module, decompressing `.ko.xz`.
fn read_module(path: &Path) -> std::io::Result<Vec<u8>> {
    if path.extension().is_some_and(|e| e == "xz") {
        let output = Command::new("xz")
            .args(["-dc"])
            .arg(path)
            .stdin(Stdio::null())
            .output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "xz -dc {} failed",
                path.display()
            )));
        }
        Ok(output.stdout)
    } else {
        std::fs::read(path)
    }
}

/// A module's canonical name: `virtio-blk.ko.xz` → `virtio_blk`.
pub fn module_name(file_name: &str) -> String {
    let stem = file_name
        .strip_suffix(".ko.xz")
        .or_else(|| file_name.strip_suffix(".ko.zst"))
        .or_else(|| file_name.strip_suffix(".ko"))
        .unwrap_or(file_name);
    stem.replace('-', "_")
}

/// The `depends=` list of a module's `.modinfo`.
pub fn parse_depends(module_bytes: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = module_bytes.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &module_bytes[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// A kernel's module tree: name → file.
pub struct ModuleTree {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: HashSet<String>,
}

impl ModuleTree {
    /// Indexes `lib/modules/<release>`.
    pub fn scan(dir: &Path) -> Result<Self, ModuleError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(current) = stack.pop() {
            let entries = std::fs::read_dir(&current).map_err(|source| ModuleError::Read {
                path: current.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                    if name.contains(".ko") {
                        files.insert(module_name(name), path);
                    }
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.rsplit('/').next())
            .map(module_name)
            .collect();
        Ok(ModuleTree {
            dir: dir.to_owned(),
            files,
            builtin,
        })
    }

    /// The files to load for `wanted`, dependencies first.
    pub fn load_order(
        &self,
        wanted: &[&str],
        read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Vec<PathBuf>, ModuleError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for name in wanted {
            self.visit(name, &read, &mut visiting, &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        read: &impl Fn(&Path) -> std::io::Result<Vec<u8>>,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<PathBuf>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            return Err(ModuleError::Cycle(name.to_owned()));
        }
        let path = self.files.get(name).ok_or_else(|| ModuleError::Missing {
            name: name.to_owned(),
            dir: self.dir.clone(),
        })?;
        let bytes = read(path).map_err(|source| ModuleError::Read {
            path: path.clone(),
            source,
        })?;
        for dependency in parse_depends(&bytes) {
            self.visit(&dependency, read, visiting, done, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push(path.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_module(dir: &Path, rel: &str, depends: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = b"\x7fELF....\0license=GPL\0".to_vec();
        bytes.extend_from_slice(format!("depends={depends}\0name=x\0").as_bytes());
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn dependencies_come_first_and_builtins_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fake_module(dir.path(), "kernel/net/vmw_vsock/vsock.ko", "");
        fake_module(
            dir.path(),
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
            "vsock",
        );
        fake_module(
            dir.path(),
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
            "vmw_vsock_virtio_transport_common,vsock",
        );
        fake_module(
            dir.path(),
            "kernel/drivers/block/virtio_blk.ko",
            "virtio,virtio_ring",
        );
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n",
        )
        .unwrap();
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let order = tree
            .load_order(&["vmw_vsock_virtio_transport", "virtio_blk"], |p| {
                std::fs::read(p)
            })
            .unwrap();
        let names: Vec<String> = order
            .iter()
            .map(|p| module_name(p.file_name().unwrap().to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "virtio_blk"
            ]
        );
    }

    #[test]
    fn a_missing_module_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tree = ModuleTree::scan(dir.path()).unwrap();
        let err = tree
            .load_order(&["overlay"], |p| std::fs::read(p))
            .unwrap_err();
        assert!(matches!(err, ModuleError::Missing { .. }), "{err}");
    }

    #[test]
    fn the_guest_modules_are_cached_decompressed_in_load_order() {
        let tree = tempfile::tempdir().unwrap();
        for name in GUEST_MODULES {
            fake_module(tree.path(), &format!("kernel/{name}.ko"), "");
        }
        // virtio_mmio needs overlay, which ships compressed.
        fake_module(tree.path(), "kernel/virtio_mmio.ko", "overlay");
        let overlay = tree.path().join("kernel/overlay.ko");
        let plain = std::fs::read(&overlay).unwrap();
        let status = Command::new("xz")
            .arg(&overlay)
            .status()
            .expect("xz is installed (scripts/install-deps.sh)");
        assert!(status.success() && !overlay.exists());

        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("modules");
        cache_guest_modules(Some(tree.path()), &[], &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("order")).unwrap(),
            "overlay.ko\nvirtio_mmio.ko\nvirtio_blk.ko\nvirtio_console.ko\n\
             vmw_vsock_virtio_transport.ko\nsquashfs.ko\n"
        );
        assert_eq!(std::fs::read(out.join("overlay.ko")).unwrap(), plain);

        // A kernel without modules leaves an empty order and nothing else.
        cache_guest_modules(None, &[], &out).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("order")).unwrap(), "");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(module_name("virtio-blk.ko.xz"), "virtio_blk");
        assert_eq!(module_name("overlay.ko"), "overlay");
        assert_eq!(parse_depends(b"abc\0depends=a-b,c\0x=y"), ["a_b", "c"]);
    }
}
