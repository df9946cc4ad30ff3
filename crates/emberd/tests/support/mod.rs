//! Shared helpers of the daemon's integration tests: a real `emberd serve`
//! process on a free port with its own work dir, and process accounting.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use emberd_api::{CreateSandboxResponse, ExecResponse};
use serde_json::{json, Value};

/// The backend the real-VM tests run on: `EMBERD_TEST_BACKEND` (default qemu).
pub fn test_backend() -> String {
    std::env::var("EMBERD_TEST_BACKEND").unwrap_or_else(|_| "qemu".into())
}

/// The data dir with the built images (`make images` fills it).
pub fn data_dir() -> PathBuf {
    match std::env::var_os("EMBERD_DATA_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => emberd::config::default_data_dir(),
    }
}

/// A running daemon, killed (and its VMs with it) on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub addr: String,
    pub work_dir: PathBuf,
    _work_root: Option<tempfile::TempDir>,
    pub log: PathBuf,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Daemon {
    /// Starts a daemon with a fresh work dir and waits until it serves.
    pub fn start(extra_args: &[&str]) -> Daemon {
        let root = tempfile::Builder::new()
            .prefix("emb")
            .tempdir_in("/tmp")
            .unwrap();
        let work_dir = root.path().join("w");
        let mut daemon = Daemon::start_in(&work_dir, extra_args);
        daemon._work_root = Some(root);
        daemon
    }

    /// Starts a daemon on `work_dir` (which may hold a previous daemon's leftovers).
    pub fn start_in(work_dir: &Path, extra_args: &[&str]) -> Daemon {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = work_dir
            .parent()
            .unwrap()
            .join(format!("daemon-{}.log", addr.replace([':', '.'], "_")));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_emberd"))
            .arg("serve")
            .args(["--addr", &addr])
            .args(["--backend", &test_backend()])
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--data-dir")
            .arg(data_dir())
            .args(["--boot-timeout", "60s"])
            .args(extra_args)
            // Tests count VMs: no pool and no templates unless a test asks (flags win).
            .env("EMBERD_POOL_SIZE", "0")
            .env("EMBERD_SNAPSHOTS", "false")
            .env("EMBERD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("spawn emberd");
        let mut daemon = Daemon {
            child: Some(child),
            addr,
            work_dir: work_dir.to_owned(),
            _work_root: None,
            log,
        };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "emberd exited with {status} before serving:\n{}",
                    self.log_text()
                );
            }
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "emberd did not serve within 60 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(180))
                .build()
                .unwrap(),
            base: format!("http://{}", self.addr),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `signal` and waits for the daemon to exit; returns its status.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> std::process::ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Processes (other than the daemon) whose command line names this work dir.
    pub fn vm_processes(&self) -> Vec<u32> {
        processes_mentioning(&self.work_dir.display().to_string())
    }

    /// Sandbox directories left in the work dir.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.work_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("sb_"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Live (non-zombie) processes whose command line contains `needle`, except
/// this test process and the daemon itself.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains(" serve ") {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(true);
            if !zombie {
                found.push(pid);
            }
        }
    }
    found
}

/// Polls `check` until it holds or `bound` passes.
pub fn eventually(bound: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thin HTTP client over the raw API, so tests see exact statuses and bodies.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    /// Creates a sandbox; panics with the daemon's message when it fails.
    pub async fn create(&self, pack: &str) -> String {
        let (status, body) = self
            .raw(
                reqwest::Method::POST,
                "/sandboxes",
                Some(json!({ "language_pack": pack }).to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, 201, "create {pack}: {body}");
        let created: CreateSandboxResponse = serde_json::from_value(body).unwrap();
        created.id
    }

    pub async fn exec_with(&self, id: &str, request: Value) -> ExecResponse {
        let (status, body) = self
            .raw(
                reqwest::Method::POST,
                &format!("/sandboxes/{id}/exec"),
                Some(request.to_string().into_bytes()),
            )
            .await;
        assert_eq!(status, 200, "exec: {body}");
        serde_json::from_value(body).unwrap()
    }

    pub async fn exec(&self, id: &str, code: &str) -> ExecResponse {
        self.exec_with(id, json!({ "code": code })).await
    }

    pub async fn delete(&self, id: &str) -> u16 {
        self.raw(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await
            .0
    }
}
