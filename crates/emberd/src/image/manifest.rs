//! The manifest of built guest artefacts: what the daemon reads at startup.
//!
//! Layout under the data dir:
//! `manifest.json` and `blobs/<sha256>[.<ext>]` (content-addressed files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use emberd_proto::warm::WarmLanguage;
use serde::{Deserialize, Serialize};

/// File name of the manifest inside the data dir.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The command that builds the images, quoted in error messages.
pub const BUILD_COMMAND: &str = "emberd image build";

/// Errors reading the manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("no guest images in {dir}: build them with `{BUILD_COMMAND}` (or `make images`)")]
    Missing { dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is missing ({path}): rebuild with `{BUILD_COMMAND}`")]
    MissingArtefact { what: String, path: PathBuf },
    #[error("unknown language pack: {0:?}")]
    UnknownPack(String),
}

/// The kernel in both forms the backends boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelArtefact {
    /// Compressed kernel, for QEMU.
    pub bzimage: PathBuf,
    /// Uncompressed ELF kernel, for Firecracker.
    pub vmlinux: PathBuf,
    /// `uname -r` of the kernel, e.g. "6.1.0-37-cloud-amd64".
    pub release: String,
    /// Where it came from: a Debian package name and version, or a user file.
    pub source: String,
    /// The package asked for (`--kernel-package`), when built from Debian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
    /// The build input it was resolved to (`deb:<package>=<version>` or
    /// `file:<sha256>`), so a rebuild needs no apt query.
    #[serde(default)]
    pub input: String,
}

/// One built language pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackArtefact {
    /// The pack's root file system (squashfs, zstd).
    pub squashfs: PathBuf,
    /// Interpreter argv; the code file's path is appended.
    pub interpreter: Vec<String>,
    /// Suffix of the code file, e.g. ".py".
    pub file_suffix: String,
    /// Code run once after boot so the first real exec is warm.
    pub warmup: String,
    /// Language of the agent's pre-started interpreter, if the pack has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_language: Option<WarmLanguage>,
}

/// Everything built, as recorded by the image builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kernel: KernelArtefact,
    pub initramfs: PathBuf,
    pub packs: BTreeMap<String, PackArtefact>,
    /// Content hash over all inputs; equal inputs give an equal key.
    pub inputs_key: String,
    /// The input key of each build step ("kernel", "initramfs", "pack:<name>").
    #[serde(default)]
    pub keys: BTreeMap<String, String>,
}

impl Manifest {
    /// Path of the manifest in `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(MANIFEST_FILE)
    }

    /// Reads the manifest of `data_dir`; relative paths in it are resolved
    /// against `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, ManifestError> {
        let path = Self::path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ManifestError::Missing {
                    dir: data_dir.to_owned(),
                })
            }
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let mut manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            })?;
        manifest.resolve(data_dir);
        Ok(manifest)
    }

    fn resolve(&mut self, data_dir: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = data_dir.join(&*p);
            }
        };
        abs(&mut self.kernel.bzimage);
        abs(&mut self.kernel.vmlinux);
        abs(&mut self.initramfs);
        for pack in self.packs.values_mut() {
            abs(&mut pack.squashfs);
        }
    }

    /// Checks that every artefact the manifest names exists.
    pub fn verify(&self) -> Result<(), ManifestError> {
        let mut required = vec![
            ("kernel (bzImage)".to_owned(), &self.kernel.bzimage),
            ("kernel (vmlinux)".to_owned(), &self.kernel.vmlinux),
            ("initramfs".to_owned(), &self.initramfs),
        ];
        for (name, pack) in &self.packs {
            required.push((format!("language pack {name:?}"), &pack.squashfs));
        }
        for (what, path) in required {
            if !path.is_file() {
                return Err(ManifestError::MissingArtefact {
                    what,
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The pack called `name`.
    pub fn pack(&self, name: &str) -> Result<&PackArtefact, ManifestError> {
        self.packs
            .get(name)
            .ok_or_else(|| ManifestError::UnknownPack(name.to_owned()))
    }

    /// Pack names, sorted.
    pub fn pack_names(&self) -> Vec<String> {
        self.packs.keys().cloned().collect()
    }
}

/// Fake guest images (any bytes do: nothing boots them) written to `dir`,
/// and the manifest naming them: packs `python` (with a warm interpreter)
/// and `shell`, whose template warm-up runs `warmup`. For tests on the fake
/// backend.
#[cfg(any(test, feature = "fake-backend"))]
pub fn fake_manifest(dir: &Path, warmup: &str) -> Manifest {
    std::fs::create_dir_all(dir).expect("fake image dir");
    let file = |name: &str| {
        let path = dir.join(name);
        std::fs::write(&path, name).expect("fake image");
        path
    };
    let pack =
        |name: &str, interpreter: &str, suffix: &str, warm: Option<WarmLanguage>| PackArtefact {
            squashfs: file(&format!("{name}.squashfs")),
            interpreter: vec![interpreter.to_owned()],
            file_suffix: suffix.to_owned(),
            warmup: warmup.to_owned(),
            warm_language: warm,
        };
    Manifest {
        kernel: KernelArtefact {
            bzimage: file("bzImage"),
            vmlinux: file("vmlinux"),
            release: "6.1.0-fake".into(),
            source: "fake".into(),
            requested: None,
            input: "fake".into(),
        },
        initramfs: file("initramfs.cpio"),
        packs: BTreeMap::from([
            (
                "python".to_owned(),
                pack(
                    "python",
                    "/usr/bin/python3",
                    ".py",
                    Some(WarmLanguage::Python),
                ),
            ),
            ("shell".to_owned(), pack("shell", "/bin/sh", ".sh", None)),
        ]),
        inputs_key: "fake".into(),
        keys: BTreeMap::new(),
    }
}
