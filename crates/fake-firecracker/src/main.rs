//! fake-firecracker: a stand-in for Firecracker on hosts without KVM.
//!
//! It serves Firecracker's REST API on `--api-sock`, checks every request
//! against Firecracker's OpenAPI spec and its state rules (answering
//! Firecracker's 400 `{"fault_message": …}` otherwise), records each call as
//! a JSON line in `<api-sock>.calls`, and on `InstanceStart` (or a snapshot
//! load) runs `emberd-init` as a host process behind the hybrid-vsock
//! protocol on the configured vsock socket (`CONNECT <port>\n` → `OK <n>\n`).
//! Pause and resume stop and continue that process and its children.
//!
//! Like Firecracker it refuses an `--id` other than 1 to 64 letters, digits
//! and `-`, and it ends when the running guest reboots (`SendCtrlAltDel`).
//!
//! Environment: `FAKE_FC_SPEC` (another copy of the spec), `FAKE_FC_RECORD`
//! (where to record calls), `FAKE_FC_AGENT_BIN` (the `emberd-init` to run).
//! Faults, from `FAKE_FC_FAIL` (comma-separated): `api:<METHOD> <path>` (that
//! call fails), `crash-on-start` (exit during InstanceStart, before the
//! answer), `crash-after-start` (answer InstanceStart, then exit mid-boot),
//! `no-vsock-ack` (accept CONNECT, never answer), `slow-start:<ms>` (delay
//! the answer to InstanceStart).

mod spec;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use emberd_proto::boundary::AGENT_VSOCK_PORT;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

const VERSION: &str = "1.15.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmState {
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

struct Fake {
    id: String,
    calls_log: PathBuf,
    faults: Vec<String>,
    spec: spec::Spec,
    state: VmState,
    /// Every pre-boot configuration call so far, by route.
    config: serde_json::Map<String, Value>,
    agent: Option<Child>,
    agent_root: Option<PathBuf>,
    vsock_task: Option<tokio::task::JoinHandle<()>>,
}

type Shared = Arc<Mutex<Fake>>;

fn fault(message: impl Into<String>) -> (StatusCode, Value) {
    (
        StatusCode::BAD_REQUEST,
        json!({ "fault_message": message.into() }),
    )
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("Firecracker v{VERSION}");
        return Ok(());
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let api_sock = PathBuf::from(
        value("--api-sock").ok_or_else(|| anyhow::anyhow!("--api-sock is required"))?,
    );
    let id = value("--id").unwrap_or_else(|| "anonymous-instance".into());
    if let Err(e) = validate_instance_id(&id) {
        // Firecracker panics here (and aborts).
        eprintln!("fake-firecracker: Invalid instance ID: {e}");
        std::process::exit(1);
    }
    let faults = std::env::var("FAKE_FC_FAIL")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let calls_log = std::env::var_os("FAKE_FC_RECORD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{}.calls", api_sock.display())));
    let fake = Fake {
        id,
        calls_log,
        faults,
        spec: spec::Spec::load()?,
        state: VmState::NotStarted,
        config: serde_json::Map::new(),
        agent: None,
        agent_root: None,
        vsock_task: None,
    };
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } != 0 {
        anyhow::bail!(
            "cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(serve(api_sock, Arc::new(Mutex::new(fake))))
}

async fn serve(api_sock: PathBuf, fake: Shared) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(&api_sock);
    let listener = UnixListener::bind(&api_sock)?;
    println!("fake-firecracker: API on {}", api_sock.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = term.recv() => {
                shutdown(&fake);
                return Ok(());
            }
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| handle(fake.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Ends the "guest": the agent and everything it started, as the end of a
/// VM would.
fn shutdown(fake: &Shared) {
    let mut fake = fake.lock().expect("fake lock");
    kill_guest();
    if let Some(mut agent) = fake.agent.take() {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    if let Some(root) = fake.agent_root.take() {
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Every process below this one. The fake is a child subreaper, so what
/// the agent's children leave behind stays below it too.
fn guest_processes() -> Vec<libc::pid_t> {
    let mut parents: Vec<(libc::pid_t, libc::pid_t)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<libc::pid_t>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![std::process::id() as libc::pid_t];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

fn signal_guest(signal: libc::c_int) {
    for pid in guest_processes() {
        // SAFETY: kill(2) takes plain integers; the pids are our descendants.
        unsafe { libc::kill(pid, signal) };
    }
}

/// SIGKILLs every descendant and reaps them, until none is left (bounded).
fn kill_guest() {
    for _ in 0..200 {
        if guest_processes().is_empty() {
            return;
        }
        signal_guest(libc::SIGKILL);
        // SAFETY: waitpid with WNOHANG and a null status pointer is allowed.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Firecracker's rule for `--id`: 1 to 64 ASCII letters, digits or `-`.
fn validate_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "InvalidLen({}, 1, 64): the length must be between 1 and 64",
            id.len()
        ));
    }
    match id
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        Some((at, c)) => Err(format!("InvalidChar({c:?}, {at})")),
        None => Ok(()),
    }
}

/// What to do once the answer to a request has been sent.
enum After {
    Nothing,
    /// The guest rebooted or the VMM crashed: exit with this status.
    Exit(i32),
}

async fn handle(
    fake: Shared,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(value) => Some(value),
            Err(e) => {
                let (status, value) = fault(format!("Invalid JSON body: {e}"));
                return Ok(respond(status, value));
            }
        }
    };
    let starting = method == "PUT"
        && path == "/actions"
        && body.as_ref().and_then(|b| b.get("action_type")) == Some(&json!("InstanceStart"));
    let delay = starting
        .then(|| fake.lock().expect("fake lock").slow_start())
        .flatten();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let (status, value, after) = {
        let mut guard = fake.lock().expect("fake lock");
        guard.record(&method, &path, body.as_ref());
        let (status, value) = guard.apply(&method, &path, body.as_ref());
        let after = guard.after(&method, status, body.as_ref());
        (status, value, after)
    };
    if let After::Exit(code) = after {
        // Let hyper send the answer first, as Firecracker's API thread would.
        let fake = fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            shutdown(&fake);
            println!("fake-firecracker: exiting with status {code}");
            std::process::exit(code);
        });
    }
    Ok(respond(status, value))
}

fn respond(status: StatusCode, value: Value) -> Response<Full<Bytes>> {
    let body = if value.is_null() {
        Bytes::new()
    } else {
        Bytes::from(value.to_string())
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("valid response")
}

impl Fake {
    /// Appends one JSON line with one write, so that fakes sharing a
    /// `FAKE_FC_RECORD` file never interleave their lines.
    fn record(&self, method: &str, path: &str, body: Option<&Value>) {
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

    fn slow_start(&self) -> Option<Duration> {
        self.faults
            .iter()
            .find_map(|f| f.strip_prefix("slow-start:")?.parse().ok())
            .map(Duration::from_millis)
    }

    /// Effects that follow a successful answer: a guest that reboots on
    /// Ctrl-Alt-Del ends Firecracker (`reboot=k`); an injected crash mid-boot.
    fn after(&self, method: &str, status: StatusCode, body: Option<&Value>) -> After {
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

    fn apply(&mut self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
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
                if !Path::new(log).exists() {
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
                        if !Path::new(file).is_file() {
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
                if !Path::new(file).is_file() {
                    return fault(format!(
                        "Unable to open the drive file {file}: No such file or directory"
                    ));
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
        let root = std::env::current_dir()?.join("guest-root");
        std::fs::create_dir_all(root.join("tmp"))?;
        let agent_socket = std::env::current_dir()?.join("agent.sock");
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
        self.agent_root = Some(root);
        let uds = self
            .config
            .get("/vsock")
            .and_then(|v| v.get("uds_path"))
            .and_then(Value::as_str)
            .map(PathBuf::from);
        if let Some(uds) = uds {
            let _ = std::fs::remove_file(&uds);
            let listener = std::os::unix::net::UnixListener::bind(&uds)?;
            listener.set_nonblocking(true)?;
            let listener = UnixListener::from_std(listener)?;
            let no_ack = self.failing("no-vsock-ack");
            self.vsock_task = Some(tokio::spawn(vsock_proxy(listener, agent_socket, no_ack)));
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
        let state: Value =
            match std::fs::read(state_path).map(|b| serde_json::from_slice::<Value>(&b)) {
                Ok(Ok(state)) if state.get("fake_firecracker_snapshot").is_some() => state,
                Ok(_) => return fault("Load snapshot error: the snapshot file is corrupted."),
                Err(e) => return fault(format!("Load snapshot error: {state_path}: {e}")),
            };
        if !Path::new(memory_path).is_file() {
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

/// Hybrid vsock: `CONNECT <port>\n` from the host, `OK <n>\n` back, then bytes both ways.
async fn vsock_proxy(listener: UnixListener, agent_socket: PathBuf, no_ack: bool) {
    let mut next_port = 1_073_741_824u32;
    loop {
        let Ok((mut host, _)) = listener.accept().await else {
            return;
        };
        next_port += 1;
        let agent_socket = agent_socket.clone();
        tokio::spawn(async move {
            let mut line = Vec::new();
            loop {
                match host.read_u8().await {
                    Ok(b'\n') => break,
                    Ok(byte) if line.len() < 64 => line.push(byte),
                    _ => return,
                }
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let port: Option<u32> = line
                .strip_prefix("CONNECT ")
                .and_then(|p| p.trim().parse().ok());
            if port != Some(AGENT_VSOCK_PORT) {
                return;
            }
            if no_ack {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return;
            }
            // Like a guest whose agent is not listening yet: the host sees the
            // connection close and tries again.
            let Ok(mut guest) = UnixStream::connect(&agent_socket).await else {
                return;
            };
            if host
                .write_all(format!("OK {next_port}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
        });
    }
}
