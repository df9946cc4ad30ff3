//! The one boot path: every VM a sandbox, a pool or a template runs on is
//! made here.
//!
//! A boot makes a VM of a shape in a sandbox directory (restored from the
//! pack's template when there is one and the shape is the default,
//! cold-booted otherwise and when the restore fails), opens its agent
//! session within the boot timeout, and, for VMs that will run code, pushes
//! the identity (id, clock, entropy) within its own bound. Every agent
//! session ends its calls when the daemon shuts down. On error the VM is
//! stopped; the directory is the caller's. A create that takes a VMM
//! process started ahead (`standby.rs`) has only the state load, the
//! session and the identity done here.
//!
//! A failed restore never removes the template by itself: only a template
//! whose integrity check fails is condemned (after a failure that was not
//! a timeout), and removed once no other restore reads it. A restore that
//! fails on an intact template (or times out again and again) gives the
//! pack's restores up for the daemon's lifetime: it cold-boots from then on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberd_proto::kernel_args::KernelArg;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::guest::{guest_text, AgentClient, GuestError};
use crate::image::{Manifest, ManifestError, PackArtefact};
use crate::metrics::Metrics;
use crate::vmm::{BootSpec, SnapshotFiles, StandbyVm, Vm, VmBackend, VmmError};

use super::error::{BootError, SandboxError};
use super::ids::{create_private_dir, new_sandbox_id};
use super::model::{BootPath, Shape};
use super::record::{last_console_line, Guest};
use super::template::{host_fingerprint, Lease, Templates};
use super::ManagerConfig;

/// A VM with an open agent session, in its own directory.
pub(super) struct Booted {
    pub id: String,
    pub dir: PathBuf,
    pub guest: Guest,
}

impl Booted {
    /// Stops a VM nobody will use and removes its directory.
    pub async fn discard(self) {
        self.guest.stop(&self.id).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes VMs for the manager, its pools and its template builds.
pub(super) struct Launcher {
    pub backend: std::sync::Arc<dyn VmBackend>,
    pub manifest: Manifest,
    pub config: ManagerConfig,
    /// `None` when snapshots are off or the backend cannot restore.
    pub templates: Option<std::sync::Arc<Templates>>,
    /// The manager's shutdown token: agent sessions end their calls on it.
    pub shutdown: CancellationToken,
    /// The key each pack's template is stored under: fixed for the
    /// launcher's life, since everything it hashes is.
    template_keys: HashMap<String, String>,
    /// Packs whose template should be built.
    template_requests: UnboundedSender<String>,
    /// Where restore failures and template builds are counted.
    pub metrics: std::sync::Arc<Metrics>,
}

impl Launcher {
    pub fn new(
        backend: std::sync::Arc<dyn VmBackend>,
        manifest: Manifest,
        config: ManagerConfig,
        template_requests: UnboundedSender<String>,
        shutdown: CancellationToken,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        let templates = match &config.snapshot_dir {
            Some(dir) if backend.capabilities().restore => {
                Some(std::sync::Arc::new(Templates::new(dir.clone())))
            }
            _ => None,
        };
        let mut launcher = Launcher {
            backend,
            manifest,
            config,
            templates,
            shutdown,
            template_keys: HashMap::new(),
            template_requests,
            metrics,
        };
        let (backend, version) = (launcher.backend.name(), launcher.backend.version());
        let host = host_fingerprint();
        launcher.template_keys = launcher
            .manifest
            .packs
            .iter()
            .map(|(name, artefact)| {
                let spec = launcher.boot_spec("", Path::new(""), artefact);
                (
                    name.clone(),
                    Templates::key(&spec, backend, &version, &host),
                )
            })
            .collect();
        launcher
    }

    /// Asks the background builder for the template of `pack`.
    pub fn request_template(&self, pack: &str) {
        let _ = self.template_requests.send(pack.to_owned());
    }

    pub fn pack(&self, pack: &str) -> Result<&PackArtefact, SandboxError> {
        self.manifest.pack(pack).map_err(|e| match e {
            ManifestError::UnknownPack(name) => SandboxError::UnknownPack(name),
            other => BootError::Images(other).into(),
        })
    }

    /// A fresh sandbox id and its (private, empty) directory.
    pub fn new_sandbox_dir(&self) -> Result<(String, PathBuf), SandboxError> {
        let id = new_sandbox_id();
        let dir = self.config.work_dir.join(&id);
        create_private_dir(&dir).map_err(|source| SandboxError::SandboxDir {
            path: dir.clone(),
            source,
        })?;
        Ok((id, dir))
    }

    /// The shape of a sandbox whose create names no size.
    pub fn default_shape(&self) -> Shape {
        Shape {
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            disk_mib: self.config.overlay_mib,
        }
    }

    /// The boot spec of a VM of the default shape.
    pub fn boot_spec(&self, id: &str, dir: &Path, pack: &PackArtefact) -> BootSpec {
        self.shaped_spec(id, dir, pack, self.default_shape())
    }

    fn shaped_spec(&self, id: &str, dir: &Path, pack: &PackArtefact, shape: Shape) -> BootSpec {
        BootSpec {
            sandbox_id: id.to_owned(),
            sandbox_dir: dir.to_owned(),
            kernel_bzimage: self.manifest.kernel.bzimage.clone(),
            kernel_vmlinux: self.manifest.kernel.vmlinux.clone(),
            initramfs: self.manifest.initramfs.clone(),
            root_disk: pack.squashfs.clone(),
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib,
            extra_kernel_args: self.kernel_args(shape),
            boot_timeout: self.config.boot_timeout,
            memory_file: None,
        }
    }

    /// The backend-independent kernel arguments of a VM of `shape`.
    fn kernel_args(&self, shape: Shape) -> Vec<String> {
        let mut args = vec![KernelArg::OverlaySize {
            mib: shape.disk_mib,
        }
        .to_string()];
        // init_on_free zeroes what the guest frees, so that a snapshot
        // holding guest RAM in its stream skips it. Where RAM is a file
        // mapped copy-on-write it would do harm: zeroing every page at
        // boot fills the template's file, and every page a clone frees
        // would become a private copy.
        if !self.backend.capabilities().memory_file {
            args.push("init_on_free=1".into());
        }
        args
    }

    /// The key a template of `pack` is stored under.
    pub fn template_key(&self, pack: &str) -> Option<&str> {
        self.template_keys.get(pack).map(String::as_str)
    }

    /// How many packs' restores were given up since the daemon started
    /// (their restores failed on an intact template).
    pub fn packs_given_up(&self) -> u64 {
        self.templates.as_ref().map_or(0, |t| t.packs_given_up())
    }

    /// The usable template of `pack`, if there is one.
    pub fn template_for(&self, pack: &str) -> Option<SnapshotFiles> {
        self.templates.as_ref()?.get(pack, self.template_key(pack)?)
    }

    /// A restore's hold on the usable template of `pack`, if there is one.
    pub fn template_lease(&self, pack: &str) -> Option<Lease> {
        self.templates
            .as_ref()?
            .lease(pack, self.template_key(pack)?)
    }

    /// True while `lease` holds the template a restore of `pack` would use now.
    pub fn template_is_current(&self, pack: &str, lease: &Lease) -> bool {
        self.templates
            .as_ref()
            .is_some_and(|t| t.is_current(pack, lease))
    }

    /// How a create is served when no pool has a VM of `pack` ready.
    pub fn boot_path_without_pool(&self, pack: &str) -> BootPath {
        if self.template_for(pack).is_some() {
            BootPath::SnapshotRestore
        } else {
            BootPath::ColdBoot
        }
    }

    /// Boots a VM of `pack` and `shape` in `dir` and gives it identity
    /// `id`: the path of every VM that will run code. Templates are of the
    /// default shape; any other shape cold-boots.
    pub async fn boot(
        &self,
        id: &str,
        dir: &Path,
        pack: &str,
        shape: Shape,
    ) -> Result<Guest, SandboxError> {
        let artefact = self.pack(pack)?;
        let spec = self.shaped_spec(id, dir, artefact, shape);
        let guest = if shape == self.default_shape() {
            self.restore_or_cold_boot(&spec, pack).await?
        } else {
            self.cold_boot(&spec).await?
        };
        push_identity(guest, id).await
    }

    /// Restores the template `lease` holds into `standby`, a VMM process
    /// started ahead for `pack` in `dir` (its id and dir are the sandbox's),
    /// opens the agent session and gives it identity `id`. A failed
    /// restore counts and is judged as any restore's, then the create
    /// falls back to a restore in a new process or a cold boot.
    pub async fn boot_from_standby(
        &self,
        id: &str,
        dir: &Path,
        pack: &str,
        standby: Box<dyn StandbyVm>,
        lease: Lease,
    ) -> Result<Guest, SandboxError> {
        let spec = self.boot_spec(id, dir, self.pack(pack)?);
        let restored = async {
            let vm = standby.restore(lease.files()).await?;
            open_session(&spec, vm, BootPath::StandbyRestore, &self.shutdown).await
        }
        .await;
        let guest = match restored {
            Ok(guest) => {
                if let Some(templates) = &self.templates {
                    templates.restore_succeeded(pack);
                }
                guest
            }
            Err(e) => {
                self.metrics.record_restore_failure(pack);
                tracing::warn!(pack, sandbox = %id, error = %crate::error_chain::render(&e), "restore into a standby VMM failed; falling back");
                self.check_template_after_failure(pack, &lease, &e).await;
                drop(lease);
                clear_dir(dir);
                self.restore_or_cold_boot(&spec, pack).await?
            }
        };
        push_identity(guest, id).await
    }

    /// [`Launcher::boot`] in a fresh directory, removed again when the
    /// boot fails or `stop` cancels it.
    pub async fn boot_in_new_dir(
        &self,
        pack: &str,
        stop: &CancellationToken,
    ) -> Result<Booted, SandboxError> {
        let (id, dir) = self.new_sandbox_dir()?;
        let result = tokio::select! {
            result = self.boot(&id, &dir, pack, self.default_shape()) => result,
            () = stop.cancelled() => Err(SandboxError::ShuttingDown),
        };
        match result {
            Ok(guest) => Ok(Booted { id, dir, guest }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn restore_or_cold_boot(&self, spec: &BootSpec, pack: &str) -> Result<Guest, BootError> {
        if let Some(lease) = self.template_lease(pack) {
            let result = self.restore(spec, lease.files()).await;
            match result {
                Ok(guest) => {
                    if let Some(templates) = &self.templates {
                        templates.restore_succeeded(pack);
                    }
                    return Ok(guest);
                }
                Err(e) => {
                    self.metrics.record_restore_failure(pack);
                    tracing::warn!(pack, sandbox = %spec.sandbox_id, error = %crate::error_chain::render(&e), "restore from the template failed; falling back to a cold boot");
                    self.check_template_after_failure(pack, &lease, &e).await;
                    drop(lease);
                    clear_dir(&spec.sandbox_dir);
                }
            }
        }
        let guest = self.cold_boot(spec).await?;
        let given_up = self
            .templates
            .as_ref()
            .is_some_and(|t| t.restores_given_up(pack));
        if self.templates.is_some() && !given_up && self.template_for(pack).is_none() {
            self.request_template(pack);
        }
        Ok(guest)
    }

    /// After a failed restore: a timeout says little about the template
    /// (the host may be loaded) and keeps it, though timeouts in a row give
    /// the pack's restores up; any other failure runs the full integrity
    /// check: a template that fails it is condemned (and rebuilt), one that
    /// passes is kept but no longer restored, since the VMM refuses it.
    async fn check_template_after_failure(&self, pack: &str, lease: &Lease, error: &BootError) {
        let Some(templates) = &self.templates else {
            return;
        };
        if self.shutdown.is_cancelled() {
            return;
        }
        if is_timeout(error) {
            templates.restore_timed_out(pack);
            return;
        }
        match lease.verify().await {
            Ok(()) => {
                tracing::info!(pack, template = %lease.files().dir.display(), "the template passed its integrity check; keeping it");
                templates.restore_refused(pack, &crate::error_chain::render(error));
            }
            Err(e) => {
                tracing::warn!(pack, template = %lease.files().dir.display(), error = %crate::error_chain::render(&e), "the template is corrupt; it will be removed and rebuilt");
                templates.condemn(pack, lease);
            }
        }
    }

    async fn restore(&self, spec: &BootSpec, files: &SnapshotFiles) -> Result<Guest, BootError> {
        let vm = self.backend.restore(spec, files).await?;
        open_session(spec, vm, BootPath::SnapshotRestore, &self.shutdown).await
    }

    /// Boots a VM from the kernel and opens its session (no identity).
    pub async fn cold_boot(&self, spec: &BootSpec) -> Result<Guest, BootError> {
        let vm = self.backend.start(spec).await?;
        open_session(spec, vm, BootPath::ColdBoot, &self.shutdown).await
    }
}

/// Pushes the identity before anyone runs code: its id is final, its clock
/// runs on from here, its entropy is its own. Bounded: a guest that stops
/// answering fails the boot (and is stopped).
async fn push_identity(guest: Guest, id: &str) -> Result<Guest, SandboxError> {
    if let Err(e) = guest.agent.set_identity(id).await {
        guest.stop(id).await;
        return Err(BootError::Agent(e).into());
    }
    Ok(guest)
}

/// True when a boot failed for want of time rather than for what it was given.
fn is_timeout(error: &BootError) -> bool {
    matches!(
        error,
        BootError::AgentTimeout { .. }
            | BootError::Vmm(VmmError::BootTimeout(_))
            | BootError::Vmm(VmmError::Unresponsive { .. })
            | BootError::Agent(crate::guest::GuestError::Timeout { .. })
    )
}

/// Opens the agent session of a fresh VM within the boot timeout; stops the
/// VM when that fails.
async fn open_session(
    spec: &BootSpec,
    vm: Box<dyn Vm>,
    boot_path: BootPath,
    shutdown: &CancellationToken,
) -> Result<Guest, BootError> {
    let bound = spec.boot_timeout;
    let started = Instant::now();
    let result = tokio::time::timeout(bound, connect_agent(vm.as_ref(), shutdown)).await;
    let error = match result {
        Ok(Ok(agent)) => {
            tracing::debug!(sandbox = %spec.sandbox_id, %boot_path, elapsed_ms = started.elapsed().as_millis() as u64, "agent session open");
            return Ok(Guest {
                vm,
                agent,
                boot_path,
            });
        }
        Ok(Err(e)) => e,
        Err(_) => BootError::AgentTimeout {
            bound,
            // Console text is the guest's: bounded and cleaned.
            last_console_line: last_console_line(vm.as_ref()).map(|l| guest_text(&l)),
        },
    };
    vm.stop().await.ok();
    Err(error)
}

async fn connect_agent(
    vm: &dyn Vm,
    shutdown: &CancellationToken,
) -> Result<AgentClient, BootError> {
    // The agent's socket may refuse connections for a moment while the VMM
    // sets it up; a connected stream then waits for the guest to open its end.
    // A stream that breaks after it was accepted (Firecracker's hybrid vsock
    // answers `OK` before the guest's end is known to hold) is dialled
    // again; the caller's bound ends the retries.
    loop {
        match vm.connect_agent().await {
            Ok(stream) => match AgentClient::handshake_until(stream, shutdown.clone()).await {
                Ok((client, _hello)) => return Ok(client),
                Err(GuestError::Connect(_) | GuestError::Broken { .. }) if !vm.has_exited() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(BootError::Agent(e)),
            },
            Err(VmmError::AgentConnect(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(other) => return Err(other.into()),
        }
    }
}

/// Empties a sandbox directory before a second attempt in it.
fn clear_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
