//! A small stand-in for the emberd daemon used by the client and CLI tests.
//!
//! It serves the routes of DESIGN.md §6 on a real TCP listener, with the daemon's
//! status codes and `{"error"}` bodies, and runs exec code as a host `python3`
//! process (no VM), so that output, stdin, exit codes and timeouts are real.
//! Pack `"broken"` exists only to answer create with a 500.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use emberd_api::{
    CreateSandboxRequest, CreateSandboxResponse, ErrorBody, ExecRequest, ExecResponse,
    InfoResponse, SandboxInfo, SandboxList, SandboxState,
};
use tokio::io::AsyncWriteExt;

#[derive(Default)]
struct Sandboxes {
    next: u64,
    by_id: BTreeMap<String, SandboxInfo>,
    deleted: Vec<String>,
}

#[derive(Clone)]
struct FakeState {
    sandboxes: Arc<Mutex<Sandboxes>>,
    work_dir: String,
}

/// A running fake daemon; the server task ends when this is dropped.
pub struct FakeDaemon {
    pub addr: SocketAddr,
    state: FakeState,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDaemon {
    pub async fn start() -> Self {
        let state = FakeState {
            sandboxes: Arc::default(),
            work_dir: std::env::temp_dir().display().to_string(),
        };
        let app = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/info", get(info))
            .route("/sandboxes", post(create).get(list))
            .route("/sandboxes/{id}", get(inspect).delete(delete))
            .route("/sandboxes/{id}/exec", post(exec))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ids of the sandboxes that still exist.
    pub fn live_ids(&self) -> Vec<String> {
        let sandboxes = self.state.sandboxes.lock().unwrap();
        sandboxes.by_id.keys().cloned().collect()
    }

    /// Ids of the sandboxes deleted so far, in order.
    pub fn deleted_ids(&self) -> Vec<String> {
        self.state.sandboxes.lock().unwrap().deleted.clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn info(State(state): State<FakeState>) -> Json<InfoResponse> {
    Json(InfoResponse {
        guest_ram_mib: 256,
        guest_vcpus: 1,
        boot_path: "cold-boot".into(),
        packs: vec!["python".into()],
        work_dir: state.work_dir.clone(),
        backend: Some("host-process".into()),
        accel: Some("none".into()),
        version: Some("fake".into()),
        pool_ready: None,
    })
}

async fn create(
    State(state): State<FakeState>,
    body: Result<Json<CreateSandboxRequest>, JsonRejection>,
) -> Response {
    // An empty body means all defaults, as in the real API.
    let request = match body {
        Ok(Json(request)) => request,
        Err(JsonRejection::MissingJsonContentType(_)) => CreateSandboxRequest::default(),
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match request.pack() {
        "python" => {}
        "broken" => return error(StatusCode::INTERNAL_SERVER_ERROR, "the VM failed to boot"),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unknown language pack: {other:?}"),
            )
        }
    }
    let mut sandboxes = state.sandboxes.lock().unwrap();
    sandboxes.next += 1;
    let id = format!("sb_{:012x}", sandboxes.next);
    sandboxes.by_id.insert(
        id.clone(),
        SandboxInfo {
            id: id.clone(),
            pack: "python".into(),
            state: SandboxState::Running,
            backend: "host-process".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            boot_path: Some("cold-boot".into()),
            vmm_pid: None,
            console_tail: None,
        },
    );
    (StatusCode::CREATED, Json(CreateSandboxResponse { id })).into_response()
}

async fn list(State(state): State<FakeState>) -> Json<SandboxList> {
    let sandboxes = state.sandboxes.lock().unwrap();
    Json(SandboxList {
        sandboxes: sandboxes.by_id.values().cloned().collect(),
    })
}

async fn inspect(State(state): State<FakeState>, Path(id): Path<String>) -> Response {
    let sandboxes = state.sandboxes.lock().unwrap();
    match sandboxes.by_id.get(&id) {
        Some(info) => {
            let mut info = info.clone();
            info.console_tail =
                Some("[    0.000000] Linux version 6.1\nemberd-init: ready\n".into());
            Json(info).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "sandbox not found"),
    }
}

async fn delete(State(state): State<FakeState>, Path(id): Path<String>) -> Response {
    let mut sandboxes = state.sandboxes.lock().unwrap();
    match sandboxes.by_id.remove(&id) {
        Some(_) => {
            sandboxes.deleted.push(id);
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "sandbox not found"),
    }
}

async fn exec(
    State(state): State<FakeState>,
    Path(id): Path<String>,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Response {
    if !state.sandboxes.lock().unwrap().by_id.contains_key(&id) {
        return error(StatusCode::NOT_FOUND, "sandbox not found");
    }
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    match run_python(&request).await {
        Ok(response) => Json(response).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn run_python(request: &ExecRequest) -> std::io::Result<ExecResponse> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&request.code)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = request.stdin.clone().unwrap_or_default();
    let feed = tokio::spawn(async move {
        // The program may exit without reading its input; that is not an error.
        let _ = stdin.write_all(input.as_bytes()).await;
    });
    let limit = Duration::from_millis(request.timeout_ms.unwrap_or(30_000));
    let output = tokio::time::timeout(limit, child.wait_with_output()).await;
    feed.abort();
    let elapsed = started.elapsed();
    let mut response = ExecResponse {
        duration_ms: elapsed.as_millis() as u64,
        duration_us: Some(elapsed.as_micros() as u64),
        ..Default::default()
    };
    match output {
        Ok(output) => {
            let output = output?;
            response.stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            response.stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            response.exit_code = output.status.code().unwrap_or(-1);
        }
        Err(_) => {
            response.exit_code = -1;
            response.error = Some("execution timed out".into());
        }
    }
    Ok(response)
}
