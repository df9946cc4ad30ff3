//! `emberd image build`: plans the steps, skips those whose inputs are
//! unchanged, runs the rest and writes the manifest.
//!
//! Each step is keyed by a hash of its inputs and skipped when the manifest
//! already records that key and its files exist:
//! - kernel: the package's bzImage and the ELF `vmlinux` unpacked from it,
//!   plus the guest's modules (with dependencies, in load order) cached
//!   beside them;
//! - initramfs: `/init` (the static `emberd-init`), `/dev/console`, the
//!   modules and `/lib/modules/order`;
//! - one squashfs per pack, from `mmdebstrap` + `mksquashfs -comp zstd`.
//!
//! The manifest is written atomically; blobs no longer referenced are
//! removed. Owns the order of the steps and what is reused; the steps
//! themselves live in [`super::kernel`], [`super::initramfs`] and
//! [`super::pack`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::initramfs::{self, InitramfsError};
use super::kernel::{self, KernelChoice, KernelError};
use super::manifest::{KernelArtefact, Manifest, PackArtefact};
use super::pack::{self, DefinitionError, DefinitionFile, PackDefinition, PackError};
use super::progress::Progress;
use super::store::{hash_file, hash_parts, Store, StoreError};
use super::tool::{self, ToolError};

/// Bumped when the builder's output changes for equal inputs.
const BUILDER_VERSION: &str = "1";

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
    /// Directory of pack definitions (`<name>.toml`); a relative path is
    /// taken from the working directory.
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

impl BuildArgs {
    fn kernel_choice(&self) -> KernelChoice<'_> {
        match &self.kernel {
            Some(file) => KernelChoice::File(file),
            None => KernelChoice::Package(&self.kernel_package),
        }
    }
}

/// Errors of the image build.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the kernel")]
    Kernel(#[source] KernelError),
    #[error("cannot build the initramfs")]
    Initramfs(#[source] InitramfsError),
    #[error("cannot build pack {name}")]
    Pack {
        name: String,
        #[source]
        source: PackError,
    },
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

/// The kernel step. Its blobs go to the store, its modules to `modules_dir`.
struct KernelStep {
    /// Hash of its inputs, recorded in the manifest as `kernel`.
    key: String,
    /// The kernel it builds: `deb:<package>=<version>` or `file:<sha256>`.
    source: String,
    modules_dir: PathBuf,
    /// The previous build's kernel, when `key` is unchanged and its files exist.
    reuse: Option<KernelArtefact>,
}

/// The initramfs step. Its archive goes to the store.
struct InitramfsStep {
    /// Hash of its inputs (the kernel's key and the init binary), recorded
    /// as `initramfs`.
    key: String,
    reuse: Option<PathBuf>,
}

/// One pack's step. Its squashfs goes to the store.
struct PackStep<'a> {
    name: &'a str,
    definition: &'a PackDefinition,
    /// Hash of its inputs (definition, apt sources, suite), recorded as
    /// `pack:<name>`.
    key: String,
    reuse: Option<PathBuf>,
}

impl PackStep<'_> {
    fn manifest_key(&self) -> String {
        format!("pack:{}", self.name)
    }
}

/// Every step with its input key and, where allowed, the output to reuse.
struct Plan<'a> {
    kernel: KernelStep,
    initramfs: InitramfsStep,
    packs: Vec<PackStep<'a>>,
}

impl<'a> Plan<'a> {
    fn new(
        args: &BuildArgs,
        store: &Store,
        previous: Option<&Manifest>,
        definitions: &'a BTreeMap<String, DefinitionFile>,
        mirrors: &[String],
    ) -> Result<Self, ImageError> {
        let reusable = |step: &str, key: &str, files: &[&Path]| {
            !args.force
                && previous.and_then(|m| m.keys.get(step)).map(String::as_str) == Some(key)
                && files.iter().all(|f| f.is_file())
        };

        let choice = args.kernel_choice();
        let source = kernel::resolve_source(choice, args.refresh_kernel || args.force, previous)
            .map_err(ImageError::Kernel)?;
        let key = hash_parts(&[BUILDER_VERSION, "kernel", &source]);
        let modules_dir = store.modules_dir(&key);
        let reuse = previous
            .filter(|m| {
                reusable("kernel", &key, &[&m.kernel.bzimage, &m.kernel.vmlinux])
                    && modules_dir.join("order").is_file()
            })
            .map(|m| KernelArtefact {
                requested: choice.requested(),
                input: source.clone(),
                ..m.kernel.clone()
            });
        let kernel = KernelStep {
            key,
            source,
            modules_dir,
            reuse,
        };

        let init_hash = hash_file(&args.init_bin)?;
        let key = hash_parts(&[BUILDER_VERSION, "initramfs", &kernel.key, &init_hash]);
        let reuse = previous
            .filter(|m| reusable("initramfs", &key, &[&m.initramfs]))
            .map(|m| m.initramfs.clone());
        let initramfs = InitramfsStep { key, reuse };

        let mut packs = Vec::new();
        for (name, file) in definitions {
            let mut step = PackStep {
                name,
                definition: &file.definition,
                key: hash_parts(&[
                    BUILDER_VERSION,
                    "pack",
                    name,
                    &file.text,
                    &mirrors.join("\n"),
                    pack::DEBIAN_SUITE,
                ]),
                reuse: None,
            };
            step.reuse = previous
                .and_then(|m| m.packs.get(name))
                .filter(|p| reusable(&step.manifest_key(), &step.key, &[&p.squashfs]))
                .map(|p| p.squashfs.clone());
            packs.push(step);
        }
        Ok(Plan {
            kernel,
            initramfs,
            packs,
        })
    }

    /// Fails before any work when a tool the planned steps need is missing
    /// or the init binary cannot be the guest's PID 1.
    fn check(&self, args: &BuildArgs) -> Result<(), ImageError> {
        if self.kernel.reuse.is_none() && args.kernel.is_none() {
            tool::require("apt-get", "apt")?;
            tool::require("dpkg-deb", "dpkg")?;
        }
        if self.packs.iter().any(|step| step.reuse.is_none()) {
            tool::require("mmdebstrap", "mmdebstrap")?;
            tool::require("mksquashfs", "squashfs-tools")?;
        }
        if self.initramfs.reuse.is_none() {
            initramfs::check_init_binary(&args.init_bin).map_err(ImageError::Initramfs)?;
        }
        Ok(())
    }
}

/// Runs the build.
pub fn build(args: &BuildArgs) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let store = Store::new(&args.data_dir);
    let previous = Manifest::load(&args.data_dir).ok();
    let definitions = pack::read_definitions(&args.packs_dir, &args.packs)?;
    let mirrors = pack::mirrors(&args.mirror);
    let plan = Plan::new(args, &store, previous.as_ref(), &definitions, &mirrors)?;
    plan.check(args)?;
    store.create()?;
    let mut report = BuildReport {
        data_dir: args.data_dir.clone(),
        ..BuildReport::default()
    };
    let mut keys = BTreeMap::new();

    let Plan {
        kernel: kernel_step,
        initramfs: initramfs_step,
        packs: pack_steps,
    } = plan;
    let modules_dir = &kernel_step.modules_dir;
    let kernel = run_step(
        &mut report,
        "kernel",
        kernel_step.reuse,
        || {
            kernel::fetch(
                &store,
                args.kernel_choice(),
                &kernel_step.source,
                modules_dir,
            )
            .map_err(ImageError::Kernel)
        },
        |kernel, seconds| format!("kernel {} ready in {seconds:.1} s", kernel.release),
    )?;
    keys.insert("kernel".to_owned(), kernel_step.key);

    let initramfs = run_step(
        &mut report,
        "initramfs",
        initramfs_step.reuse,
        || initramfs::build(&store, &args.init_bin, modules_dir).map_err(ImageError::Initramfs),
        |_, seconds| format!("initramfs ready in {seconds:.1} s"),
    )?;
    keys.insert("initramfs".to_owned(), initramfs_step.key);

    let mut packs = BTreeMap::new();
    for step in pack_steps {
        let name = step.name;
        let manifest_key = step.manifest_key();
        let squashfs = run_step(
            &mut report,
            &format!("pack {name}"),
            step.reuse,
            || {
                pack::build(&store, name, step.definition, &mirrors).map_err(|source| {
                    ImageError::Pack {
                        name: name.to_owned(),
                        source,
                    }
                })
            },
            |path, seconds| {
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                format!(
                    "pack {name} ready in {seconds:.1} s ({:.1} MiB)",
                    size as f64 / 1048576.0
                )
            },
        )?;
        keys.insert(manifest_key, step.key);
        let definition = step.definition;
        packs.insert(
            name.to_owned(),
            PackArtefact {
                squashfs,
                interpreter: definition.interpreter.clone(),
                file_suffix: definition.file_suffix.clone(),
                warmup: definition.warmup.clone(),
                warm_language: definition.warm_language,
            },
        );
    }
    // Packs not rebuilt this time (a `--pack` subset) keep their entries.
    if let Some(m) = &previous {
        for (name, artefact) in &m.packs {
            if !packs.contains_key(name) && !args.packs.is_empty() && artefact.squashfs.is_file() {
                packs.insert(name.clone(), artefact.clone());
                if let Some(key) = m.keys.get(&format!("pack:{name}")) {
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
        store.write_manifest(&manifest)?;
        store.remove_unreferenced(&manifest);
    }
    report.inputs_key = inputs_key;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Returns `reuse` when there is one; otherwise runs `build` under a
/// progress display that ends with the line `ready` makes.
fn run_step<T>(
    report: &mut BuildReport,
    label: &str,
    reuse: Option<T>,
    build: impl FnOnce() -> Result<T, ImageError>,
    ready: impl FnOnce(&T, f64) -> String,
) -> Result<T, ImageError> {
    if let Some(output) = reuse {
        report.reused.push(label.to_owned());
        return Ok(output);
    }
    let progress = Progress::start(label);
    let output = build()?;
    let seconds = progress.seconds();
    progress.finish(&ready(&output, seconds));
    report.built.push(label.to_owned());
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

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
