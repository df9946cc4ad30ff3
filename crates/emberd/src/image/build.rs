//! `emberd image build`: kernel, initramfs and language packs from Debian
//! packages, content-addressed under the data dir.
//!
//! Three steps, each keyed by a hash of its inputs and skipped when the
//! manifest already records that key and its files exist:
//! - kernel: the package's bzImage and the ELF `vmlinux` unpacked from it,
//!   plus the guest's modules (with dependencies, in load order) cached
//!   beside them;
//! - initramfs: `/init` (the static `emberd-init`), `/dev/console`, the
//!   modules and `/lib/modules/order`;
//! - one squashfs per pack, from `mmdebstrap` + `mksquashfs -comp zstd`.
//!
//! The manifest is written atomically; blobs no longer referenced are removed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::cpio::{self, Entry};
use super::manifest::{KernelArtefact, Manifest, PackArtefact};
use super::modules::{ModuleError, ModuleTree, GUEST_MODULES};

/// Bumped when the builder's output changes for equal inputs.
const BUILDER_VERSION: &str = "1";
const DEBIAN_SUITE: &str = "bookworm";

/// Flags of `emberd image build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Where the images go.
    #[arg(long, env = "EMBERD_DATA_DIR", default_value_os_t = crate::config::default_data_dir())]
    pub data_dir: PathBuf,
    /// The static `emberd-init` binary to put in the initramfs.
    #[arg(long, env = "EMBERD_INIT_BIN")]
    pub init_bin: PathBuf,
    /// Debian kernel package to boot.
    #[arg(long, default_value = "linux-image-cloud-amd64")]
    pub kernel_package: String,
    /// A kernel file to use instead (bzImage or ELF vmlinux, drivers built in).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Directory of pack definitions (`<name>.toml`).
    #[arg(long, env = "EMBERD_PACKS_DIR", default_value = "packs")]
    pub packs_dir: PathBuf,
    /// Build only these packs (repeatable) [default: every pack].
    #[arg(long = "pack")]
    pub packs: Vec<String>,
    /// Debian mirror or apt sources file for the packs [default: this host's apt sources].
    #[arg(long)]
    pub mirror: Vec<String>,
    /// Rebuild everything even when up to date.
    #[arg(long)]
    pub force: bool,
    /// Ask apt for the kernel package's current version instead of reusing
    /// the one recorded by the last build.
    #[arg(long)]
    pub refresh_kernel: bool,
}

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
    pub warm_language: Option<String>,
}

/// Errors of the image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{tool} is not installed: install the Debian package {package} (or run `make setup`)")]
    MissingTool { tool: String, package: String },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid pack definition {path}: {message}")]
    Pack { path: PathBuf, message: String },
    #[error("no pack definitions in {0}")]
    NoPacks(PathBuf),
    #[error("unknown pack {0:?}")]
    UnknownPack(String),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{path} cannot be the guest's /init: {why}")]
    InitBinary { path: PathBuf, why: String },
    #[error(transparent)]
    Modules(#[from] ModuleError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a build did.
#[derive(Debug, Default)]
pub struct BuildReport {
    pub built: Vec<String>,
    pub reused: Vec<String>,
    pub inputs_key: String,
    pub data_dir: PathBuf,
    pub seconds: f64,
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = &self.inputs_key[..12.min(self.inputs_key.len())];
        if self.built.is_empty() {
            write!(
                f,
                "images up to date (inputs {key}), nothing to do [{:.2} s]",
                self.seconds
            )
        } else {
            write!(
                f,
                "built {} (reused {}) into {} (inputs {key}) in {:.1} s",
                self.built.join(", "),
                if self.reused.is_empty() {
                    "nothing".into()
                } else {
                    self.reused.join(", ")
                },
                self.data_dir.display(),
                self.seconds
            )
        }
    }
}

/// Runs the build.
pub fn build(args: &BuildArgs) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let previous = Manifest::load(&args.data_dir).ok();
    let previous_keys = previous
        .as_ref()
        .map(|m| m.keys.clone())
        .unwrap_or_default();
    let mut report = BuildReport {
        data_dir: args.data_dir.clone(),
        ..BuildReport::default()
    };
    let mut keys = BTreeMap::new();
    let reusable = |step: &str, key: &str, files: &[&Path]| {
        !args.force
            && previous_keys.get(step).map(String::as_str) == Some(key)
            && files.iter().all(|f| f.is_file())
    };

    // Plan: every step's input key, and whether its output can be reused.
    let kernel_source = kernel_source(args, previous.as_ref())?;
    let kernel_key = hash_parts(&[BUILDER_VERSION, "kernel", &kernel_source]);
    let modules_dir = args
        .data_dir
        .join("cache")
        .join(format!("modules-{}", &kernel_key[..16]));
    let reused_kernel = previous.as_ref().filter(|m| {
        reusable(
            "kernel",
            &kernel_key,
            &[&m.kernel.bzimage, &m.kernel.vmlinux],
        ) && modules_dir.join("order").is_file()
    });
    let init_hash = hash_file(&args.init_bin)?;
    let initramfs_key = hash_parts(&[BUILDER_VERSION, "initramfs", &kernel_key, &init_hash]);
    let reused_initramfs = previous
        .as_ref()
        .filter(|m| reusable("initramfs", &initramfs_key, &[&m.initramfs]));
    let definitions = read_packs(&args.packs_dir, &args.packs)?;
    let mirrors = mirrors(args);
    let mut pack_plans = Vec::new();
    for (name, (definition, text)) in &definitions {
        let key = hash_parts(&[
            BUILDER_VERSION,
            "pack",
            name,
            text,
            &mirrors.join("\n"),
            DEBIAN_SUITE,
        ]);
        let step_name = format!("pack:{name}");
        let reused = previous
            .as_ref()
            .and_then(|m| m.packs.get(name))
            .filter(|p| reusable(&step_name, &key, &[&p.squashfs]))
            .map(|p| p.squashfs.clone());
        pack_plans.push((name, definition, step_name, key, reused));
    }
    // Missing host tools stop the build before any work is done.
    if reused_kernel.is_none() && args.kernel.is_none() {
        require_tool("apt-get", "apt")?;
        require_tool("dpkg-deb", "dpkg")?;
    }
    if pack_plans.iter().any(|plan| plan.4.is_none()) {
        require_tool("mmdebstrap", "mmdebstrap")?;
        require_tool("mksquashfs", "squashfs-tools")?;
    }
    if reused_initramfs.is_none() {
        check_init_binary(&args.init_bin)?;
    }
    let blobs = args.data_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io_error(&blobs))?;

    // Kernel.
    let kernel = match reused_kernel {
        Some(m) => {
            report.reused.push("kernel".into());
            KernelArtefact {
                requested: args.kernel.is_none().then(|| args.kernel_package.clone()),
                input: kernel_source.clone(),
                ..m.kernel.clone()
            }
        }
        None => {
            let step = Instant::now();
            let kernel = fetch_kernel(args, &kernel_source, &modules_dir)?;
            eprintln!(
                "emberd: kernel {} ready in {:.1} s",
                kernel.release,
                step.elapsed().as_secs_f64()
            );
            report.built.push("kernel".into());
            kernel
        }
    };
    keys.insert("kernel".to_owned(), kernel_key.clone());

    // Initramfs.
    let initramfs = match reused_initramfs {
        Some(m) => {
            report.reused.push("initramfs".into());
            m.initramfs.clone()
        }
        None => {
            let step = Instant::now();
            let path = build_initramfs(args, &modules_dir)?;
            eprintln!(
                "emberd: initramfs ready in {:.1} s",
                step.elapsed().as_secs_f64()
            );
            report.built.push("initramfs".into());
            path
        }
    };
    keys.insert("initramfs".to_owned(), initramfs_key.clone());

    // Packs.
    let mut packs = BTreeMap::new();
    for (name, definition, step_name, key, reused) in pack_plans {
        let squashfs = match reused {
            Some(squashfs) => {
                report.reused.push(format!("pack {name}"));
                squashfs
            }
            None => {
                let step = Instant::now();
                let path = build_pack(args, name, definition, &mirrors)?;
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                eprintln!(
                    "emberd: pack {name} ready in {:.1} s ({:.1} MiB)",
                    step.elapsed().as_secs_f64(),
                    size as f64 / 1048576.0
                );
                report.built.push(format!("pack {name}"));
                path
            }
        };
        keys.insert(step_name, key);
        packs.insert(
            name.clone(),
            PackArtefact {
                squashfs,
                interpreter: definition.interpreter.clone(),
                file_suffix: definition.file_suffix.clone(),
                warmup: definition.warmup.clone(),
                warm_language: definition.warm_language.clone(),
            },
        );
    }
    // Packs not rebuilt this time (a `--pack` subset) keep their entries.
    if let Some(m) = &previous {
        for (name, artefact) in &m.packs {
            if !packs.contains_key(name) && !args.packs.is_empty() && artefact.squashfs.is_file() {
                packs.insert(name.clone(), artefact.clone());
                if let Some(key) = previous_keys.get(&format!("pack:{name}")) {
                    keys.insert(format!("pack:{name}"), key.clone());
                }
            }
        }
    }

    let inputs_key = hash_parts(&keys.values().map(String::as_str).collect::<Vec<_>>());
    let manifest = Manifest {
        kernel,
        initramfs,
        packs,
        inputs_key: inputs_key.clone(),
        keys,
    };
    if !report.built.is_empty() || previous.as_ref() != Some(&manifest) {
        write_manifest(&args.data_dir, &manifest)?;
        remove_unreferenced(&args.data_dir, &manifest);
    }
    report.inputs_key = inputs_key;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn hash_parts(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hex::encode(hash.finalize())
}

fn hash_file(path: &Path) -> Result<String, ImageError> {
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash).map_err(io_error(path))?;
    Ok(hex::encode(hash.finalize()))
}

/// Moves `file` into `blobs/<sha256><ext>` and returns the path relative to the data dir.
fn store_blob(data_dir: &Path, file: &Path, ext: &str) -> Result<PathBuf, ImageError> {
    let hash = hash_file(file)?;
    let relative = PathBuf::from("blobs").join(format!("{hash}{ext}"));
    let target = data_dir.join(&relative);
    if std::fs::rename(file, &target).is_err() {
        std::fs::copy(file, &target).map_err(io_error(&target))?;
        let _ = std::fs::remove_file(file);
    }
    Ok(data_dir.join(relative))
}

fn require_tool(tool: &str, package: &str) -> Result<(), ImageError> {
    if crate::host_tools::find_in_path(Path::new(tool)).is_none() {
        return Err(ImageError::MissingTool {
            tool: tool.into(),
            package: package.into(),
        });
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<Vec<u8>, ImageError> {
    let text = format!("{command:?}").replace('"', "");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ImageError::Io {
            path: PathBuf::from(command.get_program()),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(ImageError::Command {
            command: text.chars().take(200).collect(),
            status: output.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(output.stdout)
}

/// Identifies the kernel input: a package and version, or a file's hash.
/// The version recorded by the last build of the same package is reused
/// unless asked to refresh, so an up-to-date build never queries apt.
fn kernel_source(args: &BuildArgs, previous: Option<&Manifest>) -> Result<String, ImageError> {
    if let Some(file) = &args.kernel {
        return Ok(format!("file:{}", hash_file(file)?));
    }
    if !args.refresh_kernel && !args.force {
        if let Some(kernel) = previous.map(|m| &m.kernel) {
            if kernel.requested.as_deref() == Some(args.kernel_package.as_str())
                && kernel.input.starts_with("deb:")
            {
                return Ok(kernel.input.clone());
            }
        }
    }
    require_tool("apt-cache", "apt")?;
    let (package, version) = match resolve_kernel_package(&args.kernel_package)? {
        Some(found) => found,
        None => {
            // A fresh machine may have no package lists yet.
            eprintln!(
                "emberd: no candidate for {}; running apt-get update",
                args.kernel_package
            );
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            resolve_kernel_package(&args.kernel_package)?.ok_or_else(|| {
                ImageError::Kernel(format!("apt knows no package {}", args.kernel_package))
            })?
        }
    };
    Ok(format!("deb:{package}={version}"))
}

/// Follows a meta package (`linux-image-cloud-amd64`) to the real one.
fn resolve_kernel_package(name: &str) -> Result<Option<(String, String)>, ImageError> {
    let Some(version) = candidate_version(name)? else {
        return Ok(None);
    };
    let depends = String::from_utf8_lossy(&run(Command::new("apt-cache").args(["depends", name]))?)
        .into_owned();
    let real = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-") && !d.starts_with('<'));
    match real {
        Some(real) if real != name => {
            let version = candidate_version(real)?
                .ok_or_else(|| ImageError::Kernel(format!("no candidate for {real}")))?;
            Ok(Some((real.to_owned(), version)))
        }
        _ => Ok(Some((name.to_owned(), version))),
    }
}

fn candidate_version(name: &str) -> Result<Option<String>, ImageError> {
    let policy = String::from_utf8_lossy(&run(Command::new("apt-cache").args(["policy", name]))?)
        .into_owned();
    Ok(policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate: "))
        .map(str::trim)
        .find(|v| *v != "(none)")
        .map(str::to_owned))
}

fn fetch_kernel(
    args: &BuildArgs,
    source: &str,
    modules_out: &Path,
) -> Result<KernelArtefact, ImageError> {
    let work = tempfile::tempdir_in(&args.data_dir).map_err(io_error(&args.data_dir))?;
    let (bzimage, release, modules_root, origin) = if let Some(file) = &args.kernel {
        (
            file.clone(),
            String::from("custom"),
            None,
            format!("file {}", file.display()),
        )
    } else {
        let spec = source.trim_start_matches("deb:");
        run(Command::new("apt-get")
            .args(["download", "-q", spec])
            .current_dir(work.path()))?;
        let deb = std::fs::read_dir(work.path())
            .map_err(io_error(work.path()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| {
                ImageError::Kernel(format!("apt-get download {spec} produced no .deb"))
            })?;
        let root = work.path().join("root");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
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
            .ok_or_else(|| ImageError::Kernel(format!("{spec} has no boot/vmlinuz-*")))?;
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
        (vmlinuz, release, modules, format!("Debian package {spec}"))
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

    // The guest's modules, in load order, cached for initramfs rebuilds.
    let _ = std::fs::remove_dir_all(modules_out);
    std::fs::create_dir_all(modules_out).map_err(io_error(modules_out))?;
    let mut order = String::new();
    if let Some(modules_root) = modules_root {
        let tree = ModuleTree::scan(&modules_root)?;
        for path in tree.load_order(GUEST_MODULES, read_module)? {
            let name = format!(
                "{}.ko",
                super::modules::module_name(
                    path.file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or_default()
                )
            );
            let target = modules_out.join(&name);
            std::fs::write(&target, read_module(&path).map_err(io_error(&path))?)
                .map_err(io_error(&target))?;
            order.push_str(&name);
            order.push('\n');
        }
    }
    let order_path = modules_out.join("order");
    std::fs::write(&order_path, order).map_err(io_error(&order_path))?;

    Ok(KernelArtefact {
        bzimage: store_blob(&args.data_dir, &bz_tmp, ".bzimage")?,
        vmlinux: store_blob(&args.data_dir, &vmlinux_tmp, ".vmlinux")?,
        release,
        source: origin,
        requested: args.kernel.is_none().then(|| args.kernel_package.clone()),
        input: source.to_owned(),
    })
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

/// The ELF kernel inside a bzImage. The setup header says where the
/// compressed payload is; its magic says which decompressor to run.
fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    let field = |at: usize| -> Option<u32> {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) | None => 4,
        Some(&n) => usize::from(n),
    };
    let (Some(offset), Some(length)) = (field(0x248), field(0x24c)) else {
        return Err(ImageError::Kernel(
            "the kernel file is too short for a bzImage".into(),
        ));
    };
    let start = (setup_sects + 1) * 512 + offset as usize;
    let payload = bzimage
        .get(start..start + length as usize)
        .ok_or_else(|| ImageError::Kernel("the bzImage payload lies outside the file".into()))?;
    let (tool, package, args): (&str, &str, &[&str]) = if payload.starts_with(b"\xfd7zXZ\x00") {
        ("xz", "xz-utils", &["-dc", "--single-stream"])
    } else if payload.starts_with(b"\x02\x21\x4c\x18") || payload.starts_with(b"\x04\x22\x4d\x18") {
        ("lz4", "lz4", &["-dc"])
    } else if payload.starts_with(b"\x28\xb5\x2f\xfd") {
        ("zstd", "zstd", &["-dcq"])
    } else if payload.starts_with(b"\x1f\x8b") {
        ("gzip", "gzip", &["-dc"])
    } else {
        return Err(ImageError::Kernel(format!(
            "unknown bzImage compression (magic {})",
            hex::encode(&payload[..payload.len().min(4)])
        )));
    };
    require_tool(tool, package)?;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io_error(Path::new(tool)))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let payload = payload.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    // The kernel's build appends the decompressed size to the payload, which
    // some decompressors report as trailing garbage: judge by the output.
    let output = child
        .wait_with_output()
        .map_err(io_error(Path::new(tool)))?;
    let _ = feeder.join();
    if !output.stdout.starts_with(b"\x7fELF") {
        return Err(ImageError::Kernel(format!(
            "{tool} did not unpack an ELF kernel from the bzImage"
        )));
    }
    Ok(output.stdout)
}

/// `/init` must be an executable the guest kernel can run without a loader:
/// a static x86-64 ELF (no `PT_INTERP`).
fn check_init_binary(path: &Path) -> Result<(), ImageError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    let not_static = |why: &str| {
        Err(ImageError::InitBinary {
            path: path.to_owned(),
            why: why.to_owned(),
        })
    };
    // ELF64 header: class at 4, machine at 18, program headers at 32 (offset),
    // 54 (entry size) and 56 (count); PT_INTERP is type 3.
    if !bytes.starts_with(b"\x7fELF") || bytes.get(4) != Some(&2) {
        return not_static("it is not a 64-bit ELF executable");
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if u16_at(18) != Some(62) {
        return not_static("it is not built for x86-64");
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return not_static("its ELF header is truncated");
    };
    for i in 0..usize::from(phnum) {
        let at = phoff as usize + i * usize::from(phentsize);
        match bytes.get(at..at + 4) {
            Some(kind) if kind == 3u32.to_le_bytes() => {
                return not_static(
                    "it is dynamically linked (build it for x86_64-unknown-linux-musl)",
                )
            }
            Some(_) => {}
            None => return not_static("its program headers are truncated"),
        }
    }
    Ok(())
}

fn build_initramfs(args: &BuildArgs, modules_dir: &Path) -> Result<PathBuf, ImageError> {
    let init = std::fs::read(&args.init_bin).map_err(io_error(&args.init_bin))?;
    let mut entries = Vec::new();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "mnt",
        "lib",
        "lib/modules",
    ] {
        entries.push(Entry::Dir {
            path: dir.into(),
            mode: 0o755,
        });
    }
    entries.push(Entry::CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init,
    });
    let order_path = modules_dir.join("order");
    let order = std::fs::read_to_string(&order_path).map_err(io_error(&order_path))?;
    for name in order.lines().filter(|l| !l.is_empty()) {
        let path = modules_dir.join(name);
        entries.push(Entry::File {
            path: format!("lib/modules/{name}"),
            mode: 0o644,
            data: std::fs::read(&path).map_err(io_error(&path))?,
        });
    }
    entries.push(Entry::File {
        path: "lib/modules/order".into(),
        mode: 0o644,
        data: order.into_bytes(),
    });
    let tmp = args
        .data_dir
        .join(format!(".initramfs-{}", std::process::id()));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_error(&tmp))?);
    cpio::write_archive(&mut file, &entries).map_err(io_error(&tmp))?;
    file.flush().map_err(io_error(&tmp))?;
    drop(file);
    store_blob(&args.data_dir, &tmp, ".cpio")
}

/// Reads `<dir>/*.toml`, keeping `only` when given: name → (definition, text).
pub fn read_packs(
    dir: &Path,
    only: &[String],
) -> Result<BTreeMap<String, (PackDefinition, String)>, ImageError> {
    let dir = if dir.is_dir() {
        dir.to_owned()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs")
    };
    let mut packs = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(io_error(&dir))?.flatten() {
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
            return Err(ImageError::Pack {
                path,
                message: "pack names are lowercase letters, digits and '-'".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let definition: PackDefinition = toml::from_str(&text).map_err(|e| ImageError::Pack {
            path: path.clone(),
            message: e.message().to_owned(),
        })?;
        if definition.interpreter.is_empty() {
            return Err(ImageError::Pack {
                path,
                message: "interpreter must not be empty".into(),
            });
        }
        packs.insert(name, (definition, text));
    }
    if packs.is_empty() {
        return Err(ImageError::NoPacks(dir));
    }
    for name in only {
        if !packs.contains_key(name) {
            return Err(ImageError::UnknownPack(name.clone()));
        }
    }
    if !only.is_empty() {
        packs.retain(|name, _| only.contains(name));
    }
    Ok(packs)
}

/// The apt sources mmdebstrap uses: `--mirror`, else this host's apt sources files.
fn mirrors(args: &BuildArgs) -> Vec<String> {
    if !args.mirror.is_empty() {
        return args.mirror.clone();
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

fn build_pack(
    args: &BuildArgs,
    name: &str,
    definition: &PackDefinition,
    mirrors: &[String],
) -> Result<PathBuf, ImageError> {
    let work = tempfile::tempdir_in(&args.data_dir).map_err(io_error(&args.data_dir))?;
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
    run(&mut command)?;
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
    run(Command::new("mksquashfs").arg(&root).arg(&out).args([
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
    store_blob(&args.data_dir, &out, ".squashfs")
}

fn write_manifest(data_dir: &Path, manifest: &Manifest) -> Result<(), ImageError> {
    let mut relative = manifest.clone();
    let strip = |p: &mut PathBuf| {
        if let Ok(rel) = p.strip_prefix(data_dir) {
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
    let path = Manifest::path(data_dir);
    let tmp = data_dir.join(format!(".manifest-{}.json", std::process::id()));
    std::fs::write(&tmp, text).map_err(io_error(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_error(&path))
}

fn remove_unreferenced(data_dir: &Path, manifest: &Manifest) {
    let mut keep: Vec<PathBuf> = vec![
        manifest.kernel.bzimage.clone(),
        manifest.kernel.vmlinux.clone(),
        manifest.initramfs.clone(),
    ];
    keep.extend(manifest.packs.values().map(|p| p.squashfs.clone()));
    if let Ok(entries) = std::fs::read_dir(data_dir.join("blobs")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if !keep
                .iter()
                .any(|k| k == &path || k.file_name() == path.file_name())
            {
                eprintln!("emberd: removing unreferenced {}", path.display());
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let current = format!(
        "modules-{}",
        &manifest
            .keys
            .get("kernel")
            .map(String::as_str)
            .unwrap_or("")[..16.min(manifest.keys.get("kernel").map_or(0, String::len))]
    );
    if let Ok(entries) = std::fs::read_dir(data_dir.join("cache")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy() != current {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_pack_definitions_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        let packs = read_packs(&dir, &[]).unwrap();
        assert_eq!(
            packs.keys().collect::<Vec<_>>(),
            ["node", "python", "shell"]
        );
        assert_eq!(packs["python"].0.file_suffix, ".py");
        assert!(read_packs(&dir, &["ruby".into()]).is_err());
    }

    #[test]
    fn a_pack_with_unknown_keys_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("x.toml"),
            "interpreter = [\"sh\"]\nfile_suffix = \".sh\"\npackagez = []\n",
        )
        .unwrap();
        let err = read_packs(dir.path(), &[]).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    fn args(data_dir: &Path) -> BuildArgs {
        BuildArgs {
            data_dir: data_dir.to_owned(),
            init_bin: PathBuf::from("/nonexistent"),
            kernel_package: "linux-image-cloud-amd64".into(),
            kernel: None,
            packs_dir: PathBuf::from("packs"),
            packs: Vec::new(),
            mirror: Vec::new(),
            force: false,
            refresh_kernel: false,
        }
    }

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
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        // A version apt could never report proves apt was not asked.
        let previous = manifest_with_kernel("linux-image-cloud-amd64", "deb:recorded=0~test");
        assert_eq!(
            kernel_source(&args, Some(&previous)).unwrap(),
            "deb:recorded=0~test"
        );
    }

    #[test]
    fn a_user_kernel_is_keyed_by_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vmlinux");
        std::fs::write(&file, b"\x7fELF kernel").unwrap();
        let mut args = args(dir.path());
        args.kernel = Some(file.clone());
        let previous = manifest_with_kernel("linux-image-cloud-amd64", "deb:recorded=0~test");
        let first = kernel_source(&args, Some(&previous)).unwrap();
        assert!(first.starts_with("file:"), "{first}");
        std::fs::write(&file, b"\x7fELF other kernel").unwrap();
        assert_ne!(kernel_source(&args, Some(&previous)).unwrap(), first);
    }

    /// A minimal bzImage: setup header fields at their boot-protocol
    /// offsets, and an xz payload after the setup sectors.
    fn fake_bzimage(payload: &[u8], setup_sects: u8, offset: usize) -> Vec<u8> {
        let start = (usize::from(setup_sects) + 1) * 512;
        let mut image = vec![0u8; start + offset];
        image[0x1f1] = setup_sects;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(payload);
        // The kernel build appends the decompressed size after the payload.
        image.extend_from_slice(&[0x10, 0x20, 0, 0]);
        image
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("xz")
            .args(["-zc", "--check=crc32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz is installed (scripts/install-deps.sh)");
        child.stdin.take().unwrap().write_all(data).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        output.stdout
    }

    #[test]
    fn the_elf_kernel_is_unpacked_from_a_bzimage() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let image = fake_bzimage(&xz(&elf), 27, 0x3b4);
        assert_eq!(extract_vmlinux(&image).unwrap(), elf);
    }

    #[test]
    fn a_payload_that_is_not_a_kernel_is_refused() {
        let image = fake_bzimage(&xz(b"not a kernel"), 4, 0);
        let err = extract_vmlinux(&image).unwrap_err();
        assert!(err.to_string().contains("did not unpack an ELF"), "{err}");
        let err = extract_vmlinux(&fake_bzimage(b"garbage!", 4, 0)).unwrap_err();
        assert!(
            err.to_string().contains("unknown bzImage compression"),
            "{err}"
        );
        let err = extract_vmlinux(b"short").unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }

    /// An ELF64 x86-64 header with one program header of type `kind`.
    fn elf_with_program_header(kind: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18..20].copy_from_slice(&62u16.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes());
        elf[54..56].copy_from_slice(&56u16.to_le_bytes());
        elf[56..58].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&kind.to_le_bytes());
        elf
    }

    #[test]
    fn init_must_be_a_static_x86_64_executable() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            check_init_binary(&path).map_err(|e| e.to_string())
        };
        assert_eq!(check("static", &elf_with_program_header(1)), Ok(()));
        let err = check("dynamic", &elf_with_program_header(3)).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = check("script", b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(err.contains("not a 64-bit ELF"), "{err}");
        let mut arm = elf_with_program_header(1);
        arm[18] = 183;
        let err = check("arm", &arm).unwrap_err();
        assert!(err.contains("x86-64"), "{err}");
        let err = check("short", &elf_with_program_header(1)[..40]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // The host's own shell is dynamically linked.
        let err = check_init_binary(Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn no_op_reports_say_so() {
        let report = BuildReport {
            inputs_key: "0123456789abcdef".into(),
            seconds: 0.01,
            ..BuildReport::default()
        };
        assert!(report
            .to_string()
            .starts_with("images up to date (inputs 0123456789ab), nothing to do"));
    }
}
