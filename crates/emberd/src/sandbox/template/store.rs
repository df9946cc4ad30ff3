//! Template storage: one warmed-up, quiesced VM image per pack, on disk.
//!
//! A template is taken from a cold-booted VM after a warm-up exec and
//! `Quiesce`, with the agent connection closed before the pause (the agent
//! then waits for a new connection, which is what a restored clone gets).
//! It lives under `<data_dir>/snapshots/<pack>-<key>`, where the key hashes
//! everything that shapes the VM image: kernel, initramfs, pack, boot
//! arguments, vCPUs, memory, backend and its version. Templates are written
//! to a temporary directory and renamed into place; templates of the same
//! pack with another key are removed.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::vmm::{BootSpec, SnapshotFiles};

/// Marker written last into a complete template.
const COMPLETE_MARKER: &str = "complete";

/// Templates known to this daemon, per pack.
pub(in crate::sandbox) struct Templates {
    root: PathBuf,
    ready: Mutex<HashMap<String, SnapshotFiles>>,
    /// Packs whose template is being built, or whose build failed.
    building: Mutex<HashSet<String>>,
}

impl Templates {
    pub(in crate::sandbox) fn new(root: PathBuf) -> Self {
        Templates {
            root,
            ready: Mutex::new(HashMap::new()),
            building: Mutex::new(HashSet::new()),
        }
    }

    /// The directory all templates live in.
    pub(in crate::sandbox) fn root(&self) -> &Path {
        &self.root
    }

    /// The key of a template for VMs booted from `spec` (ids and dirs aside).
    pub(in crate::sandbox) fn key(spec: &BootSpec, backend: &str, backend_version: &str) -> String {
        let mut hash = Sha256::new();
        for part in [
            spec.kernel_bzimage.display().to_string(),
            spec.kernel_vmlinux.display().to_string(),
            spec.initramfs.display().to_string(),
            spec.root_disk.display().to_string(),
            spec.extra_kernel_args.join(" "),
            spec.vcpus.to_string(),
            spec.memory_mib.to_string(),
            backend.to_owned(),
            backend_version.to_owned(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hex::encode(&hash.finalize()[..8])
    }

    fn dir_for(&self, pack: &str, key: &str) -> PathBuf {
        self.root.join(format!("{pack}-{key}"))
    }

    /// The usable template of `pack` with `key`, looking on disk too.
    pub(in crate::sandbox) fn get(&self, pack: &str, key: &str) -> Option<SnapshotFiles> {
        if let Some(files) = self.ready.lock().get(pack) {
            if files.dir == self.dir_for(pack, key) {
                return Some(files.clone());
            }
        }
        let dir = self.dir_for(pack, key);
        if dir.join(COMPLETE_MARKER).is_file() {
            let files = SnapshotFiles { dir };
            self.ready.lock().insert(pack.to_owned(), files.clone());
            return Some(files);
        }
        None
    }

    /// Claims the right to build the template of `pack`; false when a build
    /// is under way or already failed in this daemon's lifetime.
    pub(in crate::sandbox) fn claim_build(&self, pack: &str) -> bool {
        self.building.lock().insert(pack.to_owned())
    }

    /// Ends a build claim. A failed build stays claimed so it is not retried
    /// in a loop; a successful one is released.
    pub(in crate::sandbox) fn finish_build(&self, pack: &str, ok: bool) {
        if ok {
            self.building.lock().remove(pack);
        }
    }

    /// A fresh temporary directory for a template being written.
    pub(in crate::sandbox) fn staging_dir(
        &self,
        pack: &str,
        key: &str,
    ) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.root)?;
        let dir = self
            .root
            .join(format!(".staging-{pack}-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    /// Moves a finished staging dir into place and removes stale templates.
    pub(in crate::sandbox) fn publish(
        &self,
        pack: &str,
        key: &str,
        staging: &Path,
    ) -> std::io::Result<SnapshotFiles> {
        std::fs::write(staging.join(COMPLETE_MARKER), key)?;
        let dir = self.dir_for(pack, key);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(staging, &dir)?;
        self.remove_stale(pack, key);
        let files = SnapshotFiles { dir };
        self.ready.lock().insert(pack.to_owned(), files.clone());
        Ok(files)
    }

    /// Forgets and deletes a template that failed to restore.
    pub(in crate::sandbox) fn discard(&self, pack: &str, files: &SnapshotFiles) {
        let mut ready = self.ready.lock();
        if ready.get(pack).is_some_and(|f| f.dir == files.dir) {
            ready.remove(pack);
        }
        let _ = std::fs::remove_dir_all(&files.dir);
    }

    fn remove_stale(&self, pack: &str, key: &str) {
        let keep = format!("{pack}-{key}");
        let prefix = format!("{pack}-");
        let staging_prefix = format!(".staging-{pack}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_template = name.starts_with(&prefix)
                && name != keep
                && name[prefix.len()..].bytes().all(|b| b.is_ascii_hexdigit());
            let stale_staging =
                name.starts_with(&staging_prefix) && entry.path() != self.root.join(&keep);
            if stale_template || stale_staging {
                tracing::info!(template = %name, "removing stale template");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(memory_mib: u32) -> BootSpec {
        BootSpec {
            sandbox_id: "sb_000000000000".into(),
            sandbox_dir: "/tmp/x".into(),
            kernel_bzimage: "/d/blobs/k".into(),
            kernel_vmlinux: "/d/blobs/v".into(),
            initramfs: "/d/blobs/i".into(),
            root_disk: "/d/blobs/p".into(),
            vcpus: 1,
            memory_mib,
            extra_kernel_args: vec![],
            boot_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn keys_change_with_what_shapes_the_vm_only() {
        let a = Templates::key(&spec(256), "qemu", "7.2");
        let mut other_sandbox = spec(256);
        other_sandbox.sandbox_id = "sb_111111111111".into();
        other_sandbox.sandbox_dir = "/tmp/y".into();
        assert_eq!(a, Templates::key(&other_sandbox, "qemu", "7.2"));
        assert_ne!(a, Templates::key(&spec(512), "qemu", "7.2"));
        assert_ne!(a, Templates::key(&spec(256), "qemu", "8.0"));
    }

    #[test]
    fn publishing_replaces_stale_templates_of_the_same_pack() {
        let root = tempfile::tempdir().unwrap();
        let templates = Templates::new(root.path().to_owned());
        let old = root.path().join("python-00000000000000aa");
        std::fs::create_dir(&old).unwrap();
        let other_pack = root.path().join("shell-00000000000000aa");
        std::fs::create_dir(&other_pack).unwrap();
        let staging = templates.staging_dir("python", "00000000000000bb").unwrap();
        std::fs::write(staging.join("vm.migration"), b"x").unwrap();
        let files = templates
            .publish("python", "00000000000000bb", &staging)
            .unwrap();
        assert!(files.dir.join("vm.migration").is_file());
        assert!(!old.exists());
        assert!(other_pack.exists());
        assert!(templates.get("python", "00000000000000bb").is_some());
        templates.discard("python", &files);
        assert!(templates.get("python", "00000000000000bb").is_none());
    }
}
