//! The Firecracker backend.
//!
//! Owns finding and checking the `firecracker` binary, one Firecracker
//! process per sandbox, its configuration through the REST API, and the
//! agent channel over hybrid vsock (`v.sock`: `CONNECT 1024\n` → `OK <port>\n`).
//! The guest console (Firecracker's stdout) goes to a bounded ring.
//!
//! Unjailed: `--api-sock <dir>/fc.sock --id sb-…`, working directory = the
//! sandbox dir so the vsock path stays short and relative, which lets
//! restored clones each bind their own. Jailed (see `jail`): the jailer
//! runs Firecracker as the VMM user in a chroot holding links to the VM's
//! files, with `fc.sock`, `v.sock` and `fc.log` inside it.
//!
//! API calls, in order:
//! - create: `PUT /logger`, `PUT /boot-source`, `PUT /drives/rootfs`,
//!   `PUT /machine-config`, `PUT /vsock`, `PUT /entropy` (virtio-rng: the
//!   guest's RNG has a source of its own before the identity's seed),
//!   `PUT /actions` (InstanceStart);
//! - snapshot: `PATCH /vm` (Paused), `PUT /snapshot/create` (Full);
//! - restore: `PUT /logger`, `PUT /snapshot/load` (File backend, resume_vm);
//! - stop: `PUT /actions` (SendCtrlAltDel) when running, then signals;
//!   once a guest ignored Ctrl-Alt-Del (a kernel without i8042/atkbd),
//!   signals straight away.
//!
//! Snapshots need v1.15.1 or later and are refused on v1.16.0 (see
//! `binary::snapshots_refused`). Failures quote Firecracker's log file,
//! naming it (`diagnose`).

mod api;
mod binary;
mod boot_entry;
mod diagnose;
mod jail;
mod launch;
mod pidfd;
mod shutdown;
mod vsock;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use emberd_proto::boundary::AGENT_VSOCK_PORT;
use hyper::Method;
use serde_json::json;
use tokio::net::UnixStream;
use tokio::process::Command;

pub use self::api::FirecrackerApi;
use self::binary::find_binary;
pub use self::binary::{instance_id, parse_release, parse_version, snapshots_refused};
pub use self::boot_entry::{boot_entry, BootEntry};
use self::diagnose::{last_words, FC_LOG};
use self::jail::Jail;
pub use self::jail::{cgroup_v2_usable, JailError, JailerConfig};
use self::launch::{spawn_jailed, FcProcess, VmFiles, VMM_LOG};
use self::shutdown::{CtrlAltDel, CTRL_ALT_DEL_GRACE};
use super::console::ConsoleRing;
use super::process::{describe_exit, version_line, VmProcess};
use super::{AgentStream, BootSpec, Capabilities, SnapshotFiles, Vm, VmBackend, VmExit, VmmError};

/// The oldest Firecracker release this backend drives.
pub const MIN_VERSION: (u32, u32) = (1, 10);
const API_SOCKET: &str = "fc.sock";
const VSOCK_SOCKET: &str = "v.sock";
pub(crate) const SNAPSHOT_STATE: &str = "vm.snap";
pub(crate) const SNAPSHOT_MEMORY: &str = "vm.mem";
/// Firecracker's limit on the kernel command line, its NUL included.
const MAX_CMDLINE: usize = 2048;

/// Errors setting up the Firecracker backend.
#[derive(Debug, thiserror::Error)]
pub enum FirecrackerSetupError {
    #[error("firecracker not found (looked at {looked}): install it as docs/firecracker.md says, or pass --firecracker-bin")]
    NotFound { looked: String },
    #[error("cannot run {binary} --version")]
    Version {
        binary: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} reports {reported:?}; emberd needs Firecracker v{}.{} or newer", MIN_VERSION.0, MIN_VERSION.1)]
    TooOld { binary: String, reported: String },
    #[error("cannot prepare the jailer's chroot base")]
    Jail(#[source] JailError),
    #[error("jailer not found at {0}")]
    JailerNotFound(PathBuf),
    #[error("the jailer runs Firecracker as the user {0}, which does not exist: create it (a system user with no login) or pass --no-jailer")]
    NoVmmUser(String),
}

/// Makes Firecracker microVMs.
pub struct FirecrackerBackend {
    binary: PathBuf,
    version: String,
    /// Extra environment of every VMM process (empty outside tests).
    vmm_env: Vec<(OsString, OsString)>,
    /// Run each Firecracker through its jailer.
    jailer: Option<JailerConfig>,
    /// Jails left by an earlier daemon were looked for (at the first jailed start).
    swept: AtomicBool,
    /// Why this release must not take or restore snapshots, if it must not.
    snapshots_refused: Option<String>,
    /// Whether guests reboot on Ctrl-Alt-Del, learnt at stops.
    ctrl_alt_del: CtrlAltDel,
}

impl FirecrackerBackend {
    /// Finds Firecracker (`binary`, else PATH, else `~/.local/bin`) and checks its version.
    pub fn new(binary: Option<PathBuf>) -> Result<Self, FirecrackerSetupError> {
        let binary = find_binary(binary.as_deref())?;
        let reported = version_line(&binary).map_err(|source| FirecrackerSetupError::Version {
            binary: binary.display().to_string(),
            source,
        })?;
        match parse_version(&reported) {
            Some(v) if v >= MIN_VERSION => {
                let snapshots_refused = snapshots_refused(&reported);
                if let Some(reason) = &snapshots_refused {
                    tracing::warn!(binary = %binary.display(), "{reason}");
                }
                Ok(FirecrackerBackend {
                    binary,
                    version: reported,
                    vmm_env: Vec::new(),
                    jailer: None,
                    swept: AtomicBool::new(false),
                    snapshots_refused,
                    ctrl_alt_del: CtrlAltDel::default(),
                })
            }
            _ => Err(FirecrackerSetupError::TooOld {
                binary: binary.display().to_string(),
                reported,
            }),
        }
    }

    /// Sets `key=value` in the environment of every VMM this backend
    /// starts: how tests configure a stand-in VMM per backend.
    pub fn with_vmm_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.vmm_env.push((key.into(), value.into()));
        self
    }

    /// Runs every Firecracker through the jailer `config` describes.
    pub fn with_jailer(mut self, config: JailerConfig) -> Result<Self, FirecrackerSetupError> {
        self.jailer = Some(config.prepare().map_err(FirecrackerSetupError::Jail)?);
        Ok(self)
    }

    /// How Firecracker is jailed, if it is.
    pub fn jailer(&self) -> Option<&JailerConfig> {
        self.jailer.as_ref()
    }

    async fn spawn(
        &self,
        spec: &BootSpec,
        snapshot: Option<&SnapshotFiles>,
    ) -> Result<FirecrackerVm, VmmError> {
        let console = Arc::new(ConsoleRing::default());
        let vm = |process, dir: PathBuf, files, jail| FirecrackerVm {
            process,
            api: FirecrackerApi::new(&dir.join(API_SOCKET)),
            dir,
            log: spec.sandbox_dir.join(VMM_LOG),
            files,
            jail,
            console: console.clone(),
            boot_timeout: spec.boot_timeout,
            running: AtomicBool::new(false),
            ctrl_alt_del: self.ctrl_alt_del.clone(),
            snapshots_refused: self.snapshots_refused.clone(),
        };
        if let Some(config) = &self.jailer {
            // After crash recovery has killed what an earlier daemon left.
            if !self.swept.swap(true, Ordering::SeqCst) {
                let (config, binary) = (config.clone(), self.binary.clone());
                tokio::task::spawn_blocking(move || jail::sweep_stale(&config, &binary));
            }
            let jailed = spawn_jailed(
                config,
                &self.binary,
                &self.vmm_env,
                spec,
                snapshot,
                &console,
            )
            .await?;
            let root = jailed.jail.root().to_owned();
            let jail = Some((jailed.jail, config.clone()));
            return Ok(vm(jailed.process, root, jailed.files, jail));
        }
        let dir = &spec.sandbox_dir;
        // Firecracker refuses to bind over a leftover socket ("address in
        // use"), and leaves its sockets behind when it ends.
        for socket in [API_SOCKET, VSOCK_SOCKET] {
            match std::fs::remove_file(dir.join(socket)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        // The absolute socket path also puts the sandbox dir on the command
        // line, where the manager's crash recovery looks for leftover VMs.
        let mut command = Command::new(&self.binary);
        command
            .arg("--api-sock")
            .arg(dir.join(API_SOCKET))
            .arg("--id")
            .arg(instance_id(&spec.sandbox_id))
            .envs(self.vmm_env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir);
        let process = VmProcess::spawn_with_console(command, &dir.join(VMM_LOG), Some(&console))?;
        Ok(vm(
            FcProcess::Direct(process),
            dir.clone(),
            VmFiles::direct(spec, snapshot),
            None,
        ))
    }

    /// Configures and starts a fresh VM, or unwinds it.
    async fn boot(&self, vm: &FirecrackerVm, spec: &BootSpec) -> Result<(), VmmError> {
        vm.wait_for_api().await?;
        vm.put_logger().await?;
        let mut boot_args = vec!["console=ttyS0", "reboot=k", "panic=1", "pci=off", "quiet"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        boot_args.extend(spec.extra_kernel_args.iter().cloned());
        let boot_args = boot_args.join(" ");
        if boot_args.len() + 1 > MAX_CMDLINE {
            return Err(VmmError::Config(format!(
                "the kernel command line is {} bytes; Firecracker takes at most {}",
                boot_args.len(),
                MAX_CMDLINE - 1
            )));
        }
        vm.api
            .call(
                Method::PUT,
                "/boot-source",
                Some(json!({
                    "kernel_image_path": vm.files.kernel,
                    "initrd_path": vm.files.initrd,
                    "boot_args": boot_args,
                })),
            )
            .await?;
        vm.api
            .call(
                Method::PUT,
                "/drives/rootfs",
                Some(json!({
                    "drive_id": "rootfs",
                    "path_on_host": vm.files.root_disk,
                    "is_root_device": false,
                    "is_read_only": true,
                })),
            )
            .await?;
        vm.api
            .call(
                Method::PUT,
                "/machine-config",
                Some(json!({ "vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib })),
            )
            .await?;
        vm.api
            .call(
                Method::PUT,
                "/vsock",
                Some(json!({ "guest_cid": 3, "uds_path": VSOCK_SOCKET })),
            )
            .await?;
        vm.api
            .call(Method::PUT, "/entropy", Some(json!({})))
            .await?;
        vm.api
            .call(
                Method::PUT,
                "/actions",
                Some(json!({ "action_type": "InstanceStart" })),
            )
            .await?;
        if let Some(release) = parse_release(&self.version) {
            if let Ok(entry) = boot_entry(&spec.kernel_vmlinux, release) {
                tracing::debug!(sandbox = %spec.sandbox_id, %entry, "Firecracker boots the kernel through {entry}");
            }
        }
        Ok(())
    }

    async fn load(&self, vm: &FirecrackerVm) -> Result<(), VmmError> {
        vm.wait_for_api().await?;
        vm.put_logger().await?;
        vm.api
            .call(
                Method::PUT,
                "/snapshot/load",
                Some(json!({
                    "snapshot_path": vm.files.snapshot_state,
                    "mem_backend": {
                        "backend_type": "File",
                        "backend_path": vm.files.snapshot_memory,
                    },
                    "resume_vm": true,
                })),
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl VmBackend for FirecrackerBackend {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn acceleration(&self) -> Option<super::Accel> {
        Some(super::Accel::Kvm)
    }

    fn capabilities(&self) -> Capabilities {
        let snapshots = self.snapshots_refused.is_none();
        Capabilities {
            pause_resume: true,
            snapshot: snapshots,
            restore: snapshots,
            // Its snapshots write the memory file, which restores map
            // privately (`mem_backend` of type `File`).
            memory_file: false,
        }
    }

    /// A jailed Firecracker names its files by chroot paths, which end up
    /// in its snapshots: templates of the two ways must not mix.
    fn version(&self) -> String {
        match self.jailer {
            Some(_) => format!("{} (jailed)", self.version),
            None => self.version.clone(),
        }
    }

    async fn start(&self, spec: &BootSpec) -> Result<Box<dyn Vm>, VmmError> {
        let vm = self.spawn(spec, None).await?;
        let result = tokio::time::timeout(spec.boot_timeout, self.boot(&vm, spec)).await;
        vm.settle(result, spec.boot_timeout).await
    }

    async fn restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn Vm>, VmmError> {
        if let Some(reason) = &self.snapshots_refused {
            return Err(VmmError::Config(reason.clone()));
        }
        let vm = self.spawn(spec, Some(snapshot)).await?;
        let result = tokio::time::timeout(spec.boot_timeout, self.load(&vm)).await;
        vm.settle(result, spec.boot_timeout).await
    }
}

/// One Firecracker process.
pub struct FirecrackerVm {
    process: FcProcess,
    /// Where its sockets and `fc.log` are: the sandbox dir, or the jail's root.
    dir: PathBuf,
    /// Firecracker's stderr.
    log: PathBuf,
    files: VmFiles,
    /// Dropped after `process`: a jail outlives its VMM.
    jail: Option<(Jail, JailerConfig)>,
    console: Arc<ConsoleRing>,
    api: FirecrackerApi,
    boot_timeout: Duration,
    /// The guest runs (started or restored, and not paused): it can react to
    /// Ctrl-Alt-Del.
    running: AtomicBool,
    /// Shared with the backend: whether guests reboot on Ctrl-Alt-Del.
    ctrl_alt_del: CtrlAltDel,
    /// Why this release must not take snapshots, if it must not.
    snapshots_refused: Option<String>,
}

impl FirecrackerVm {
    /// Keeps the VM if setting it up worked in time; otherwise stops it and
    /// says why.
    async fn settle(
        self,
        result: Result<Result<(), VmmError>, tokio::time::error::Elapsed>,
        bound: Duration,
    ) -> Result<Box<dyn Vm>, VmmError> {
        match result {
            Ok(Ok(())) => {
                self.running.store(true, Ordering::SeqCst);
                Ok(Box::new(self))
            }
            Ok(Err(e)) => {
                self.process.stop().await;
                Err(self.explain(e))
            }
            Err(_) => {
                self.process.stop().await;
                Err(VmmError::BootTimeout(bound))
            }
        }
    }

    /// Waits until the API socket accepts connections (or the process died).
    async fn wait_for_api(&self) -> Result<(), VmmError> {
        let socket = self.dir.join(API_SOCKET);
        loop {
            if let Some(exit) = self.process.exited() {
                return Err(self.early_exit(&exit));
            }
            if UnixStream::connect(&socket).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Firecracker's own messages go to `fc.log` from here on. Releases
    /// before 1.14 need the file to exist.
    async fn put_logger(&self) -> Result<(), VmmError> {
        if self.jail.is_none() {
            std::fs::File::create(self.dir.join(FC_LOG))?;
        }
        self.api
            .call(
                Method::PUT,
                "/logger",
                Some(json!({ "log_path": FC_LOG, "level": "Warning", "show_level": true })),
            )
            .await
            .map(drop)
    }

    fn early_exit(&self, exit: &VmExit) -> VmmError {
        VmmError::ExitedEarly(format!(
            "firecracker exited ({}): {}",
            describe_exit(exit),
            last_words(&self.dir, &self.log, &self.console)
        ))
    }

    /// Asks a running guest to reboot, which ends Firecracker, and waits a
    /// little for that (see `shutdown`).
    async fn ctrl_alt_del(&self) {
        if self.ctrl_alt_del.skip() {
            return;
        }
        let sent = tokio::time::timeout(
            CTRL_ALT_DEL_GRACE,
            self.api.call(
                Method::PUT,
                "/actions",
                Some(json!({ "action_type": "SendCtrlAltDel" })),
            ),
        )
        .await;
        if matches!(sent, Ok(Ok(_))) {
            let ended = tokio::time::timeout(CTRL_ALT_DEL_GRACE, self.process.wait()).await;
            self.ctrl_alt_del.learn(ended.is_ok());
        }
    }

    /// An API error from a process that has died is reported as the death.
    fn explain(&self, error: VmmError) -> VmmError {
        match (&error, self.process.exited()) {
            (VmmError::Control(_), Some(exit)) => self.early_exit(&exit),
            _ => error,
        }
    }
}

#[async_trait]
impl Vm for FirecrackerVm {
    fn pid(&self) -> Option<u32> {
        Some(self.process.pid())
    }

    fn has_exited(&self) -> bool {
        self.process.exited().is_some()
    }

    async fn connect_agent(&self) -> Result<AgentStream, VmmError> {
        if let Some(exit) = self.process.exited() {
            return Err(self.early_exit(&exit));
        }
        let stream = vsock::dial(
            &self.dir.join(VSOCK_SOCKET),
            AGENT_VSOCK_PORT,
            self.boot_timeout,
        )
        .await?;
        Ok(Box::new(stream))
    }

    async fn pause(&self) -> Result<(), VmmError> {
        self.api
            .call(Method::PATCH, "/vm", Some(json!({ "state": "Paused" })))
            .await?;
        self.running.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn resume(&self) -> Result<(), VmmError> {
        self.api
            .call(Method::PATCH, "/vm", Some(json!({ "state": "Resumed" })))
            .await?;
        self.running.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn snapshot(&self, dest: &SnapshotFiles) -> Result<(), VmmError> {
        if let Some(reason) = &self.snapshots_refused {
            return Err(VmmError::Config(reason.clone()));
        }
        let (state, memory) = match &self.jail {
            Some(_) => (format!("/{SNAPSHOT_STATE}"), format!("/{SNAPSHOT_MEMORY}")),
            None => (
                dest.dir.join(SNAPSHOT_STATE).to_string_lossy().into_owned(),
                dest.dir
                    .join(SNAPSHOT_MEMORY)
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        self.api
            .call(
                Method::PUT,
                "/snapshot/create",
                Some(json!({
                    "snapshot_type": "Full",
                    "snapshot_path": state,
                    "mem_file_path": memory,
                })),
            )
            .await?;
        if let Some((jail, config)) = &self.jail {
            for name in [SNAPSHOT_STATE, SNAPSHOT_MEMORY] {
                jail.take_out(config, name, &dest.dir.join(name))?;
            }
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), VmmError> {
        if self.process.exited().is_none() && self.running.swap(false, Ordering::SeqCst) {
            self.ctrl_alt_del().await;
        }
        self.process.stop().await;
        if let Some((jail, _)) = &self.jail {
            jail.remove();
        }
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
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_install() {
        let err = FirecrackerBackend::new(Some(PathBuf::from("/nonexistent/firecracker")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("docs/firecracker.md"), "{err}");
    }
}
