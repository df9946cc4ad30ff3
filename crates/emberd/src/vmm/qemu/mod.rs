//! The QEMU backend: `qemu-system-x86_64 -M microvm`.
//!
//! Owns the QEMU command line of a sandbox, the choice between KVM and TCG,
//! the QEMU process (launched with `PR_SET_PDEATHSIG`, reaped by one task),
//! and its control channel (QMP on a Unix socket in the sandbox dir).
//!
//! Per sandbox dir: `qmp.sock` (control), `agent.sock` (the chardev behind
//! the virtio-serial port `org.emberd.agent`), `console.log` (serial
//! console), `qemu.log` (QEMU's own stderr). The pack is a read-only
//! virtio-blk disk; there is no network device.

mod qmp;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use emberd_proto::boundary::AGENT_SERIAL_PORT;
use serde_json::json;
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::Mutex;

use self::qmp::{Qmp, QmpError};
use super::kvm::{hardware_kvm, KvmStatus};
use super::process::{describe_exit, version_line, VmProcess};
use super::{
    Accel, AgentStream, BootSpec, Capabilities, SnapshotFiles, Vm, VmBackend, VmExit, VmmError,
};
use crate::host_tools::find_in_path;

/// File of a snapshot directory holding the migration stream.
const MIGRATION_FILE: &str = "vm.migration";

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where hardware KVM works, TCG elsewhere.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub const ALL: [AccelChoice; 3] = [AccelChoice::Auto, AccelChoice::Kvm, AccelChoice::Tcg];

    pub fn as_str(self) -> &'static str {
        match self {
            AccelChoice::Auto => "auto",
            AccelChoice::Kvm => "kvm",
            AccelChoice::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an [`AccelChoice`].
#[derive(Debug, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected auto, kvm or tcg")]
pub struct UnknownAccel(String);

impl std::str::FromStr for AccelChoice {
    type Err = UnknownAccel;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        AccelChoice::ALL
            .into_iter()
            .find(|choice| choice.as_str() == name)
            .ok_or_else(|| UnknownAccel(name.to_owned()))
    }
}

/// The accelerator in use and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

impl AccelDecision {
    /// Decides from the user's choice and what the host offers.
    pub fn decide(choice: AccelChoice, kvm: &KvmStatus) -> Self {
        match (choice, kvm) {
            (AccelChoice::Tcg, _) => AccelDecision {
                accel: Accel::Tcg,
                reason: "asked for with --accel tcg".into(),
            },
            (AccelChoice::Kvm, _) => AccelDecision {
                accel: Accel::Kvm,
                reason: "asked for with --accel kvm".into(),
            },
            (AccelChoice::Auto, KvmStatus::Hardware { module }) => AccelDecision {
                accel: Accel::Kvm,
                reason: format!("hardware KVM ({module}) is usable"),
            },
            (AccelChoice::Auto, other) => AccelDecision {
                accel: Accel::Tcg,
                reason: format!("no usable hardware KVM: {}", other.explain()),
            },
        }
    }
}

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
}

/// Makes QEMU microvm VMs.
pub struct QemuBackend {
    binary: PathBuf,
    version: String,
    accel: AccelDecision,
    /// Kernel arguments that depend on the accelerator.
    accel_kernel_args: Vec<String>,
}

impl QemuBackend {
    /// Finds QEMU (`binary`, or `qemu-system-x86_64` on PATH) and picks the
    /// accelerator.
    pub fn new(binary: Option<PathBuf>, choice: AccelChoice) -> Result<Self, QemuSetupError> {
        let binary = binary.unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
        let resolved = find_in_path(&binary).ok_or_else(|| QemuSetupError::NotFound {
            binary: binary.display().to_string(),
        })?;
        let version = version_line(&resolved).map_err(|source| QemuSetupError::Version {
            binary: resolved.display().to_string(),
            source,
        })?;
        let accel = AccelDecision::decide(choice, &hardware_kvm());
        let accel_kernel_args = if accel.accel == Accel::Tcg {
            tcg_clock_args(host_tsc_khz())
        } else {
            Vec::new()
        };
        Ok(QemuBackend {
            binary: resolved,
            version,
            accel,
            accel_kernel_args,
        })
    }

    /// The accelerator decision, for logging.
    pub fn accel_decision(&self) -> &AccelDecision {
        &self.accel
    }

    fn command(&self, spec: &BootSpec, incoming: Option<&Path>) -> Command {
        let dir = &spec.sandbox_dir;
        let mut cmd = Command::new(&self.binary);
        let mut append = vec![
            "console=ttyS0".to_owned(),
            "reboot=t".to_owned(),
            "panic=-1".to_owned(),
            "quiet".to_owned(),
        ];
        append.extend(self.accel_kernel_args.iter().cloned());
        append.extend(spec.extra_kernel_args.iter().cloned());
        let machine = "microvm,x-option-roms=off,isa-serial=on,rtc=on";
        cmd.args(["-M", machine, "-accel", self.accel.accel.as_str()]);
        if self.accel.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args(["-smp", &spec.vcpus.to_string()])
            .args(["-m", &format!("{}M", spec.memory_mib)])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(&spec.kernel_bzimage)
            .arg("-initrd")
            .arg(&spec.initramfs)
            .args(["-append", &append.join(" ")])
            .args([
                "-chardev",
                &format!("file,id=console,path={}", dir.join("console.log").display()),
            ])
            .args(["-serial", "chardev:console"])
            .args([
                "-drive",
                &format!(
                    "id=pack,file={},format=raw,if=none,readonly=on",
                    spec.root_disk.display()
                ),
            ])
            .args(["-device", "virtio-blk-device,drive=pack"])
            .args(["-device", "virtio-serial-device"])
            .args([
                "-chardev",
                &format!(
                    "socket,id=agent,path={},server=on,wait=off",
                    dir.join("agent.sock").display()
                ),
            ])
            .args([
                "-device",
                &format!("virtserialport,chardev=agent,name={AGENT_SERIAL_PORT}"),
            ])
            .args([
                "-qmp",
                &format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
            ]);
        if let Some(file) = incoming {
            cmd.args(["-incoming", &format!("exec:cat {}", shell_quote(file))]);
        }
        cmd
    }

    async fn launch(&self, spec: &BootSpec, incoming: Option<&Path>) -> Result<QemuVm, VmmError> {
        let dir = &spec.sandbox_dir;
        let process = VmProcess::spawn(self.command(spec, incoming), &dir.join("qemu.log"))?;
        let vm = QemuVm {
            process,
            dir: dir.clone(),
            qmp: Mutex::new(None),
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
        Ok(Box::new(self.launch(spec, None).await?))
    }

    async fn restore(
        &self,
        spec: &BootSpec,
        snapshot: &SnapshotFiles,
    ) -> Result<Box<dyn Vm>, VmmError> {
        let file = snapshot.dir.join(MIGRATION_FILE);
        if !file.is_file() {
            return Err(VmmError::Config(format!(
                "snapshot {} has no migration file",
                snapshot.dir.display()
            )));
        }
        let vm = self.launch(spec, Some(&file)).await?;
        if let Err(e) = vm.finish_incoming(spec.boot_timeout).await {
            vm.stop().await.ok();
            return Err(e);
        }
        Ok(Box::new(vm))
    }
}

/// One QEMU process.
pub struct QemuVm {
    process: VmProcess,
    dir: PathBuf,
    qmp: Mutex<Option<Qmp>>,
}

impl QemuVm {
    fn exited(&self) -> Option<VmExit> {
        self.process.exited()
    }

    fn early_exit_error(&self, exit: &VmExit) -> VmmError {
        let log = std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default();
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
                if let Ok(qmp) = Qmp::connect(&qmp_path).await {
                    *self.qmp.lock().await = Some(qmp);
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn qmp(
        &self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VmmError> {
        let mut guard = self.qmp.lock().await;
        let qmp = guard
            .as_mut()
            .ok_or_else(|| VmmError::Control(std::io::Error::other("QMP is not connected")))?;
        qmp.execute(command, arguments).await.map_err(|e| match e {
            QmpError::Command { command, message } => VmmError::Api {
                request: command,
                message,
            },
            other => VmmError::Control(std::io::Error::other(other.to_string())),
        })
    }

    /// Waits for an incoming migration to complete, then resumes the guest.
    async fn finish_incoming(&self, bound: Duration) -> Result<(), VmmError> {
        let deadline = tokio::time::Instant::now() + bound;
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
            if tokio::time::Instant::now() > deadline {
                return Err(VmmError::BootTimeout(bound));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.qmp("cont", None).await?;
        Ok(())
    }
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
        let file = dest.dir.join(MIGRATION_FILE);
        let uri = format!("exec:cat > {}", shell_quote(&file));
        self.qmp("migrate", Some(json!({ "uri": uri }))).await?;
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
                            .to_owned(),
                    })
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    async fn stop(&self) -> Result<(), VmmError> {
        self.process.stop().await;
        Ok(())
    }

    async fn wait(&self) -> Result<VmExit, VmmError> {
        self.process.wait().await
    }
}

/// Under TCG the guest's TSC is the host's, but calibrating it against the
/// emulated PIT fails when the host is busy, and the kernel then hangs in
/// early boot. Telling it the frequency skips the calibration; `tsc=reliable`
/// stops the watchdog from distrusting a TSC whose reference (timer ticks)
/// is the thing that lags.
fn tcg_clock_args(tsc_khz: Option<u64>) -> Vec<String> {
    match tsc_khz {
        Some(khz) => vec![format!("tsc_early_khz={khz}"), "tsc=reliable".into()],
        None => Vec::new(),
    }
}

/// The host's TSC frequency: sysfs where the kernel exports it, else the
/// `cpu MHz` of /proc/cpuinfo.
fn host_tsc_khz() -> Option<u64> {
    let sysfs = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok();
    tsc_khz_from(sysfs.as_deref(), cpuinfo.as_deref())
}

/// [`host_tsc_khz`] from the two files' contents, where they could be read.
fn tsc_khz_from(sysfs: Option<&str>, cpuinfo: Option<&str>) -> Option<u64> {
    if let Some(khz) = sysfs.and_then(|text| text.trim().parse().ok()) {
        return Some(khz);
    }
    let mhz: f64 = cpuinfo?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

/// Quotes a path for the `exec:` migration URIs, which QEMU runs with `/bin/sh -c`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_tcg_on_paravirtual_kvm() {
        let decision = AccelDecision::decide(AccelChoice::Auto, &KvmStatus::Paravirtual);
        assert_eq!(decision.accel, Accel::Tcg);
        assert!(
            decision.reason.contains("no usable hardware KVM"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn auto_uses_kvm_on_hardware_kvm() {
        let kvm = KvmStatus::Hardware {
            module: "kvm_intel".into(),
        };
        assert_eq!(
            AccelDecision::decide(AccelChoice::Auto, &kvm).accel,
            Accel::Kvm
        );
        assert_eq!(
            AccelDecision::decide(AccelChoice::Tcg, &kvm).accel,
            Accel::Tcg
        );
    }

    #[test]
    fn tcg_guests_are_told_the_tsc_frequency() {
        assert_eq!(
            tcg_clock_args(Some(2_596_138)),
            ["tsc_early_khz=2596138", "tsc=reliable"]
        );
        assert!(tcg_clock_args(None).is_empty());
    }

    #[test]
    fn the_tsc_frequency_comes_from_sysfs_else_cpuinfo_else_nowhere() {
        let cpuinfo = "processor\t: 0\ncpu MHz\t\t: 2596.138\nflags\t\t: tsc\n";
        assert_eq!(
            tsc_khz_from(Some("2596000\n"), Some(cpuinfo)),
            Some(2_596_000)
        );
        // Hosts without sysfs's tsc_freq_khz (most VMs) fall back to cpuinfo.
        assert_eq!(tsc_khz_from(None, Some(cpuinfo)), Some(2_596_138));
        assert_eq!(
            tsc_khz_from(Some("garbage"), Some(cpuinfo)),
            Some(2_596_138)
        );
        // Hosts that expose neither: no frequency, so no clock arguments.
        assert_eq!(tsc_khz_from(None, Some("processor\t: 0\n")), None);
        assert_eq!(tsc_khz_from(None, Some("cpu MHz\t\t: 0.000\n")), None);
        assert_eq!(tsc_khz_from(None, None), None);
    }

    #[test]
    fn migration_paths_are_quoted_for_the_shell() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
