//! The sandbox manager: ids, lifecycle, and the work dir.
//!
//! Owns every sandbox of the daemon, from create (boot a VM, open the agent
//! session, push the identity) through exec to delete (stop the VM, remove
//! its directory), and the daemon-wide duties around them: refusing a work
//! dir another daemon holds, clearing what a crashed daemon left behind, and
//! stopping everything at shutdown. It knows nothing of HTTP: callers get a
//! [`SandboxError`] and map it themselves.

mod pool;
mod recovery;
mod template;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use emberd_api::{ExecResponse, InfoResponse, SandboxInfo, SandboxState};
use rand::RngCore;
use tokio_util::sync::CancellationToken;

use crate::guest::{AgentClient, GuestError, RunOutcome, RunSpec};
use crate::image::{Manifest, ManifestError, PackArtefact};
use crate::vmm::{BootSpec, SnapshotFiles, Vm, VmBackend, VmmError};

pub use recovery::{WorkDirError, WorkDirLock};

/// Timeout of an exec that names none.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest timeout an exec may ask for.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);
/// Per-stream cap on the output an exec returns.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;
/// Extra time the daemon waits for the agent's answer beyond an exec's timeout.
const EXEC_ANSWER_GRACE: Duration = Duration::from_secs(10);
/// How long a template build waits for the guest's pre-started interpreter.
const WARM_INTERPRETER_BOUND: Duration = Duration::from_secs(30);
/// Time for the agent to see the host hang up before the VM is paused.
const QUIESCE_SETTLE: Duration = Duration::from_millis(300);
/// A pooled VM that answered `Health` this recently is handed out unasked.
const HEALTH_FRESH: Duration = Duration::from_secs(2);
/// How long a pooled sandbox gets to answer `Health` before hand-out.
const HEALTH_BOUND: Duration = Duration::from_secs(2);
/// `boot_path` values of the API.
pub const BOOT_PATH_POOL: &str = "warm-pool";
pub const BOOT_PATH_SNAPSHOT: &str = "snapshot-restore";
pub const BOOT_PATH_COLD: &str = "cold-boot";
/// Lines of the console log shown by `GET /sandboxes/{id}`.
const CONSOLE_TAIL_LINES: usize = 20;

/// Errors of the sandbox manager.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("unknown language pack: {0:?}")]
    UnknownPack(String),
    #[error("sandbox not found")]
    NotFound,
    #[error("sandbox is {0}, not running")]
    NotRunning(&'static str),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("sandbox was deleted while {0}")]
    Deleted(&'static str),
    #[error("sandbox failed to boot: {0}")]
    Boot(String),
    #[error("cannot create the sandbox directory {path}")]
    SandboxDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0:?} of the exec's timeout")]
    AgentUnresponsive(Duration),
    #[error("exec failed: {0}")]
    Exec(#[source] GuestError),
}

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub work_dir: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot_timeout: Duration,
    /// Size of each sandbox's writable layer, in MiB.
    pub overlay_mib: u32,
    /// Booted sandboxes kept ready per pack; 0 disables the pool.
    pub pool_size: usize,
    /// Upper bound on guest memory held by all pools together, in MiB.
    pub pool_memory_mib: u64,
    /// Where template snapshots live; `None` disables snapshot restore.
    pub snapshot_dir: Option<PathBuf>,
    /// Build every pack's template at startup (else after its first cold boot).
    pub warm_templates_at_start: bool,
}

/// One exec as the manager takes it.
#[derive(Debug, Clone, Default)]
pub struct ExecParams {
    pub code: String,
    pub stdin: Option<String>,
    pub timeout_ms: Option<u64>,
}

struct Sandbox {
    id: String,
    pack: String,
    created_at: SystemTime,
    dir: PathBuf,
    boot_path: Mutex<&'static str>,
    state: Mutex<SandboxState>,
    vm: OnceLock<Box<dyn Vm>>,
    agent: OnceLock<AgentClient>,
    /// Cancelled on delete: ends a boot or exec in progress.
    deleted: CancellationToken,
}

impl Sandbox {
    fn booting(id: String, pack: &str, dir: PathBuf, boot_path: &'static str) -> Self {
        Sandbox {
            id,
            pack: pack.to_owned(),
            created_at: SystemTime::now(),
            dir,
            boot_path: Mutex::new(boot_path),
            state: Mutex::new(SandboxState::Booting),
            vm: OnceLock::new(),
            agent: OnceLock::new(),
            deleted: CancellationToken::new(),
        }
    }

    fn from_booted(booted: Booted, pack: &str, boot_path: &'static str) -> Self {
        let sandbox = Sandbox::booting(booted.id, pack, booted.dir, boot_path);
        let _ = sandbox.vm.set(booted.vm);
        let _ = sandbox.agent.set(booted.agent);
        sandbox
    }

    fn state(&self) -> SandboxState {
        *self.state.lock().expect("state lock")
    }

    fn set_boot_path(&self, boot_path: &'static str) {
        *self.boot_path.lock().expect("boot path lock") = boot_path;
    }

    fn set_state(&self, state: SandboxState) {
        *self.state.lock().expect("state lock") = state;
    }

    fn info(&self, backend: &str, with_console: bool) -> SandboxInfo {
        SandboxInfo {
            id: self.id.clone(),
            pack: self.pack.clone(),
            state: self.state(),
            backend: backend.to_owned(),
            created_at: humantime::format_rfc3339_seconds(self.created_at).to_string(),
            boot_path: Some((*self.boot_path.lock().expect("boot path lock")).to_owned()),
            vmm_pid: self.vm.get().and_then(|vm| vm.pid()),
            console_tail: with_console.then(|| console_tail(&self.dir.join("console.log"))),
        }
    }

    /// Stops the VM (if any) and removes the directory. Idempotent.
    async fn teardown(&self) {
        if let Some(vm) = self.vm.get() {
            if let Err(e) = vm.stop().await {
                tracing::warn!(sandbox = %self.id, error = %e, "stopping the VM failed");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(sandbox = %self.id, error = %e, "removing the sandbox directory failed");
            }
        }
    }
}

/// A VM whose agent has answered `Hello`, not yet given to anyone.
struct Booted {
    id: String,
    dir: PathBuf,
    vm: Box<dyn Vm>,
    agent: AgentClient,
    boot_path: &'static str,
    /// When the agent last answered `Health` (pooled VMs only).
    healthy_at: Arc<Mutex<Option<Instant>>>,
}

/// Owns all sandboxes of one daemon.
pub struct Manager {
    backend: Arc<dyn VmBackend>,
    manifest: Manifest,
    config: ManagerConfig,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    pools: pool::Pools,
    templates: Option<template::Templates>,
    template_requests: tokio::sync::mpsc::UnboundedSender<String>,
    template_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutting_down: CancellationToken,
    _lock: WorkDirLock,
}

impl Manager {
    /// Takes the work dir (refusing one held by another daemon), clears what
    /// a crashed daemon left in it, and returns a manager ready to serve.
    /// Call [`Manager::start_background`] once to begin filling the pools.
    pub fn new(
        backend: Arc<dyn VmBackend>,
        manifest: Manifest,
        config: ManagerConfig,
    ) -> Result<Self, WorkDirError> {
        let lock = WorkDirLock::acquire(&config.work_dir)?;
        let cleared = recovery::clear_leftovers(&config.work_dir);
        if cleared.processes > 0 || cleared.dirs > 0 {
            tracing::warn!(
                processes = cleared.processes,
                dirs = cleared.dirs,
                "cleared what a previous daemon left behind"
            );
        }
        let pools = pool::Pools::new(&manifest.pack_names(), &config);
        let templates = match &config.snapshot_dir {
            Some(dir) if backend.capabilities().restore => {
                Some(template::Templates::new(dir.clone()))
            }
            _ => None,
        };
        let (template_requests, template_queue) = tokio::sync::mpsc::unbounded_channel();
        Ok(Manager {
            backend,
            manifest,
            config,
            sandboxes: Mutex::new(HashMap::new()),
            pools,
            templates,
            template_requests,
            template_queue: Mutex::new(Some(template_queue)),
            background: Mutex::new(Vec::new()),
            shutting_down: CancellationToken::new(),
            _lock: lock,
        })
    }

    /// Starts the background work: template builds (all packs first when
    /// asked to warm at start), then one pool filler per pack.
    pub fn start_background(self: &Arc<Self>) {
        let queue = self.template_queue.lock().expect("queue lock").take();
        let warm_first = self.templates.is_some() && self.config.warm_templates_at_start;
        if warm_first {
            for pack in self.manifest.pack_names() {
                let _ = self.template_requests.send(pack);
            }
        }
        let manager = Arc::downgrade(self);
        let packs = self.manifest.pack_names();
        let pool_size = self.config.pool_size;
        let stop = self.shutting_down.clone();
        let task = tokio::spawn(async move {
            let Some(mut queue) = queue else { return };
            let mut first_pass = if warm_first { packs.len() } else { 0 };
            if first_pass == 0 && pool_size > 0 {
                if let Some(strong) = manager.upgrade() {
                    strong.start_pool_fillers();
                }
            }
            loop {
                let pack = tokio::select! {
                    pack = queue.recv() => pack,
                    () = stop.cancelled() => None,
                };
                let Some(pack) = pack else { return };
                let Some(strong) = manager.upgrade() else {
                    return;
                };
                strong.build_template_logged(&pack).await;
                // The first pass builds every template before the pools
                // fill, so that the pools fill by restoring.
                if first_pass > 0 {
                    first_pass -= 1;
                    if first_pass == 0 && pool_size > 0 {
                        strong.start_pool_fillers();
                    }
                }
            }
        });
        self.background.lock().expect("task list lock").push(task);
    }

    fn start_pool_fillers(self: &Arc<Self>) {
        let mut tasks = self.background.lock().expect("task list lock");
        for pack in self.manifest.pack_names() {
            let manager = Arc::downgrade(self);
            tasks.push(tokio::spawn(pool::fill_forever(manager, pack)));
        }
    }

    pub fn backend(&self) -> &dyn VmBackend {
        self.backend.as_ref()
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// How the next create is served when nothing is ready in a pool.
    fn next_boot_path(&self) -> &'static str {
        let default_pack = emberd_api::DEFAULT_LANGUAGE_PACK;
        if self.config.pool_size > 0 {
            BOOT_PATH_POOL
        } else if self.template_for(default_pack).is_some() {
            BOOT_PATH_SNAPSHOT
        } else {
            BOOT_PATH_COLD
        }
    }

    fn boot_spec(&self, id: &str, dir: &Path, pack: &PackArtefact) -> BootSpec {
        BootSpec {
            sandbox_id: id.to_owned(),
            sandbox_dir: dir.to_owned(),
            kernel_bzimage: self.manifest.kernel.bzimage.clone(),
            kernel_vmlinux: self.manifest.kernel.vmlinux.clone(),
            initramfs: self.manifest.initramfs.clone(),
            root_disk: pack.squashfs.clone(),
            vcpus: self.config.vcpus,
            memory_mib: self.config.memory_mib,
            // init_on_free: memory the guest frees is zeroed, so snapshots skip it.
            extra_kernel_args: vec![
                format!("emberd.overlay_size={}M", self.config.overlay_mib),
                "init_on_free=1".into(),
            ],
            boot_timeout: self.config.boot_timeout,
        }
    }

    fn template_key(&self, pack: &str) -> Option<String> {
        let artefact = self.manifest.pack(pack).ok()?;
        let spec = self.boot_spec("", Path::new(""), artefact);
        Some(template::Templates::key(
            &spec,
            self.backend.name(),
            &self.backend.version(),
        ))
    }

    fn template_for(&self, pack: &str) -> Option<SnapshotFiles> {
        let templates = self.templates.as_ref()?;
        templates.get(pack, &self.template_key(pack)?)
    }

    async fn build_template_logged(&self, pack: &str) {
        let Some(templates) = &self.templates else {
            return;
        };
        if self.template_for(pack).is_some() || !templates.claim_build(pack) {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = self.build_template(pack) => result,
            () = self.shutting_down.cancelled() => Err(SandboxError::ShuttingDown),
        };
        templates.finish_build(pack, result.is_ok());
        match result {
            Ok(files) => tracing::info!(
                pack,
                template = %files.dir.display(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "template snapshot ready"
            ),
            Err(e) => {
                tracing::warn!(pack, error = %e, "template snapshot failed; creates cold-boot")
            }
        }
    }

    /// Cold-boots a VM, warms it up, quiesces it and snapshots it.
    async fn build_template(&self, pack: &str) -> Result<SnapshotFiles, SandboxError> {
        let templates = self.templates.as_ref().ok_or(SandboxError::ShuttingDown)?;
        let artefact = self.pack_artefact(pack)?;
        let key = self
            .template_key(pack)
            .ok_or_else(|| SandboxError::UnknownPack(pack.into()))?;
        let (id, dir) = self.new_sandbox_dir()?;
        let spec = self.boot_spec(&id, &dir, artefact);
        let result = async {
            let booted = self.cold_boot(&spec).await?;
            if let Some(language) = &artefact.warm_language {
                wait_until_warm(&booted.agent, language).await;
            }
            let warmup = RunSpec {
                interpreter: artefact.interpreter.clone(),
                code: artefact.warmup.clone().into_bytes(),
                file_suffix: artefact.file_suffix.clone(),
                timeout: Some(DEFAULT_EXEC_TIMEOUT),
                output_limit_bytes: 64 * 1024,
                warm_language: artefact.warm_language.clone(),
                ..RunSpec::default()
            };
            let snapshot = async {
                let outcome = booted.agent.run(warmup).await.map_err(SandboxError::Exec)?;
                if outcome.exit_code != 0 {
                    return Err(SandboxError::Boot(format!(
                        "warm-up code exited with {}: {}",
                        outcome.exit_code,
                        String::from_utf8_lossy(&outcome.stderr)
                    )));
                }
                booted.agent.quiesce().await.map_err(SandboxError::Exec)?;
                Ok(())
            }
            .await;
            let Booted { vm, agent, .. } = booted;
            // Close the session before the pause, so the image holds an agent
            // waiting for its next connection.
            drop(agent);
            let result = match snapshot {
                Ok(()) => {
                    tokio::time::sleep(QUIESCE_SETTLE).await;
                    self.snapshot_into(vm.as_ref(), templates, pack, &key).await
                }
                Err(e) => Err(e),
            };
            vm.stop().await.ok();
            result
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn snapshot_into(
        &self,
        vm: &dyn Vm,
        templates: &template::Templates,
        pack: &str,
        key: &str,
    ) -> Result<SnapshotFiles, SandboxError> {
        let staging =
            templates
                .staging_dir(pack, key)
                .map_err(|source| SandboxError::SandboxDir {
                    path: self.config.snapshot_dir.clone().unwrap_or_default(),
                    source,
                })?;
        let result = async {
            vm.pause().await.map_err(boot_error)?;
            vm.snapshot(&SnapshotFiles {
                dir: staging.clone(),
            })
            .await
            .map_err(boot_error)?;
            templates
                .publish(pack, key, &staging)
                .map_err(|source| SandboxError::SandboxDir {
                    path: staging.clone(),
                    source,
                })
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    /// `GET /info`.
    pub fn info(&self) -> InfoResponse {
        InfoResponse {
            guest_ram_mib: self.config.memory_mib,
            guest_vcpus: self.config.vcpus,
            boot_path: self.next_boot_path().into(),
            packs: self.manifest.pack_names(),
            work_dir: self.config.work_dir.display().to_string(),
            backend: Some(self.backend.name().to_owned()),
            accel: self.backend.accel(),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            pool_ready: (self.config.pool_size > 0).then(|| self.pools.ready_counts()),
        }
    }

    fn lookup(&self, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        self.sandboxes
            .lock()
            .expect("sandbox map lock")
            .get(id)
            .cloned()
            .ok_or(SandboxError::NotFound)
    }

    fn insert(&self, sandbox: Arc<Sandbox>) {
        self.sandboxes
            .lock()
            .expect("sandbox map lock")
            .insert(sandbox.id.clone(), sandbox);
    }

    /// A fresh sandbox id and its (private, empty) directory.
    fn new_sandbox_dir(&self) -> Result<(String, PathBuf), SandboxError> {
        let id = new_sandbox_id();
        let dir = self.config.work_dir.join(&id);
        create_private_dir(&dir).map_err(|source| SandboxError::SandboxDir {
            path: dir.clone(),
            source,
        })?;
        Ok((id, dir))
    }

    fn pack_artefact(&self, pack: &str) -> Result<&PackArtefact, SandboxError> {
        self.manifest.pack(pack).map_err(|e| match e {
            ManifestError::UnknownPack(name) => SandboxError::UnknownPack(name),
            other => SandboxError::Boot(other.to_string()),
        })
    }

    /// Creates a sandbox of `pack` and returns its id once its agent answers.
    pub async fn create(&self, pack: &str) -> Result<String, SandboxError> {
        if self.shutting_down.is_cancelled() {
            return Err(SandboxError::ShuttingDown);
        }
        let artefact = self.pack_artefact(pack)?;
        while let Some(booted) = self.pools.take(pack) {
            match self.adopt(booted, pack).await {
                Ok(id) => return Ok(id),
                Err(e) => {
                    tracing::warn!(pack, error = %e, "pooled sandbox unusable; trying the next")
                }
            }
        }
        self.create_cold(pack, artefact).await
    }

    /// Hands out a pooled VM if it is healthy and accepts its identity.
    async fn adopt(&self, booted: Booted, pack: &str) -> Result<String, SandboxError> {
        // The filler checks `Health` every second; only a VM not heard from
        // recently is asked again before hand-out.
        let fresh = booted
            .healthy_at
            .lock()
            .expect("health lock")
            .is_some_and(|at| at.elapsed() < HEALTH_FRESH);
        let healthy = fresh
            || tokio::time::timeout(HEALTH_BOUND, booted.agent.healthy())
                .await
                .unwrap_or(false);
        let sandbox = Arc::new(Sandbox::from_booted(booted, pack, BOOT_PATH_POOL));
        if !healthy {
            sandbox.teardown().await;
            return Err(SandboxError::Boot(
                "pooled sandbox did not answer Health".into(),
            ));
        }
        sandbox.set_state(SandboxState::Running);
        let id = sandbox.id.clone();
        self.insert(sandbox);
        tracing::info!(sandbox = %id, pack, "sandbox handed out from the pool");
        Ok(id)
    }

    async fn create_cold(
        &self,
        pack: &str,
        artefact: &PackArtefact,
    ) -> Result<String, SandboxError> {
        let (id, dir) = self.new_sandbox_dir()?;
        let sandbox = Arc::new(Sandbox::booting(
            id.clone(),
            pack,
            dir.clone(),
            BOOT_PATH_COLD,
        ));
        self.insert(sandbox.clone());
        let started = Instant::now();
        let booted = tokio::select! {
            result = self.boot_vm(&id, &dir, pack, artefact) => result,
            () = sandbox.deleted.cancelled() => Err(SandboxError::Deleted("booting")),
        };
        let result = match booted {
            Ok(booted) => {
                sandbox.set_boot_path(booted.boot_path);
                let agent = booted.agent.clone();
                let _ = sandbox.vm.set(booted.vm);
                let _ = sandbox.agent.set(agent.clone());
                // A delete that raced the boot may have missed the VM.
                if sandbox.deleted.is_cancelled() {
                    Err(SandboxError::Deleted("booting"))
                } else {
                    agent
                        .set_identity(&id)
                        .await
                        .map_err(|e| SandboxError::Boot(e.to_string()))
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                sandbox.set_state(SandboxState::Running);
                tracing::info!(
                    sandbox = %id,
                    pack,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "sandbox ready (cold boot)"
                );
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "create failed; unwinding");
                self.sandboxes.lock().expect("sandbox map lock").remove(&id);
                sandbox.teardown().await;
                Err(e)
            }
        }
    }

    /// Makes a VM in `dir` and opens its agent session: restored from the
    /// pack's template when there is one, cold-booted otherwise (and when
    /// the restore fails). On error the VM is stopped; the directory is the
    /// caller's to remove.
    async fn boot_vm(
        &self,
        id: &str,
        dir: &Path,
        pack: &str,
        artefact: &PackArtefact,
    ) -> Result<Booted, SandboxError> {
        let spec = self.boot_spec(id, dir, artefact);
        if let Some(files) = self.template_for(pack) {
            match self.restore(&spec, &files).await {
                Ok(booted) => return Ok(booted),
                Err(e) => {
                    tracing::warn!(pack, sandbox = id, error = %e, "restore from the template failed; falling back to a cold boot");
                    if let Some(templates) = &self.templates {
                        templates.discard(pack, &files);
                    }
                    clear_dir(dir);
                }
            }
        }
        let booted = self.cold_boot(&spec).await?;
        if self.templates.is_some() && self.template_for(pack).is_none() {
            let _ = self.template_requests.send(pack.to_owned());
        }
        Ok(booted)
    }

    async fn restore(
        &self,
        spec: &BootSpec,
        files: &SnapshotFiles,
    ) -> Result<Booted, SandboxError> {
        let vm = self
            .backend
            .restore(spec, files)
            .await
            .map_err(boot_error)?;
        self.open_session(spec, vm, BOOT_PATH_SNAPSHOT).await
    }

    async fn cold_boot(&self, spec: &BootSpec) -> Result<Booted, SandboxError> {
        let vm = self.backend.start(spec).await.map_err(boot_error)?;
        self.open_session(spec, vm, BOOT_PATH_COLD).await
    }

    async fn open_session(
        &self,
        spec: &BootSpec,
        vm: Box<dyn Vm>,
        boot_path: &'static str,
    ) -> Result<Booted, SandboxError> {
        let bound = spec.boot_timeout;
        let agent = match tokio::time::timeout(bound, connect_agent(vm.as_ref())).await {
            Ok(Ok(agent)) => agent,
            Ok(Err(e)) => {
                vm.stop().await.ok();
                return Err(e);
            }
            Err(_) => {
                vm.stop().await.ok();
                return Err(SandboxError::Boot(format!(
                    "the guest agent did not answer within {bound:?}{}",
                    console_hint(&spec.sandbox_dir)
                )));
            }
        };
        Ok(Booted {
            id: spec.sandbox_id.clone(),
            dir: spec.sandbox_dir.clone(),
            vm,
            agent,
            boot_path,
            healthy_at: Arc::new(Mutex::new(None)),
        })
    }

    /// Boots one VM for a pool, in a fresh directory.
    async fn boot_for_pool(&self, pack: &str) -> Result<Booted, SandboxError> {
        let artefact = self.pack_artefact(pack)?;
        let (id, dir) = self.new_sandbox_dir()?;
        let booted = tokio::select! {
            result = self.boot_vm(&id, &dir, pack, artefact) => result,
            () = self.shutting_down.cancelled() => Err(SandboxError::ShuttingDown),
        };
        // The identity goes in now, so that hand-out is a map insert. Its id
        // is final; its clock runs on from here; its entropy is its own.
        let booted = match booted {
            Ok(booted) => match booted.agent.set_identity(&booted.id).await {
                Ok(()) => {
                    *booted.healthy_at.lock().expect("health lock") = Some(Instant::now());
                    Ok(booted)
                }
                Err(e) => {
                    booted.vm.stop().await.ok();
                    Err(SandboxError::Boot(e.to_string()))
                }
            },
            Err(e) => Err(e),
        };
        if booted.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        booted
    }

    /// Runs `params.code` in sandbox `id` with the pack's interpreter.
    pub async fn exec(&self, id: &str, params: ExecParams) -> Result<ExecResponse, SandboxError> {
        let sandbox = self.lookup(id)?;
        match sandbox.state() {
            SandboxState::Running => {}
            SandboxState::Booting => return Err(SandboxError::NotRunning("booting")),
            SandboxState::Stopping => return Err(SandboxError::NotRunning("stopping")),
        }
        let timeout = match params.timeout_ms {
            None | Some(0) => DEFAULT_EXEC_TIMEOUT,
            Some(ms) if Duration::from_millis(ms) > MAX_EXEC_TIMEOUT => {
                return Err(SandboxError::InvalidRequest(format!(
                    "timeout_ms must be at most {}",
                    MAX_EXEC_TIMEOUT.as_millis()
                )))
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let pack = self.pack_artefact(&sandbox.pack)?;
        let agent = sandbox
            .agent
            .get()
            .cloned()
            .ok_or(SandboxError::NotRunning("booting"))?;
        let spec = RunSpec {
            interpreter: pack.interpreter.clone(),
            code: params.code.into_bytes(),
            file_suffix: pack.file_suffix.clone(),
            stdin: params.stdin.map(String::into_bytes),
            timeout: Some(timeout),
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT,
            warm_language: pack.warm_language.clone(),
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            result = agent.run(spec) => result.map_err(SandboxError::Exec)?,
            () = sandbox.deleted.cancelled() => return Err(SandboxError::Deleted("the code was running")),
            () = tokio::time::sleep(timeout + EXEC_ANSWER_GRACE) => {
                return Err(SandboxError::AgentUnresponsive(EXEC_ANSWER_GRACE))
            }
        };
        Ok(exec_response(outcome, started.elapsed()))
    }

    /// Stops and removes sandbox `id`.
    pub async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = self
            .sandboxes
            .lock()
            .expect("sandbox map lock")
            .remove(id)
            .ok_or(SandboxError::NotFound)?;
        sandbox.set_state(SandboxState::Stopping);
        sandbox.deleted.cancel();
        sandbox.teardown().await;
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    /// `GET /sandboxes`, oldest first.
    pub fn list(&self) -> Vec<SandboxInfo> {
        let mut all: Vec<_> = self
            .sandboxes
            .lock()
            .expect("sandbox map lock")
            .values()
            .map(|s| s.info(self.backend.name(), false))
            .collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    /// `GET /sandboxes/{id}`.
    pub fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        Ok(self.lookup(id)?.info(self.backend.name(), true))
    }

    /// Refuses new sandboxes and stops every VM, pooled ones included.
    /// Called once at shutdown.
    pub async fn shutdown(&self) {
        self.shutting_down.cancel();
        let tasks: Vec<_> = self
            .background
            .lock()
            .expect("task list lock")
            .drain(..)
            .collect();
        futures::future::join_all(tasks).await;
        let ids: Vec<String> = self
            .sandboxes
            .lock()
            .expect("sandbox map lock")
            .keys()
            .cloned()
            .collect();
        let pooled = self.pools.drain();
        let count = ids.len() + pooled.len();
        let deletes = futures::future::join_all(ids.iter().map(|id| self.delete(id)));
        let discards = futures::future::join_all(pooled.into_iter().map(discard));
        tokio::join!(deletes, discards);
        tracing::info!(stopped = count, "all sandboxes stopped");
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

/// Stops a VM nobody will use and removes its directory.
async fn discard(booted: Booted) {
    booted.vm.stop().await.ok();
    let _ = std::fs::remove_dir_all(&booted.dir);
}

async fn connect_agent(vm: &dyn Vm) -> Result<AgentClient, SandboxError> {
    // The agent's socket may refuse connections for a moment while the VMM
    // sets it up; a connected stream then waits for the guest to open its end.
    loop {
        match vm.connect_agent().await {
            Ok(stream) => {
                return AgentClient::handshake(stream)
                    .await
                    .map(|(client, _hello)| client)
                    .map_err(|e| SandboxError::Boot(e.to_string()));
            }
            Err(VmmError::AgentConnect(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(other) => return Err(boot_error(other)),
        }
    }
}

/// Waits (bounded) until the agent's pre-started interpreter for `language`
/// is ready, so that a template holds it warm. Without one, execs still work.
async fn wait_until_warm(agent: &AgentClient, language: &str) {
    let deadline = Instant::now() + WARM_INTERPRETER_BOUND;
    while Instant::now() < deadline {
        if agent
            .warm_interpreters()
            .await
            .is_some_and(|warm| warm.iter().any(|w| w == language))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(
        language,
        "the warm interpreter did not come up; the template runs one-shot"
    );
}

fn boot_error(error: VmmError) -> SandboxError {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    SandboxError::Boot(message)
}

/// Maps the guest's outcome onto the API's contract: -1 for a timeout or a
/// signal death, with a reason in `error`.
fn exec_response(outcome: RunOutcome, elapsed: Duration) -> ExecResponse {
    let (exit_code, error) = if outcome.timed_out {
        (-1, Some("execution timed out".to_owned()))
    } else if let Some(reason) = outcome.launch_error {
        (-1, Some(reason))
    } else if let Some(signal) = outcome.signal {
        (-1, Some(format!("killed by signal {signal}")))
    } else {
        (outcome.exit_code, None)
    };
    ExecResponse {
        stdout: String::from_utf8_lossy(&outcome.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&outcome.stderr).into_owned(),
        exit_code,
        duration_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        duration_us: Some(u64::try_from(outcome.guest_duration.as_micros()).unwrap_or(u64::MAX)),
        vm_duration_us: outcome
            .vm_duration
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        error,
        stdout_truncated: outcome.stdout_truncated,
        stderr_truncated: outcome.stderr_truncated,
    }
}

/// `sb_` followed by 12 lowercase hex digits.
pub fn new_sandbox_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("sb_{}", hex::encode(bytes))
}

/// True for strings shaped like a sandbox id.
pub fn is_sandbox_id(s: &str) -> bool {
    s.strip_prefix("sb_").is_some_and(|hex| {
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(CONSOLE_TAIL_LINES);
    lines[start..].join("\n")
}

fn console_hint(dir: &Path) -> String {
    let tail = console_tail(&dir.join("console.log"));
    match tail.lines().last() {
        Some(last) => format!("; last console line: {last}"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        for _ in 0..100 {
            let id = new_sandbox_id();
            assert!(is_sandbox_id(&id), "{id}");
        }
        assert!(!is_sandbox_id("sb_123"));
        assert!(!is_sandbox_id("sb_ABCDEF123456"));
        assert!(!is_sandbox_id("../etc/passwd"));
    }

    #[test]
    fn timeouts_and_signals_map_to_minus_one() {
        let timed_out = RunOutcome {
            timed_out: true,
            exit_code: 137,
            signal: Some(9),
            stdout: b"partial".to_vec(),
            ..RunOutcome::default()
        };
        let response = exec_response(timed_out, Duration::from_millis(5));
        assert_eq!(response.exit_code, -1);
        assert_eq!(response.error.as_deref(), Some("execution timed out"));
        assert_eq!(response.stdout, "partial");

        let killed = RunOutcome {
            exit_code: 143,
            signal: Some(15),
            ..RunOutcome::default()
        };
        let response = exec_response(killed, Duration::ZERO);
        assert_eq!(response.exit_code, -1);
        assert_eq!(response.error.as_deref(), Some("killed by signal 15"));

        let normal = RunOutcome {
            exit_code: 7,
            ..RunOutcome::default()
        };
        assert_eq!(exec_response(normal, Duration::ZERO).exit_code, 7);
    }
}
