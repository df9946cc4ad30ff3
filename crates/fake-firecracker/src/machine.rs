//! The fake microVM: its state, its recorded configuration, and the handling
//! of each API call against Firecracker's spec and state rules.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};
use tokio::net::UnixListener;

use crate::guest::{flood_console, signal_guest, vsock_proxy};
use crate::{jail, snapshot, spec, version};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VmState {
    NotStarted,
    Running,
    Paused,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::NotStarted => "Not started",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

pub(crate) struct Fake {
    pub(crate) id: String,
    pub(crate) calls_log: PathBuf,
    pub(crate) faults: Vec<String>,
    pub(crate) spec: spec::Spec,
    pub(crate) state: VmState,
    /// Every pre-boot configuration call so far, by route.
    pub(crate) config: serde_json::Map<String, Value>,
    pub(crate) agent: Option<Child>,
    pub(crate) agent_root: Option<PathBuf>,
    pub(crate) vsock_task: Option<tokio::task::JoinHandle<()>>,
    /// A snapshot load failed past its checks: Firecracker ends (its
    /// process is "too dirty to recover").
    pub(crate) fatal: bool,
}

pub(crate) type Shared = Arc<Mutex<Fake>>;

pub(crate) fn fault(message: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({ "fault_message": message.into() }),
    )
}

impl Fake {
    /// Appends one JSON line with one write, so that fakes sharing a
    /// `FAKE_FC_RECORD` file never interleave their lines.
    pub(crate) fn record(&self, method: &str, path: &str, body: Option<&Value>) {
        let line = format!(
            "{}\n",
            json!({ "id": self.id, "method": method, "path": path, "body": body })
        );
        if let Ok(mut file) = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.calls_log)
        {
            let _ = file.write_all(line.as_bytes());
        }
    }

    /// Writes a refused request to the log file, if one is configured, as
    /// Firecracker's API thread logs it.
    pub(crate) fn log_error(&self, status: StatusCode, answer: &Value) {
        let Some(log) = self
            .config
            .get("/logger")
            .and_then(|l| l.get("log_path"))
            .and_then(Value::as_str)
            .and_then(|p| jail::resolve(p).ok())
        else {
            return;
        };
        let message = answer
            .get("fault_message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let line = format!(
            "[{}:fc_api:ERROR] Received Error. Status code: {status}. Message: {message}\n",
            self.id
        );
        if let Ok(mut file) = std::fs::File::options().append(true).open(log) {
            let _ = file.write_all(line.as_bytes());
        }
    }

    pub(crate) fn exits_before_answering(&self) -> bool {
        self.failing("exit-unanswered")
    }

    fn slow_guest(&self) -> Option<Duration> {
        self.faults
            .iter()
            .find_map(|f| f.strip_prefix("slow-guest:")?.parse().ok())
            .map(Duration::from_millis)
    }

    fn failing(&self, what: &str) -> bool {
        self.faults.iter().any(|f| f == what)
    }

    fn console_flood(&self) -> Option<u64> {
        self.faults
            .iter()
            .find_map(|f| f.strip_prefix("console-flood:")?.parse().ok())
    }

    pub(crate) fn slow_start(&self) -> Option<Duration> {
        self.faults
            .iter()
            .find_map(|f| f.strip_prefix("slow-start:")?.parse().ok())
            .map(Duration::from_millis)
    }

    /// Effects that follow an answer: a guest that reboots on Ctrl-Alt-Del
    /// ends Firecracker (`reboot=k`), unless its kernel has no i8042
    /// keyboard to receive it (`no-i8042`); a failed snapshot load ends it
    /// too; an injected crash mid-boot.
    pub(crate) fn after(&self, method: &str, status: StatusCode, body: Option<&Value>) -> After {
        if self.fatal {
            println!("fake-firecracker: the snapshot load failed; exiting");
            return After::Exit(1);
        }
        if method != "PUT" || !status.is_success() {
            return After::Nothing;
        }
        match body
            .and_then(|b| b.get("action_type"))
            .and_then(Value::as_str)
        {
            Some("SendCtrlAltDel")
                if self.state == VmState::Running && !self.failing("no-i8042") =>
            {
                println!("fake-firecracker: guest rebooted on Ctrl-Alt-Del");
                After::Exit(0)
            }
            Some("InstanceStart") if self.failing("crash-after-start") => {
                println!("fake-firecracker: crashing mid-boot (injected)");
                After::Exit(1)
            }
            _ => After::Nothing,
        }
    }

    pub(crate) fn apply(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let route = match self.spec.check(method, path, body) {
            Ok(route) => route,
            Err(message) => return fault(message),
        };
        if self.failing(&format!("api:{method} {path}")) {
            return fault(format!("injected failure of {method} {path}"));
        }
        let body = body.cloned().unwrap_or(Value::Null);
        let pre_boot_only = matches!(
            route.template.as_str(),
            "/boot-source"
                | "/drives/{drive_id}"
                | "/machine-config"
                | "/vsock"
                | "/logger"
                | "/network-interfaces/{iface_id}"
        ) && method == "PUT";
        if pre_boot_only && self.state != VmState::NotStarted {
            return fault("The requested operation is not supported after starting the microVM.");
        }
        for (name, value) in &route.params {
            if body
                .get(name)
                .and_then(Value::as_str)
                .is_some_and(|v| v != value)
            {
                return fault(format!(
                    "The id from the path [{value}] does not match the id from the body!"
                ));
            }
        }
        match (method, route.template.as_str()) {
            ("GET", "/") => (
                StatusCode::OK,
                json!({ "id": self.id, "state": self.state.name(), "vmm_version": version(), "app_name": "Firecracker" }),
            ),
            ("GET", "/version") => (StatusCode::OK, json!({ "firecracker_version": version() })),
            ("GET", "/vm/config") => (StatusCode::OK, Value::Object(self.config.clone())),
            ("PUT", "/logger") => {
                let log = body
                    .get("log_path")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // Since 1.14 Firecracker creates the file when it is missing.
                let opened = jail::resolve(log).and_then(|p| {
                    std::fs::File::options()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|e| e.to_string())
                });
                if let Err(e) = opened {
                    return fault(format!("Failed to open the log file {log}: {e}"));
                }
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/boot-source") => {
                let args = body.get("boot_args").and_then(Value::as_str).unwrap_or("");
                if args.len() + 1 > MAX_CMDLINE {
                    return fault(format!(
                        "The kernel command line is invalid: Command line string is too large ({} bytes with its NUL, at most {MAX_CMDLINE})",
                        args.len() + 1
                    ));
                }
                for key in ["kernel_image_path", "initrd_path"] {
                    if let Some(file) = body.get(key).and_then(Value::as_str) {
                        if !jail::resolve(file).is_ok_and(|p| p.is_file()) {
                            return fault(format!("{key} {file}: No such file or directory"));
                        }
                    }
                }
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/drives/{drive_id}") => {
                let file = body
                    .get("path_on_host")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Err(e) = drive_file(file) {
                    return fault(e);
                }
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/machine-config") => {
                let vcpus = body.get("vcpu_count").and_then(Value::as_u64).unwrap_or(0);
                if !(1..=32).contains(&vcpus) {
                    return fault(format!(
                        "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled. Got {vcpus}"
                    ));
                }
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/vsock") | ("PUT", "/entropy") => {
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/actions") => match body.get("action_type").and_then(Value::as_str) {
                Some("InstanceStart") => self.instance_start(),
                Some(other) if self.state == VmState::NotStarted => fault(format!(
                    "{other} is not supported before starting the microVM."
                )),
                _ => (StatusCode::NO_CONTENT, Value::Null),
            },
            ("PATCH", "/vm") => match (self.state, body.get("state").and_then(Value::as_str)) {
                (VmState::NotStarted, _) => {
                    fault("The requested operation is not supported before starting the microVM.")
                }
                (_, Some("Paused")) => {
                    signal_guest(libc::SIGSTOP);
                    self.state = VmState::Paused;
                    (StatusCode::NO_CONTENT, Value::Null)
                }
                (_, Some("Resumed")) => {
                    signal_guest(libc::SIGCONT);
                    self.state = VmState::Running;
                    (StatusCode::NO_CONTENT, Value::Null)
                }
                _ => fault("Invalid VM state"),
            },
            ("PUT", "/snapshot/create") => self.snapshot_create(&body),
            ("PUT", "/snapshot/load") => self.snapshot_load(&body),
            _ => fault(format!(
                "{method} {path} is not supported by fake-firecracker"
            )),
        }
    }

    fn instance_start(&mut self) -> (StatusCode, Value) {
        if self.state != VmState::NotStarted {
            return fault("The requested operation is not supported after starting the microVM.");
        }
        for required in ["/boot-source", "/machine-config"] {
            if !self.config.contains_key(required) && required == "/boot-source" {
                return fault("Cannot start microvm without kernel configuration.");
            }
        }
        if let Err(e) = self.kernel_is_elf() {
            return fault(format!(
                "Cannot load kernel due to invalid memory configuration or invalid kernel image: {e}"
            ));
        }
        if let Err(e) = open_kvm() {
            return fault(e);
        }
        if self.failing("crash-on-start") {
            println!("fake-firecracker: crashing during InstanceStart (injected)");
            std::process::exit(1);
        }
        if self.failing("crash-after-start") {
            // The guest never gets as far as its agent; the VMM dies soon
            // after this answer (see `after`).
            self.state = VmState::Running;
            return (StatusCode::NO_CONTENT, Value::Null);
        }
        match self.start_guest() {
            Ok(()) => {
                self.state = VmState::Running;
                (StatusCode::NO_CONTENT, Value::Null)
            }
            Err(e) => fault(format!("Failed to start the guest: {e}")),
        }
    }

    /// Firecracker on x86_64 boots an uncompressed ELF `vmlinux` only.
    fn kernel_is_elf(&self) -> Result<(), String> {
        let kernel = self
            .config
            .get("/boot-source")
            .and_then(|b| b.get("kernel_image_path"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut head = [0u8; 4];
        let read = jail::resolve(kernel).and_then(|p| {
            use std::io::Read;
            std::fs::File::open(p)
                .and_then(|mut f| f.read_exact(&mut head))
                .map_err(|e| e.to_string())
        });
        match read {
            Ok(()) if head == *b"\x7fELF" => Ok(()),
            Ok(()) => Err(format!("Kernel Loader: {kernel} is not an ELF image")),
            Err(e) => Err(format!("Kernel Loader: {kernel}: {e}")),
        }
    }

    /// Runs emberd-init as the "guest" and the hybrid-vsock proxy in front of it.
    fn start_guest(&mut self) -> anyhow::Result<()> {
        let agent_bin = match std::env::var_os("FAKE_FC_AGENT_BIN") {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()?
                .parent()
                .map(|d| d.join("emberd-init"))
                .ok_or_else(|| anyhow::anyhow!("cannot locate emberd-init"))?,
        };
        // The guest is no host process: a jailed fake keeps it out of the
        // jail, where the VMM user can reach it.
        let guest_dir = match jail::root() {
            Some(_) => {
                jail::remove_dead_guest_dirs();
                std::env::temp_dir().join(format!("fake-fc-{}-{}", self.id, std::process::id()))
            }
            None => std::env::current_dir()?,
        };
        let root = guest_dir.join("guest-root");
        std::fs::create_dir_all(root.join("tmp"))?;
        let agent_socket = guest_dir.join("agent.sock");
        let mut command = match self.slow_guest() {
            // The guest boots that late: the agent starts after a sleep.
            Some(delay) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("sleep {}; exec \"$0\" \"$@\"", delay.as_secs_f64()))
                    .arg(&agent_bin);
                sh
            }
            None => Command::new(&agent_bin),
        };
        // SAFETY: prctl(2) is async-signal-safe and takes no pointers.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let agent = command
            .arg("--unix-socket")
            .arg(&agent_socket)
            .arg("--root")
            .arg(&root)
            .arg("--tmp-dir")
            .arg(root.join("tmp"))
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", agent_bin.display()))?;
        println!("fake-firecracker: guest agent pid {}", agent.id());
        self.agent = Some(agent);
        self.agent_root = Some(match jail::root() {
            Some(_) => guest_dir,
            None => root,
        });
        let uds = self
            .config
            .get("/vsock")
            .and_then(|v| v.get("uds_path"))
            .and_then(Value::as_str)
            .map(jail::resolve)
            .transpose()
            .map_err(|e| anyhow::anyhow!("vsock {e}"))?;
        if let Some(uds) = uds {
            // Firecracker binds without removing a leftover: "address in use".
            let listener = std::os::unix::net::UnixListener::bind(&uds).map_err(|e| {
                anyhow::anyhow!(
                    "Cannot create backend for vsock device: {}: {e}",
                    uds.display()
                )
            })?;
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            let no_ack = self.failing("no-vsock-ack");
            let drop_after_ok = self
                .faults
                .iter()
                .find_map(|f| f.strip_prefix("drop-after-ok:")?.parse().ok())
                .unwrap_or(0);
            self.vsock_task = Some(tokio::spawn(vsock_proxy(
                listener,
                agent_socket,
                no_ack,
                drop_after_ok,
            )));
        }
        if let Some(bytes) = self.console_flood() {
            flood_console(bytes);
        }
        Ok(())
    }

    fn snapshot_create(&mut self, body: &Value) -> (StatusCode, Value) {
        if self.state != VmState::Paused {
            return fault("Create snapshot error: the microVM must be paused.");
        }
        let state_path = body
            .get("snapshot_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let memory_path = body
            .get("mem_file_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (state_path, memory_path) =
            match (jail::resolve(state_path), jail::resolve(memory_path)) {
                (Ok(state), Ok(memory)) => (state, memory),
                (Err(e), _) | (_, Err(e)) => return fault(format!("Create snapshot error: {e}")),
            };
        let mem_size_mib = self
            .config
            .get("/machine-config")
            .and_then(|m| m.get("mem_size_mib"))
            .and_then(Value::as_u64)
            .unwrap_or(128);
        match snapshot::write(&state_path, &memory_path, &self.config, mem_size_mib) {
            Ok(()) => (StatusCode::NO_CONTENT, Value::Null),
            Err(e) => fault(format!("Create snapshot error: {e}")),
        }
    }

    fn snapshot_load(&mut self, body: &Value) -> (StatusCode, Value) {
        let configured = self.config.keys().any(|k| k != "/logger");
        if self.state != VmState::NotStarted || configured {
            return fault(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
            );
        }
        if body.get("mem_backend").is_some() == body.get("mem_file_path").is_some() {
            return fault("Either mem_backend or mem_file_path must be specified, but not both.");
        }
        let memory_path = match crate::mem_backend::file_backend(body) {
            Ok(path) => path,
            Err(message) => return fault(message),
        };
        let state_path = body
            .get("snapshot_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (state_file, memory_file) =
            match (jail::resolve(state_path), jail::resolve(memory_path)) {
                (Ok(state), Ok(memory)) => (state, memory),
                (Err(e), _) | (_, Err(e)) => return fault(format!("Load snapshot error: {e}")),
            };
        // From here on a failure ends Firecracker.
        self.fatal = true;
        if let Err(e) = open_kvm() {
            return fault(format!("Load snapshot error: {e}"));
        }
        let config = match snapshot::read(&state_file, &memory_file) {
            Ok(config) => config,
            Err(e) => return fault(format!("Load snapshot error: {e}")),
        };
        for (key, value) in config {
            if key != "/logger" {
                self.config.insert(key, value);
            }
        }
        // Firecracker reopens each drive's backing file by its recorded path.
        for (key, drive) in &self.config {
            if key.starts_with("/drives/") {
                let file = drive
                    .get("path_on_host")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if let Err(e) = drive_file(file) {
                    return fault(format!("Load snapshot error: {e}"));
                }
            }
        }
        if let Err(e) = self.start_guest() {
            return fault(format!("Load snapshot error: {e}"));
        }
        self.fatal = false;
        if body
            .get("resume_vm")
            .and_then(Value::as_bool)
            .unwrap_or(false)
        {
            self.state = VmState::Running;
        } else {
            signal_guest(libc::SIGSTOP);
            self.state = VmState::Paused;
        }
        (StatusCode::NO_CONTENT, Value::Null)
    }
}

/// Firecracker's limit on the kernel command line, its NUL included.
const MAX_CMDLINE: usize = 2048;

/// Firecracker opens `/dev/kvm` to build a VM (inside the jail when
/// jailed, where the jailer made it); `FAKE_FC_KVM` names another device.
fn open_kvm() -> Result<(), String> {
    let path = match std::env::var("FAKE_FC_KVM") {
        Ok(path) => std::path::PathBuf::from(path),
        Err(_) => jail::resolve("/dev/kvm")?,
    };
    std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .map(drop)
        .map_err(|e| {
            format!(
                "Error creating the KVM object: cannot open {}: {e}",
                path.display()
            )
        })
}

/// A drive's backing file must be there (inside the jail, when jailed).
fn drive_file(file: &str) -> Result<(), String> {
    match jail::resolve(file) {
        Ok(path) if path.is_file() => Ok(()),
        _ => Err(format!(
            "Unable to open the drive file {file}: No such file or directory"
        )),
    }
}

/// What to do once the answer to a request has been sent.
pub(crate) enum After {
    Nothing,
    /// The guest rebooted or the VMM crashed: exit with this status.
    Exit(i32),
}
