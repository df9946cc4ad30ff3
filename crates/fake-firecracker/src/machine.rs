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
use crate::{jail, spec, VERSION};

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

    /// Effects that follow a successful answer: a guest that reboots on
    /// Ctrl-Alt-Del ends Firecracker (`reboot=k`); an injected crash mid-boot.
    pub(crate) fn after(&self, method: &str, status: StatusCode, body: Option<&Value>) -> After {
        if method != "PUT" || !status.is_success() {
            return After::Nothing;
        }
        match body
            .and_then(|b| b.get("action_type"))
            .and_then(Value::as_str)
        {
            Some("SendCtrlAltDel") if self.state == VmState::Running => {
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
                json!({ "id": self.id, "state": self.state.name(), "vmm_version": VERSION, "app_name": "Firecracker" }),
            ),
            ("GET", "/version") => (StatusCode::OK, json!({ "firecracker_version": VERSION })),
            ("GET", "/vm/config") => (StatusCode::OK, Value::Object(self.config.clone())),
            ("PUT", "/logger") => {
                let log = body
                    .get("log_path")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !jail::resolve(log).is_ok_and(|p| p.exists()) {
                    return fault(format!(
                        "Failed to open the log file {log}: No such file or directory"
                    ));
                }
                self.config.insert(path.to_owned(), body);
                (StatusCode::NO_CONTENT, Value::Null)
            }
            ("PUT", "/boot-source") => {
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
            ("PUT", "/vsock") => {
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
        let mut command = Command::new(&agent_bin);
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
            let _ = std::fs::remove_file(&uds);
            let listener = std::os::unix::net::UnixListener::bind(&uds)?;
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            let no_ack = self.failing("no-vsock-ack");
            self.vsock_task = Some(tokio::spawn(vsock_proxy(listener, agent_socket, no_ack)));
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
        let state = json!({ "fake_firecracker_snapshot": VERSION, "config": self.config });
        let written = std::fs::write(state_path, state.to_string())
            .and_then(|()| std::fs::write(memory_path, vec![0u8; 4096]));
        match written {
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
        let state_path = body
            .get("snapshot_path")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let memory_path = body
            .get("mem_backend")
            .and_then(|m| m.get("backend_path"))
            .or_else(|| body.get("mem_file_path"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let (state_file, memory_file) =
            match (jail::resolve(state_path), jail::resolve(memory_path)) {
                (Ok(state), Ok(memory)) => (state, memory),
                (Err(e), _) | (_, Err(e)) => return fault(format!("Load snapshot error: {e}")),
            };
        let state: Value =
            match std::fs::read(state_file).map(|b| serde_json::from_slice::<Value>(&b)) {
                Ok(Ok(state)) if state.get("fake_firecracker_snapshot").is_some() => state,
                Ok(_) => return fault("Load snapshot error: the snapshot file is corrupted."),
                Err(e) => return fault(format!("Load snapshot error: {state_path}: {e}")),
            };
        if !memory_file.is_file() {
            return fault(format!(
                "Load snapshot error: cannot open the memory file {memory_path}"
            ));
        }
        if let Some(config) = state.get("config").and_then(Value::as_object) {
            for (key, value) in config {
                if key != "/logger" {
                    self.config.insert(key.clone(), value.clone());
                }
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
