//! Shared helpers of the daemon's real-VM tests: a daemon started the way
//! these tests want it (on `emberd-harness`), a raw HTTP client that shows
//! exact statuses and bodies, and waits on conditions.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberd_api::{CreateSandboxResponse, ExecResponse};
pub use emberd_harness::Daemon;
use emberd_harness::DaemonBuilder;
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

/// A daemon on the test backend and data dir, with no pool and no
/// templates unless `extra_args` ask (tests count VMs; flags win over the
/// environment).
pub fn builder(extra_args: &[&str]) -> DaemonBuilder {
    Daemon::builder(env!("CARGO_BIN_EXE_emberd"))
        .backend(test_backend())
        .data_dir(data_dir())
        .args(["--boot-timeout", "60s"])
        .args(extra_args)
        .env("EMBERD_POOL_SIZE", "0")
        .env("EMBERD_SNAPSHOTS", "false")
}

/// Starts a daemon with a fresh work dir and waits until it serves.
pub fn start(extra_args: &[&str]) -> Daemon {
    builder(extra_args)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts a daemon on `work_dir` (which may hold a previous daemon's leftovers).
pub fn start_in(work_dir: &Path, extra_args: &[&str]) -> Daemon {
    builder(extra_args)
        .work_dir(work_dir)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `signal` and waits for the daemon to exit; returns its status.
pub fn signal_and_wait(
    daemon: &mut Daemon,
    signal: nix::sys::signal::Signal,
) -> std::process::ExitStatus {
    daemon
        .signal_and_wait(signal, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}:\n{}", daemon.log_text()))
}

/// A raw client of `daemon`'s API.
pub fn api(daemon: &Daemon) -> Api {
    Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(180))
            .build()
            .unwrap(),
        base: daemon.base_url(),
    }
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

    /// `POST /sandboxes/{id}/exec` with `request` as the body, status and body as they come.
    pub async fn exec_raw(&self, id: &str, request: &Value) -> (u16, Value) {
        self.raw(
            reqwest::Method::POST,
            &format!("/sandboxes/{id}/exec"),
            Some(request.to_string().into_bytes()),
        )
        .await
    }

    pub async fn exec_with(&self, id: &str, request: Value) -> ExecResponse {
        let (status, body) = self.exec_raw(id, &request).await;
        assert_eq!(status, 200, "exec: {body}");
        serde_json::from_value(body).unwrap()
    }

    pub async fn exec(&self, id: &str, code: &str) -> ExecResponse {
        self.exec_with(id, json!({ "code": code })).await
    }

    /// Waits until `GET /info` reports `boot_path` `expected`, within `bound`
    /// (a template build under TCG on a loaded host takes minutes).
    pub async fn wait_for_boot_path(&self, expected: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            let (_, info) = self.raw(reqwest::Method::GET, "/info", None).await;
            if info["boot_path"] == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "boot_path never became {expected}: {info}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `GET /sandboxes/{id}`; panics unless it is a 200.
    pub async fn sandbox(&self, id: &str) -> Value {
        let (status, info) = self
            .raw(reqwest::Method::GET, &format!("/sandboxes/{id}"), None)
            .await;
        assert_eq!(status, 200, "GET /sandboxes/{id}: {info}");
        info
    }

    /// The PID of sandbox `id`'s VMM.
    pub async fn vmm_pid(&self, id: &str) -> u32 {
        let info = self.sandbox(id).await;
        let pid = info["vmm_pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("no vmm_pid: {info}"));
        u32::try_from(pid).unwrap()
    }

    pub async fn delete(&self, id: &str) -> u16 {
        self.raw(reqwest::Method::DELETE, &format!("/sandboxes/{id}"), None)
            .await
            .0
    }

    /// Runs `code` repeatedly until it prints `expected`, within `bound`:
    /// how a test waits for something another exec is doing in the guest.
    pub async fn wait_for_output(&self, id: &str, code: &str, expected: &str, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            let out = self.exec(id, code).await;
            if out.stdout == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{code:?} never printed {expected:?}; last: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
