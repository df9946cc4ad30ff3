//! Language packs: their definition files (`packs/<name>.toml`) and their
//! root file systems, built with `mmdebstrap` and packed with `mksquashfs`.
//!
//! Owns reading and checking definitions and building one pack; never
//! decides whether a pack needs building.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use emberd_proto::warm::WarmLanguage;
use serde::Deserialize;

use super::store::{Store, StoreError};
use super::tool::{self, ToolError};

/// The Debian release packs are built from.
pub const DEBIAN_SUITE: &str = "bookworm";

/// One pack definition file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PackDefinition {
    /// Debian packages on top of the essential set.
    #[serde(default)]
    pub packages: Vec<String>,
    pub interpreter: Vec<String>,
    pub file_suffix: String,
    #[serde(default)]
    pub warmup: String,
    #[serde(default)]
    pub warm_language: Option<WarmLanguage>,
}

/// A definition and the text it was read from (part of the pack's input key).
#[derive(Debug, Clone)]
pub struct DefinitionFile {
    pub definition: PackDefinition,
    pub text: String,
}

/// Errors reading pack definitions.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read pack definitions in {path} (pass --packs-dir)")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid pack definition {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no pack definitions in {0}")]
    NoPacks(PathBuf),
    #[error("unknown pack {0:?}")]
    UnknownPack(String),
}

/// Errors building a pack.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("cannot store the pack")]
    Store(#[from] StoreError),
}

/// Reads `<dir>/*.toml`, keeping `only` when given: name → definition.
pub fn read_definitions(
    dir: &Path,
    only: &[String],
) -> Result<BTreeMap<String, DefinitionFile>, DefinitionError> {
    let mut packs = BTreeMap::new();
    let entries = std::fs::read_dir(dir).map_err(|source| DefinitionError::Dir {
        path: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || name.is_empty()
        {
            return Err(DefinitionError::Invalid {
                path,
                message: "pack names are lowercase letters, digits and '-'".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| DefinitionError::Read {
            path: path.clone(),
            source,
        })?;
        let definition: PackDefinition =
            toml::from_str(&text).map_err(|e| DefinitionError::Invalid {
                path: path.clone(),
                message: e.message().to_owned(),
            })?;
        if definition.interpreter.is_empty() {
            return Err(DefinitionError::Invalid {
                path,
                message: "interpreter must not be empty".into(),
            });
        }
        packs.insert(name, DefinitionFile { definition, text });
    }
    if packs.is_empty() {
        return Err(DefinitionError::NoPacks(dir.to_owned()));
    }
    for name in only {
        if !packs.contains_key(name) {
            return Err(DefinitionError::UnknownPack(name.clone()));
        }
    }
    if !only.is_empty() {
        packs.retain(|name, _| only.contains(name));
    }
    Ok(packs)
}

/// The apt sources mmdebstrap uses: `explicit` (`--mirror`), else this
/// host's apt sources files.
pub fn mirrors(explicit: &[String]) -> Vec<String> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let mut found = Vec::new();
    if Path::new("/etc/apt/sources.list").is_file() {
        found.push("/etc/apt/sources.list".to_owned());
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut files: Vec<String> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .map(|p| p.display().to_string())
            .collect();
        files.sort();
        found.extend(files);
    }
    if found.is_empty() {
        found.push("http://deb.debian.org/debian".to_owned());
    }
    found
}

/// Builds pack `name` into a squashfs blob of `store`; returns its path.
pub fn build(
    store: &Store,
    name: &str,
    definition: &PackDefinition,
    mirrors: &[String],
) -> Result<PathBuf, PackError> {
    let work = store.scratch_dir()?;
    let root = work.path().join("root");
    let mut command = Command::new("mmdebstrap");
    command.args(["--variant=essential", "-q"]);
    if !definition.packages.is_empty() {
        command.arg(format!("--include={}", definition.packages.join(",")));
    }
    for excluded in [
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/locale/*",
        "/usr/share/info/*",
        "/usr/share/lintian/*",
    ] {
        command.arg(format!("--dpkgopt=path-exclude={excluded}"));
    }
    command.arg(DEBIAN_SUITE).arg(&root).args(mirrors);
    tool::run(&mut command)?;
    // Empty apt caches and logs carry nothing a sandbox needs.
    for dir in ["var/cache/apt", "var/lib/apt/lists", "var/log"] {
        let path = root.join(dir);
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::create_dir_all(&path);
        }
    }
    for mount_point in ["proc", "sys", "dev", "run", "tmp", "mnt", "root"] {
        let _ = std::fs::create_dir_all(root.join(mount_point));
    }
    let out = work.path().join(format!("{name}.squashfs"));
    tool::run(Command::new("mksquashfs").arg(&root).arg(&out).args([
        "-comp",
        "zstd",
        "-noappend",
        "-all-root",
        "-quiet",
        "-no-progress",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
    ]))?;
    Ok(store.add(&out, ".squashfs")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_pack_definitions_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        let packs = read_definitions(&dir, &[]).unwrap();
        assert_eq!(
            packs.keys().collect::<Vec<_>>(),
            ["node", "python", "shell"]
        );
        assert_eq!(packs["python"].definition.file_suffix, ".py");
        let only = read_definitions(&dir, &["shell".into()]).unwrap();
        assert_eq!(only.keys().collect::<Vec<_>>(), ["shell"]);
        let err = read_definitions(&dir, &["ruby".into()]).unwrap_err();
        assert!(matches!(err, DefinitionError::UnknownPack(_)), "{err}");
    }

    #[test]
    fn a_pack_with_unknown_keys_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.toml"),
            "interpreter = [\"sh\"]\nfile_suffix = \".sh\"\npackagez = []\n",
        )
        .unwrap();
        let err = read_definitions(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_missing_packs_dir_names_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("packs");
        let err = read_definitions(&missing, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot read pack definitions in {} (pass --packs-dir)",
                missing.display()
            )
        );
        // A relative directory is named as the absolute one it was looked for at.
        let relative = Path::new("no-such-packs-dir");
        let err = read_definitions(relative, &[]).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "cannot read pack definitions in {} (pass --packs-dir)",
                std::env::current_dir().unwrap().join(relative).display()
            )
        );
        let err = read_definitions(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, DefinitionError::NoPacks(_)), "{err}");
    }
}
