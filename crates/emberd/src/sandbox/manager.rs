//! The registry of sandboxes and the manager's public API.
//!
//! A create is checked against the per-sandbox limits, then goes to a pool
//! (default shape only), else to a standby VMM (default shape, a template
//! there) whose slot takes the guest's memory, else takes room under the
//! admission limits; either of the last two takes a boot turn and goes to
//! the launcher; every sandbox is in the registry
//! from the moment its id exists until its delete or its reaping. The
//! manager hands out domain types only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::image::Manifest;
use crate::metrics::Metrics;
use crate::vmm::VmBackend;

use super::admission::{Admission, Reservation};
use super::background::Background;
use super::error::{BootError, Interrupted, SandboxError};
use super::exec::{exec_timeout, PreparedExec};
use super::launcher::Launcher;
use super::limits::Terms;
use super::model::{BootPath, CreateParams, DaemonInfo, ExecOutcome, ExecParams, SandboxSummary};
use super::pool::{Pooled, Pools};
use super::reaper::{self, Registry};
use super::record::Sandbox;
use super::recovery::{self, WorkDirError, WorkDirLock};
use super::standby::{Standby, Standbys};
use super::{observe, vm_watch, ManagerConfig};

/// A pooled VM that answered `Health` this recently is handed out unasked.
const HEALTH_FRESH: Duration = Duration::from_secs(2);
/// How long a pooled sandbox gets to answer `Health` before hand-out.
const HEALTH_BOUND: Duration = Duration::from_secs(2);

/// Owns all sandboxes of one daemon.
pub struct Manager {
    launcher: Arc<Launcher>,
    sandboxes: Registry,
    pools: Arc<Pools>,
    standbys: Arc<Standbys>,
    admission: Arc<Admission>,
    background: Background,
    template_queue: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    reaper: Mutex<Option<JoinHandle<()>>>,
    reaped: Arc<AtomicU64>,
    /// Counters and histograms of creates and execs (see `observe.rs`).
    pub(super) metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: long-lived output streams (process
    /// followers, attached WebSockets) end then, instead of holding the
    /// drain of requests in flight until its bound.
    streams_closing: CancellationToken,
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
        let admission = Admission::new(&config.limits, config.boot_timeout);
        let pools = Arc::new(Pools::new(
            &manifest.pack_names(),
            &config,
            admission.clone(),
        ));
        let standbys = Arc::new(Standbys::new(
            &manifest.pack_names(),
            config.standby_vmms,
            config.pool.refill_settle,
            admission.clone(),
        ));
        let metrics = Arc::new(observe::new_metrics(&manifest.pack_names()));
        let (template_requests, template_queue) = tokio::sync::mpsc::unbounded_channel();
        let background = Background::new();
        let launcher = Launcher::new(
            backend,
            manifest,
            config,
            template_requests,
            background.token.clone(),
            metrics.clone(),
        );
        Ok(Manager {
            launcher: Arc::new(launcher),
            sandboxes: Arc::new(Mutex::new(HashMap::new())),
            pools,
            standbys,
            admission,
            background,
            template_queue: Mutex::new(Some(template_queue)),
            reaper: Mutex::new(None),
            reaped: Arc::default(),
            metrics,
            streams_closing: CancellationToken::new(),
            _lock: lock,
        })
    }

    /// Starts the background work: template builds (all packs first when
    /// asked to warm at start), then one pool filler per pack, and the
    /// reaper. Only the first call does anything.
    pub fn start_background(&self) {
        if let Some(queue) = self.template_queue.lock().take() {
            self.background.start(
                self.launcher.clone(),
                self.pools.clone(),
                self.standbys.clone(),
                queue,
            );
            *self.reaper.lock() = Some(reaper::spawn(
                self.sandboxes.clone(),
                self.reaped.clone(),
                self.background.token.clone(),
            ));
        }
    }

    pub fn backend(&self) -> &dyn VmBackend {
        self.launcher.backend.as_ref()
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.launcher.config
    }

    /// Creates a sandbox of `pack` with every default.
    pub async fn create(&self, pack: &str) -> Result<String, SandboxError> {
        self.create_with(CreateParams::pack(pack)).await
    }

    /// Creates a sandbox and returns its id once its agent answers. A
    /// create over a per-sandbox maximum or an admission limit fails before
    /// any VM work starts.
    pub async fn create_with(&self, params: CreateParams) -> Result<String, SandboxError> {
        let started = Instant::now();
        let pack = params.pack.as_str();
        if self.background.token.is_cancelled() {
            return Err(SandboxError::ShuttingDown);
        }
        let default_shape = self.launcher.default_shape();
        let terms = self.config().limits.terms(&params, default_shape)?;
        self.launcher.pack(pack)?;
        if terms.shape == default_shape {
            while let Some(pooled) = self.pools.take(pack) {
                match self.adopt(pooled, pack, terms, started).await {
                    Ok(id) => return Ok(id),
                    Err(e) => {
                        tracing::warn!(pack, error = %crate::error_chain::render(&e), "pooled sandbox unusable; trying the next")
                    }
                }
            }
            // A pool miss: the pool grows (within its bounds) and it counts.
            if self.pools.enabled() {
                self.pools.missed(pack);
                self.metrics.record_pool_miss(pack);
            }
            if let Some(standby) = self.take_standby(pack, terms.shape.memory_mib).await? {
                return self
                    .boot_new(pack, terms, Start::Standby(standby), started)
                    .await;
            }
        }
        let reservation = self.make_room(terms.shape.memory_mib).await?;
        self.boot_new(pack, terms, Start::Fresh(reservation), started)
            .await
    }

    /// A ready standby VMM of `pack` for its current template, its slot
    /// now holding `memory_mib` of guest memory, if one is ready. Pooled
    /// VMs give up their room when the memory limit refuses; when that is
    /// not enough the standby goes back and the create is refused.
    async fn take_standby(
        &self,
        pack: &str,
        memory_mib: u32,
    ) -> Result<Option<Standby>, SandboxError> {
        if !self.standbys.enabled() {
            return Ok(None);
        }
        let (taken, unusable) = self
            .standbys
            .take(pack, |lease| self.launcher.template_is_current(pack, lease));
        for standby in unusable {
            tracing::debug!(pack, sandbox = %standby.id, "standby VMM discarded: its VMM ended or its template changed");
            standby.discard().await;
        }
        let Some(mut standby) = taken else {
            return Ok(None);
        };
        loop {
            let refused = match standby.room.resize(memory_mib) {
                Ok(()) => return Ok(Some(standby)),
                Err(refused) => refused,
            };
            let Some(pooled) = self.pools.take_any() else {
                self.standbys.put_back(pack, standby);
                return Err(refused);
            };
            pooled.booted.discard().await;
        }
    }

    /// Room under the admission limits for a sandbox of `memory_mib`. When
    /// there is none, pooled VMs, then standby VMMs, give up theirs (they
    /// are stopped) before the create is refused: a ready VM never stands
    /// in a sandbox's way.
    async fn make_room(&self, memory_mib: u32) -> Result<Reservation, SandboxError> {
        loop {
            let refused = match self.admission.reserve(memory_mib) {
                Ok(reservation) => return Ok(reservation),
                Err(refused) => refused,
            };
            let mut reservation = if let Some(pooled) = self.pools.take_any() {
                pooled.booted.discard().await;
                pooled.reservation
            } else if let Some(standby) = self.standbys.take_any() {
                let room = standby.room;
                standby.vm.stop().await;
                let _ = std::fs::remove_dir_all(&standby.dir);
                room
            } else {
                return Err(refused);
            };
            if reservation.resize(memory_mib).is_ok() {
                return Ok(reservation);
            }
        }
    }

    /// Hands out a pooled VM if it is healthy.
    async fn adopt(
        &self,
        pooled: Pooled,
        pack: &str,
        terms: Terms,
        started: Instant,
    ) -> Result<String, SandboxError> {
        // The filler checks `Health` every second; only a VM not heard from
        // recently is asked again before hand-out. One that has died since
        // is never handed out.
        let guest = &pooled.booted.guest;
        let healthy = !guest.vm.has_exited()
            && (pooled.answered_within(HEALTH_FRESH)
                || tokio::time::timeout(HEALTH_BOUND, guest.agent.healthy())
                    .await
                    .unwrap_or(false));
        if !healthy {
            pooled.booted.discard().await;
            return Err(BootError::Unhealthy.into());
        }
        let mut booted = pooled.booted;
        booted.guest.boot_path = BootPath::WarmPool;
        let id = booted.id.clone();
        tracing::Span::current().record("sandbox", id.as_str());
        let sandbox = Arc::new(Sandbox::running(
            booted.id,
            pack,
            booted.dir,
            booted.guest,
            terms,
            pooled.reservation,
        ));
        self.insert(sandbox.clone());
        vm_watch::watch(sandbox, self.background.token.clone());
        self.metrics
            .record_create(BootPath::WarmPool.as_str(), started.elapsed());
        tracing::info!(sandbox = %id, pack, "sandbox handed out from the pool");
        Ok(id)
    }

    /// Registers a booting sandbox, waits for a boot turn, boots its VM
    /// (in a standby VMM's process and directory when given one), and
    /// unwinds on failure (the reservation goes with the sandbox).
    async fn boot_new(
        &self,
        pack: &str,
        terms: Terms,
        start: Start,
        started: Instant,
    ) -> Result<String, SandboxError> {
        let (id, dir, reservation, standby) = match start {
            Start::Fresh(reservation) => {
                let (id, dir) = self.launcher.new_sandbox_dir()?;
                (id, dir, reservation, None)
            }
            Start::Standby(s) => (s.id, s.dir, s.room, Some((s.vm, s.lease))),
        };
        tracing::Span::current().record("sandbox", id.as_str());
        let sandbox = Arc::new(Sandbox::booting(
            id.clone(),
            pack,
            dir.clone(),
            terms,
            reservation,
        ));
        self.insert(sandbox.clone());
        let boot = async {
            let _turn = self.admission.boot_permit().await?;
            let booted = match standby {
                Some((vm, lease)) => {
                    self.launcher
                        .boot_from_standby(&id, &dir, pack, vm, lease)
                        .await
                }
                None => self.launcher.boot(&id, &dir, pack, terms.shape).await,
            };
            // A boot cut short by shutdown is no failure of the VM.
            if matches!(&booted, Err(e) if !matches!(e, SandboxError::ShuttingDown)) {
                self.metrics.record_boot_failure(pack);
            }
            booted
        };
        let booted = tokio::select! {
            result = boot => result,
            () = sandbox.deleted.cancelled() => Err(SandboxError::Deleted(Interrupted::Boot)),
        };
        let result = match booted {
            Ok(guest) => {
                let boot_path = guest.boot_path;
                match sandbox.finish_boot(guest) {
                    Ok(()) => {
                        vm_watch::watch(sandbox, self.background.token.clone());
                        self.metrics
                            .record_create(boot_path.as_str(), started.elapsed());
                        tracing::info!(sandbox = %id, pack, %boot_path, elapsed_ms = started.elapsed().as_millis() as u64, "sandbox ready");
                        return Ok(id);
                    }
                    // A delete raced the end of the boot.
                    Err(guest) => {
                        guest.stop(&id).await;
                        Err(SandboxError::Deleted(Interrupted::Boot))
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(sandbox = %id, error = %crate::error_chain::render(e), "create failed; unwinding");
        }
        self.sandboxes.lock().remove(&id);
        sandbox.teardown().await;
        result
    }

    /// Runs `params.code` in sandbox `id` with the pack's interpreter. An
    /// exec whose VM ends under it answers [`SandboxError::Exited`].
    pub async fn exec(&self, id: &str, params: ExecParams) -> Result<ExecOutcome, SandboxError> {
        let outcome = self
            .prepare_exec(id, params.timeout_ms)?
            .run(params, None)
            .await?;
        self.metrics.record_exec(outcome.elapsed);
        Ok(outcome)
    }

    /// Checks what an exec (unary or streamed) or a process start needs
    /// before anything runs: the sandbox, its guest, the timeout, the pack.
    pub(super) fn prepare_exec(
        &self,
        id: &str,
        timeout_ms: Option<u64>,
    ) -> Result<PreparedExec, SandboxError> {
        let sandbox = self.lookup(id)?;
        let guest = sandbox.guest()?;
        let timeout = exec_timeout(timeout_ms)?;
        let pack = self.launcher.pack(&sandbox.pack)?.clone();
        Ok(PreparedExec {
            sandbox,
            guest,
            pack,
            timeout,
        })
    }

    /// Stops and removes sandbox `id`.
    pub async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = self
            .sandboxes
            .lock()
            .remove(id)
            .ok_or(SandboxError::NotFound)?;
        sandbox.teardown().await;
        tracing::info!(sandbox = %id, "sandbox deleted");
        Ok(())
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Vec<SandboxSummary> {
        let backend = self.launcher.backend.name();
        let mut all: Vec<_> = self
            .sandboxes
            .lock()
            .values()
            .map(|s| s.summary(backend, false))
            .collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    /// Sandboxes deleted for their TTL or idle timeout since start.
    pub fn reaped(&self) -> u64 {
        self.reaped.load(Ordering::SeqCst)
    }

    /// Sandboxes (pooled VMs included) and MiB of guest memory held now
    /// against the admission limits.
    pub fn held(&self) -> (usize, u64) {
        self.admission.held()
    }

    /// `NotFound` unless sandbox `id` exists; reads nothing else.
    pub fn check_exists(&self, id: &str) -> Result<(), SandboxError> {
        self.lookup(id).map(|_| ())
    }

    /// One sandbox, with the tail of its console.
    pub fn get(&self, id: &str) -> Result<SandboxSummary, SandboxError> {
        Ok(self.lookup(id)?.summary(self.launcher.backend.name(), true))
    }

    /// The daemon's settings and readiness.
    pub fn info(&self) -> DaemonInfo {
        let launcher = &self.launcher;
        let pack = emberd_api::DEFAULT_LANGUAGE_PACK;
        let next_boot_path = if self.pools.enabled() {
            BootPath::WarmPool
        } else if self.standbys.ready(pack) > 0 && launcher.template_for(pack).is_some() {
            BootPath::StandbyRestore
        } else {
            launcher.boot_path_without_pool(pack)
        };
        DaemonInfo {
            guest_memory_mib: launcher.config.memory_mib,
            guest_vcpus: launcher.config.vcpus,
            next_boot_path,
            packs: launcher.manifest.pack_names(),
            work_dir: launcher.config.work_dir.clone(),
            backend: launcher.backend.name(),
            accel: launcher.backend.acceleration(),
            pool_ready: self.pools.enabled().then(|| self.pools.ready_counts()),
            reaped: self.reaped(),
        }
    }

    /// How many VMs each pack's pool keeps ready now (its adaptive
    /// target), when pools are on.
    pub(super) fn pool_targets(&self) -> Option<std::collections::BTreeMap<String, usize>> {
        self.pools.enabled().then(|| self.pools.targets())
    }

    /// How many packs' template restores were given up since the daemon
    /// started (they failed on an intact template): a metric.
    pub fn restores_given_up(&self) -> u64 {
        self.launcher.packs_given_up()
    }

    /// Ends every open process follower and attached WebSocket (with a
    /// "shutting down" error); requests with an end of their own (execs,
    /// transfers) carry on. Called when shutdown begins, before requests
    /// in flight are drained.
    pub fn close_streams(&self) {
        self.streams_closing.cancel();
    }

    /// Cancelled once [`Manager::close_streams`] was called.
    pub(super) fn streams_closing(&self) -> &CancellationToken {
        &self.streams_closing
    }

    /// Refuses new sandboxes and stops every VM, pooled ones and standby
    /// VMMs included. Called once at shutdown.
    pub async fn shutdown(&self) {
        self.background.stop().await;
        let reaper = self.reaper.lock().take();
        if let Some(reaper) = reaper {
            let _ = reaper.await;
        }
        let ids: Vec<String> = self.sandboxes.lock().keys().cloned().collect();
        let pooled = self.pools.drain();
        let standbys = self.standbys.drain();
        let count = ids.len() + pooled.len();
        let deletes = futures::future::join_all(ids.iter().map(|id| self.delete(id)));
        let discards = futures::future::join_all(pooled.into_iter().map(|b| b.discard()));
        let stops = futures::future::join_all(standbys.into_iter().map(Standby::discard));
        tokio::join!(deletes, discards, stops);
        tracing::info!(stopped = count, "all sandboxes stopped");
    }

    pub(super) fn lookup(&self, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        self.sandboxes
            .lock()
            .get(id)
            .cloned()
            .ok_or(SandboxError::NotFound)
    }

    fn insert(&self, sandbox: Arc<Sandbox>) {
        self.sandboxes.lock().insert(sandbox.id.clone(), sandbox);
    }
}

/// Where a create's VM comes from once the pool had none.
enum Start {
    /// A new directory and VMM process, in this room.
    Fresh(Reservation),
    /// A standby VMM: its id, directory, process and room.
    Standby(Standby),
}

impl Drop for Manager {
    /// A manager dropped without [`Manager::shutdown`] still ends its
    /// background tasks; their VMs die with their handles.
    fn drop(&mut self) {
        self.background.token.cancel();
    }
}
