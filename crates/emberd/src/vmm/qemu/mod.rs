//! The QEMU backend: `qemu-system-x86_64 -M microvm`.
//!
//! Owns the choice between KVM and TCG, the QEMU process (launched with
//! `PR_SET_PDEATHSIG`, under QEMU's seccomp sandbox, as the VMM user when
//! the daemon is root, in its own cgroup where the host delegates one,
//! reaped by one task), its control channel (QMP on a Unix socket in the
//! sandbox dir, every call under a deadline), its console (a pipe drained
//! into a bounded ring) and migrations to and from files through
//! descriptors the daemon opens. Must never let QEMU spawn a program.
//!
//! Per sandbox dir: `qmp.sock` (control), `agent.sock` (the chardev behind
//! the virtio-serial port `org.emberd.agent`), `qemu.log` (QEMU's own
//! stderr). The pack is a read-only virtio-blk disk; there is no network
//! device.
//!
//! Copy-on-write templates: a VM booted with [`BootSpec::memory_file`]
//! keeps its RAM in that file, mapped shared, and its snapshot (with the
//! `x-ignore-shared` migration capability) holds the device state only.
//! A restore finds the RAM file beside the state ([`SnapshotFiles::memory_file`]),
//! maps it private (`share=off`: the clone's writes are copied into its own
//! memory, the file is never written) and loads the state into a QEMU
//! started with `-incoming defer`.

mod accel;
mod clone;
mod command;
mod qmp;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use self::accel::{host_tsc_khz, tcg_clock_args};
pub use self::accel::{AccelChoice, AccelDecision, UnknownAccel};
use self::clone::{create_memory_file, ignore_shared, version_at_least};
pub use self::command::TCG_TRANSLATION_CACHE_MIB;
use self::command::{command, GuestMemory, Incoming, Launch, SANDBOX};
use self::qmp::{Qmp, QmpError};
use super::cgroup::{VmmCgroups, VmmLimits};
use super::console::ConsoleRing;
use super::kvm::hardware_kvm;
use super::process::{describe_exit, version_line, SpawnOptions, VmProcess};
use super::vmm_user::VmmUser;
use super::{
    Accel, AgentStream, BootSpec, Capabilities, SnapshotFiles, StandbyVm, Vm, VmBackend, VmExit,
    VmmError,
};
use crate::host_tools::find_in_path;

/// File of a snapshot directory holding the migration stream.
const MIGRATION_FILE: &str = "vm.migration";
/// Bound on one QMP command.
const QMP_DEADLINE: Duration = Duration::from_secs(10);
/// Bound on writing a snapshot (a migration of the guest's RAM to a file).
const MIGRATION_BOUND: Duration = Duration::from_secs(120);
/// The name the outgoing migration's descriptor gets in QEMU (`getfd`).
const MIGRATION_FD_NAME: &str = "migration";
/// How much of the end of `qemu.log` an early-exit error quotes from.
const LOG_TAIL_BYTES: u64 = 4096;

/// Errors setting up the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuSetupError {
    #[error(
        "{binary} not found: install QEMU (`apt-get install qemu-system-x86`, or run `make setup`)"
    )]
    NotFound { binary: String },
    #[error("cannot run {binary} --version")]
    Version {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} has no seccomp sandbox (-sandbox {SANDBOX} is refused): install a QEMU built with libseccomp")]
    NoSeccomp { binary: String },
}

/// Makes QEMU microvm VMs.
pub struct QemuBackend {
    binary: PathBuf,
    version: String,
    accel: AccelDecision,
    /// Kernel arguments that depend on the accelerator.
    accel_kernel_args: Vec<String>,
    /// The user QEMU drops to (`-runas`), when the daemon is root.
    runas: Option<VmmUser>,
    /// Where each VMM's cgroup goes, when the host delegates controllers.
    cgroups: Option<Arc<VmmCgroups>>,
    /// TCG's translation cache, MiB.
    tb_size_mib: u32,
    /// Whether QEMU can open a privately mapped RAM file read-only while
    /// the guest still writes its own copy (`readonly=on,rom=off`, 8.2+).
    private_read_only: bool,
}

impl QemuBackend {
    /// Finds QEMU (`binary`, or `qemu-system-x86_64` on PATH), checks that
    /// it has a seccomp sandbox, and picks the accelerator. VMMs run as the
    /// daemon's user and in no cgroup until told otherwise.
    pub fn new(binary: Option<PathBuf>, choice: AccelChoice) -> Result<Self, QemuSetupError> {
        let binary = binary.unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let resolved = find_in_path(&binary).ok_or_else(|| QemuSetupError::NotFound {
            binary: binary.display().to_string(),
        })?;
        let version = version_line(&resolved).map_err(|source| QemuSetupError::Version {
            binary: resolved.display().to_string(),
            source,
        })?;
        if !seccomp_supported(&resolved) {
            return Err(QemuSetupError::NoSeccomp {
                binary: resolved.display().to_string(),
            });
        }
        let accel = AccelDecision::decide(choice, &hardware_kvm());
        let accel_kernel_args = if accel.accel == Accel::Tcg {
            tcg_clock_args(host_tsc_khz())
        } else {
            Vec::new()
        };
        let private_read_only = version_at_least(&version, (8, 2));
        Ok(QemuBackend {
            binary: resolved,
            version,
            accel,
            accel_kernel_args,
            runas: None,
            cgroups: None,
            tb_size_mib: TCG_TRANSLATION_CACHE_MIB,
            private_read_only,
        })
    }

    /// Gives TCG a translation cache of `mib` MiB (no effect under KVM).
    pub fn with_tb_size_mib(mut self, mib: u32) -> Self {
        self.tb_size_mib = mib;
        self
    }

    /// Runs every VMM as `user` (`-runas`), or as the daemon's user.
    pub fn with_vmm_user(mut self, user: Option<VmmUser>) -> Self {
        self.runas = user;
        self
    }

    /// Puts every VMM in its own group under `cgroups`, or in none.
    pub fn with_cgroups(mut self, cgroups: Option<Arc<VmmCgroups>>) -> Self {
        self.cgroups = cgroups;
        self
    }

    /// The user VMMs run as, when not the daemon's.
    pub fn vmm_user(&self) -> Option<&VmmUser> {
        self.runas.as_ref()
    }

    /// The accelerator decision, for logging.
    pub fn accel_decision(&self) -> &AccelDecision {
        &self.accel
    }

    /// Starts QEMU for `spec` with guest RAM in `memory` and an incoming
    /// migration as `incoming` says, and waits until it answers QMP.
    async fn launch(
        &self,
        spec: &BootSpec,
        incoming: Incoming,
        memory: GuestMemory<'_>,
    ) -> Result<QemuVm, VmmError> {
        let dir = &spec.sandbox_dir;
        let launch = Launch {
            binary: &self.binary,
            accel: self.accel.accel,
            accel_kernel_args: &self.accel_kernel_args,
            runas: self.runas.as_ref(),
            incoming,
            memory,
            tb_size_mib: self.tb_size_mib,
        };
        let cgroup = match &self.cgroups {
            Some(cgroups) => {
                let limits = VmmLimits {
                    vcpus: spec.vcpus,
                    memory_mib: spec.memory_mib,
                    translation_cache_mib: match self.accel.accel {
                        Accel::Tcg => self.tb_size_mib,
                        Accel::Kvm => 0,
                    },
                };
                let group = cgroups
                    .create(&spec.sandbox_id, limits)
                    .map_err(|e| VmmError::Launch(std::io::Error::other(e)))?;
                Some(group)
            }
            None => None,
        };
        let console = Arc::new(ConsoleRing::default());
        let process = VmProcess::spawn_with(
            command(&launch, spec),
            &dir.join("qemu.log"),
            SpawnOptions {
                console: Some(&console),
                inherit: match launch.incoming {
                    Incoming::Fd(fd) => vec![fd],
                    Incoming::None | Incoming::Defer => Vec::new(),
                },
                cgroup,
                launcher_only: false,
            },
        )?;
        let vm = QemuVm {
            process,
            dir: dir.clone(),
            qmp: Mutex::new(None),
            console,
            shared_memory: matches!(memory, GuestMemory::Shared(_)),
        };
        match tokio::time::timeout(spec.boot_timeout, vm.wait_for_control()).await {
            Ok(Ok(())) => Ok(vm),
            Ok(Err(e)) => {
                vm.stop().await.ok();
                Err(e)
            }
            Err(_) => {
                vm.stop().await.ok();
                Err(VmmError::BootTimeout(spec.boot_timeout))
            }
        }
    }
}

/// Whether QEMU accepts the seccomp sandbox emberd runs it under (a QEMU
/// built without libseccomp refuses `-sandbox` while parsing options).
pub fn seccomp_supported(binary: &Path) -> bool {
    std::process::Command::new(binary)
        .args(["-sandbox", SANDBOX, "-version"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

#[async_trait]
impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn acceleration(&self) -> Option<Accel> {
        Some(self.accel.accel)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::ALL
    }

    fn version(&self) -> String {
        format!("{} accel={}", self.version, self.accel.accel)
    }

    async fn start(&self, spec: &BootSpec) -> Result<Box<dyn Vm>, VmmError> {
        let memory = match &spec.memory_file {
            Some(path) => {
                create_memory_file(path, spec.memory_mib)?;
                GuestMemory::Shared(path)
            }
            None => GuestMemory::Anonymous,
        };
        Ok(Box::new(self.launch(spec, Incoming::None, memory).await?))
    }

    async fn restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn Vm>, VmmError> {
        let path = snapshot.dir.join(MIGRATION_FILE);
        let no_file = || {
            VmmError::Config(format!(
                "snapshot {} has no migration file",
                snapshot.dir.display()
            ))
        };
        // Read by QEMU through an inherited descriptor: it opens nothing.
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|_| no_file())?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(no_file());
        }
        let ram = snapshot.memory_file();
        if !ram.exists() {
            // A snapshot with the RAM in its stream.
            let incoming = Incoming::Fd(file.as_raw_fd());
            let vm = self.launch(spec, incoming, GuestMemory::Anonymous).await?;
            drop(file);
            if let Err(e) = vm.finish_incoming(spec.boot_timeout).await {
                vm.stop().await.ok();
                return Err(e);
            }
            return Ok(Box::new(vm));
        }
        drop(file);
        let launched = std::time::Instant::now();
        let standby = self.standby(spec, snapshot).await?;
        let launch_ms = launched.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(sandbox = %spec.sandbox_id, launch_ms, "QEMU started for a restore");
        Box::new(standby).restore(snapshot).await
    }

    async fn prepare_restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn StandbyVm>, VmmError> {
        Ok(Box::new(self.standby(spec, snapshot).await?))
    }
}

/// One QEMU process.
pub struct QemuVm {
    process: VmProcess,
    dir: PathBuf,
    /// The QMP session; `None` before the first connect and after a call
    /// timed out (the next call reconnects).
    qmp: Mutex<Option<Qmp>>,
    console: Arc<ConsoleRing>,
    /// Guest RAM is a file mapped shared: snapshots leave it out.
    shared_memory: bool,
}

impl QemuVm {
    fn exited(&self) -> Option<VmExit> {
        self.process.exited()
    }

    fn early_exit_error(&self, exit: &VmExit) -> VmmError {
        let log = log_tail(&self.dir.join("qemu.log"));
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        VmmError::ExitedEarly(format!(
            "qemu exited ({}){}{}",
            describe_exit(exit),
            if last.is_empty() { "" } else { ": " },
            last.trim()
        ))
    }

    /// Waits until QEMU has created its sockets and answers QMP.
    async fn wait_for_control(&self) -> Result<(), VmmError> {
        let qmp_path = self.dir.join("qmp.sock");
        loop {
            if let Some(exit) = self.exited() {
                return Err(self.early_exit_error(&exit));
            }
            if qmp_path.exists() && self.dir.join("agent.sock").exists() {
                if let Ok(qmp) = Qmp::connect(&qmp_path, QMP_DEADLINE).await {
                    *self.qmp.lock().await = Some(qmp);
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The session, connecting when there is none.
    async fn session<'a>(
        &self,
        guard: &'a mut tokio::sync::MutexGuard<'_, Option<Qmp>>,
    ) -> Result<&'a mut Qmp, VmmError> {
        if guard.is_none() {
            let qmp = Qmp::connect(&self.dir.join("qmp.sock"), QMP_DEADLINE)
                .await
                .map_err(qmp_error)?;
            **guard = Some(qmp);
        }
        Ok(guard.as_mut().expect("connected above"))
    }

    async fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmmError> {
        let mut guard = self.qmp.lock().await;
        let result = self
            .session(&mut guard)
            .await?
            .execute(command, arguments, QMP_DEADLINE)
            .await;
        if result.as_ref().is_err_and(out_of_step) {
            *guard = None;
        }
        result.map_err(qmp_error)
    }

    /// Hands `file` to QEMU as [`MIGRATION_FD_NAME`].
    async fn pass_fd(&self, file: &File) -> Result<(), VmmError> {
        let mut guard = self.qmp.lock().await;
        let result = self
            .session(&mut guard)
            .await?
            .pass_fd(MIGRATION_FD_NAME, file.as_fd(), QMP_DEADLINE)
            .await;
        if result.as_ref().is_err_and(out_of_step) {
            *guard = None;
        }
        result.map_err(qmp_error)
    }

    /// Waits for an incoming migration to complete, then resumes the
    /// guest, all within `bound`.
    async fn finish_incoming(&self, bound: Duration) -> Result<(), VmmError> {
        let wait = async {
            loop {
                let status = self.qmp("query-status", None).await?;
                match status.get("status").and_then(|s| s.as_str()) {
                    Some("inmigrate") => {}
                    Some("paused") | Some("postmigrate") | Some("prelaunch") => break,
                    Some("running") => return Ok(()),
                    other => {
                        return Err(VmmError::Api {
                            request: "restore".into(),
                            message: format!("unexpected VM status {other:?} after migration"),
                        })
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            self.qmp("cont", None).await.map(drop)
        };
        tokio::time::timeout(bound, wait)
            .await
            .unwrap_or(Err(VmmError::BootTimeout(bound)))
    }

    /// Polls `query-migrate` until the outgoing migration ends, within
    /// `bound`; cancels it when the bound passes.
    async fn wait_for_migration(&self, bound: Duration) -> Result<(), VmmError> {
        let wait = async {
            loop {
                let info = self.qmp("query-migrate", None).await?;
                match info.get("status").and_then(|s| s.as_str()) {
                    Some("completed") => return Ok(()),
                    Some("failed") | Some("cancelled") => {
                        return Err(VmmError::Api {
                            request: "migrate".into(),
                            message: info
                                .get("error-desc")
                                .and_then(|d| d.as_str())
                                .unwrap_or("migration failed")
                                .chars()
                                .take(512)
                                .collect(),
                        })
                    }
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        };
        match tokio::time::timeout(bound, wait).await {
            Ok(result) => result,
            Err(_) => {
                let _ = self.qmp("migrate_cancel", None).await;
                Err(VmmError::Unresponsive {
                    request: "migrate".into(),
                    after: bound,
                })
            }
        }
    }
}

/// Whether a failed call leaves the session with an answer still owed.
fn out_of_step(error: &QmpError) -> bool {
    !matches!(error, QmpError::Command { .. })
}

fn qmp_error(error: QmpError) -> VmmError {
    match error {
        QmpError::Command { command, message } => VmmError::Api {
            request: command,
            message,
        },
        QmpError::Timeout { command, after } => VmmError::Unresponsive {
            request: command,
            after,
        },
        other => VmmError::Control(std::io::Error::other(other)),
    }
}

/// The end of `path` (a log QEMU writes), read without following a symlink.
fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_trait]
impl Vm for QemuVm {
    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    fn has_exited(&self) -> bool {
        self.process.exited().is_some()
    }

    async fn connect_agent(&self) -> Result<AgentStream, VmmError> {
        if let Some(exit) = self.exited() {
            return Err(self.early_exit_error(&exit));
        }
        let stream = UnixStream::connect(self.dir.join("agent.sock"))
            .await
            .map_err(VmmError::AgentConnect)?;
        // Bytes written before the guest opens its end of the port are lost,
        // so let the agent speak first: its HTTP/2 SETTINGS frame arrives as
        // soon as it serves, and stays buffered for the gRPC client.
        stream.readable().await.map_err(VmmError::AgentConnect)?;
        Ok(Box::new(stream))
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.qmp("stop", None).await.map(drop)
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.qmp("cont", None).await.map(drop)
    }

    async fn snapshot(&self, dest: &SnapshotFiles) -> Result<(), VmmError> {
        // The daemon makes the file and QEMU only writes to the descriptor
        // it is handed: no program runs, and nothing is opened by name.
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dest.dir.join(MIGRATION_FILE))?;
        if self.shared_memory {
            self.qmp("migrate-set-capabilities", Some(ignore_shared()))
                .await?;
        }
        self.pass_fd(&file).await?;
        drop(file);
        let uri = format!("fd:{MIGRATION_FD_NAME}");
        self.qmp("migrate", Some(json!({ "uri": uri }))).await?;
        self.wait_for_migration(MIGRATION_BOUND).await
    }

    async fn stop(&self) -> Result<(), VmmError> {
        self.process.stop().await;
        Ok(())
    }

    async fn wait(&self) -> Result<VmExit, VmmError> {
        self.process.wait().await
    }

    fn console_tail(&self, max_bytes: usize) -> Vec<u8> {
        self.console.tail(max_bytes)
    }
}

#[cfg(test)]
mod tests;
