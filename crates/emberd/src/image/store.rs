//! The data dir's content-addressed store: input keys, `blobs/`, the module
//! cache, the manifest file and the removal of what no longer belongs.
//!
//! Layout: `manifest.json`, `blobs/<sha256><ext>`, `cache/modules-<key>/`.
//! Owns writing there; never decides what to build.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::Manifest;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The sha256 of `parts`, each followed by a NUL, in hex: a step's input key.
pub fn hash_parts(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

/// The sha256 of a file's content, in hex.
pub fn hash_file(path: &Path) -> Result<String, StoreError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(io_error(path))?;
    Ok(hex::encode(hash.finalize()))
}

/// The images under one data dir.
#[derive(Debug)]
pub struct Store {
    data_dir: PathBuf,
}

impl Store {
    pub fn new(data_dir: &Path) -> Self {
        Store {
            data_dir: data_dir.to_owned(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the kernel step with input key `kernel_key` caches its modules.
    pub fn modules_dir(&self, kernel_key: &str) -> PathBuf {
        self.data_dir
            .join("cache")
            .join(modules_dir_name(kernel_key))
    }

    /// Creates `blobs/`.
    pub fn create(&self) -> Result<(), StoreError> {
        let blobs = self.data_dir.join("blobs");
        std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))
    }

    /// A scratch directory inside the data dir (so finished files move into
    /// `blobs/` by rename), removed when dropped.
    pub fn scratch_dir(&self) -> Result<tempfile::TempDir, StoreError> {
        tempfile::tempdir_in(&self.data_dir).map_err(io_error(&self.data_dir))
    }

    /// A scratch file name inside the data dir, unique to this process.
    pub fn scratch_file(&self, stem: &str) -> PathBuf {
        self.data_dir
            .join(format!(".{stem}-{}", std::process::id()))
    }

    /// Moves `file` into `blobs/<sha256><ext>` and returns its path there.
    pub fn add(&self, file: &Path, ext: &str) -> Result<PathBuf, StoreError> {
        let hash = hash_file(file)?;
        let target = self.data_dir.join("blobs").join(format!("{hash}{ext}"));
        if std::fs::rename(file, &target).is_err() {
            std::fs::copy(file, &target).map_err(io_error(&target))?;
            let _ = std::fs::remove_file(file);
        }
        Ok(target)
    }

    /// Writes `manifest.json` atomically, with paths relative to the data dir.
    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let mut relative = manifest.clone();
        let strip = |p: &mut PathBuf| {
            if let Ok(rel) = p.strip_prefix(&self.data_dir) {
                *p = rel.to_owned();
            }
        };
        strip(&mut relative.kernel.bzimage);
        strip(&mut relative.kernel.vmlinux);
        strip(&mut relative.initramfs);
        for pack in relative.packs.values_mut() {
            strip(&mut pack.squashfs);
        }
        let text = serde_json::to_string_pretty(&relative).expect("manifest serializes");
        let path = Manifest::path(&self.data_dir);
        let tmp = self
            .data_dir
            .join(format!(".manifest-{}.json", std::process::id()));
        std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))
    }

    /// Deletes blobs and module caches `manifest` does not reference.
    pub fn remove_unreferenced(&self, manifest: &Manifest) {
        let mut keep: Vec<&Path> = vec![
            &manifest.kernel.bzimage,
            &manifest.kernel.vmlinux,
            &manifest.initramfs,
        ];
        keep.extend(manifest.packs.values().map(|p| p.squashfs.as_path()));
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("blobs")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if !keep
                    .iter()
                    .any(|k| *k == path || k.file_name() == path.file_name())
                {
                    tracing::info!("removing unreferenced {}", path.display());
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let current = modules_dir_name(manifest.keys.get("kernel").map_or("", String::as_str));
        if let Ok(entries) = std::fs::read_dir(self.data_dir.join("cache")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy() != current {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

fn modules_dir_name(kernel_key: &str) -> String {
    format!("modules-{}", &kernel_key[..16.min(kernel_key.len())])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::image::manifest::KernelArtefact;

    #[test]
    fn blobs_are_named_by_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create().unwrap();
        let file = store.scratch_file("x");
        std::fs::write(&file, b"kernel").unwrap();
        let blob = store.add(&file, ".bzimage").unwrap();
        assert_eq!(
            blob,
            dir.path().join("blobs").join(format!(
                "{}.bzimage",
                hex::encode(Sha256::digest(b"kernel"))
            ))
        );
        assert!(!file.exists());
        assert_eq!(std::fs::read(&blob).unwrap(), b"kernel");
    }

    #[test]
    fn the_manifest_is_relative_and_cleanup_keeps_what_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        store.create().unwrap();
        let mut blobs = Vec::new();
        for (content, ext) in [
            ("b", ".bzimage"),
            ("v", ".vmlinux"),
            ("i", ".cpio"),
            ("old", ".cpio"),
        ] {
            let file = store.scratch_file(content);
            std::fs::write(&file, content).unwrap();
            blobs.push(store.add(&file, ext).unwrap());
        }
        let key = "0123456789abcdef0123";
        std::fs::create_dir_all(store.modules_dir(key)).unwrap();
        std::fs::create_dir_all(store.modules_dir("fedcba9876543210")).unwrap();
        let manifest = Manifest {
            kernel: KernelArtefact {
                bzimage: blobs[0].clone(),
                vmlinux: blobs[1].clone(),
                release: "r".into(),
                source: "s".into(),
                requested: None,
                input: "file:x".into(),
            },
            initramfs: blobs[2].clone(),
            packs: BTreeMap::new(),
            inputs_key: "k".into(),
            keys: BTreeMap::from([("kernel".to_owned(), key.to_owned())]),
        };
        store.write_manifest(&manifest).unwrap();
        store.remove_unreferenced(&manifest);

        let text = std::fs::read_to_string(Manifest::path(dir.path())).unwrap();
        assert!(text.contains("\"initramfs\": \"blobs/"), "{text}");
        assert_eq!(Manifest::load(dir.path()).unwrap(), manifest);
        assert!(blobs[..3].iter().all(|b| b.is_file()));
        assert!(!blobs[3].exists());
        assert!(store.modules_dir(key).is_dir());
        assert!(!store.modules_dir("fedcba9876543210").exists());
    }
}
