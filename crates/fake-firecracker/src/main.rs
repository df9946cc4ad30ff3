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
//! Like Firecracker v1.15.1 it refuses an `--id` other than 1 to 64
//! letters, digits and `-`; fails on a leftover API or vsock socket
//! ("address in use") and leaves both behind when it ends; creates its log
//! file; opens `/dev/kvm` to build a VM; boots only an ELF kernel with a
//! command line under 2,048 bytes; writes a memory file as large as the
//! guest's memory and checks a snapshot's format, checksum and CPU on load,
//! ending when a load fails; ends when the running guest reboots on
//! `SendCtrlAltDel` (unless its kernel has no i8042: `no-i8042`); dies by
//! SIGTERM rather than exiting. Hybrid vsock: `CONNECT` in any case, any
//! port; a connection waits until the guest's driver is up (its agent
//! socket exists) and is dropped after 2 s without an answer.
//!
//! Environment: `FAKE_FC_SPEC` (another copy of the spec), `FAKE_FC_RECORD`
//! (where to record calls), `FAKE_FC_AGENT_BIN` (the `emberd-init` to run),
//! `FAKE_FC_JAIL_ROOT` (set by the fake `jailer`: every path is resolved
//! inside that chroot, see `jail`), `FAKE_FC_CPU` (the CPU snapshots are
//! taken on and checked against; default: the host's model and flags),
//! `FAKE_FC_KVM` (the KVM device to open; default `/dev/kvm`),
//! `FAKE_FC_VERSION` (the release it reports; default 1.15.1).
//! Faults, from `FAKE_FC_FAIL` (comma-separated): `api:<METHOD> <path>` (that
//! call fails), `crash-on-start` (exit during InstanceStart, before the
//! answer), `crash-after-start` (answer InstanceStart, then exit mid-boot),
//! `no-vsock-ack` (accept CONNECT, never answer), `slow-start:<ms>` (delay
//! the answer to InstanceStart), `console-flood:<bytes>` (once the guest
//! runs, it writes that many bytes to the console, then `console flood done`),
//! `no-i8042` (the guest ignores Ctrl-Alt-Del), `slow-guest:<ms>` (the
//! guest's vsock driver and agent come up that late), `drop-after-ok:<n>`
//! (the first n vsock connections are closed right after their `OK`),
//! `exit-unanswered`
//! (a request that ends the fake gets no answer). Once `PUT /logger` named a
//! log file, every refused request is also written there, as Firecracker
//! writes its errors.

mod guest;
mod jail;
mod machine;
mod mem_backend;
mod snapshot;
mod spec;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixListener;

use crate::guest::kill_guest;
use crate::machine::{fault, After, Fake, Shared, VmState};

/// The release the fake stands in for.
const VERSION: &str = "1.15.1";

/// The release the fake reports: `FAKE_FC_VERSION`, else [`VERSION`].
pub(crate) fn version() -> String {
    std::env::var("FAKE_FC_VERSION").unwrap_or_else(|_| VERSION.to_owned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("Firecracker v{}", version());
        return Ok(());
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let api_sock = value("--api-sock").ok_or_else(|| anyhow::anyhow!("--api-sock is required"))?;
    let api_sock = jail::resolve(&api_sock).map_err(|e| anyhow::anyhow!("--api-sock {e}"))?;
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
        fatal: false,
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
    // Like Firecracker: a leftover socket is "address in use", never removed.
    let listener = UnixListener::bind(&api_sock).map_err(|e| {
        anyhow::anyhow!(
            "Failed to open the API socket at: {}. Check that it is not already used. ({e})",
            api_sock.display()
        )
    })?;
    println!("fake-firecracker: API on {}", api_sock.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted?.0,
            _ = term.recv() => {
                // Firecracker sets no SIGTERM handler: it dies by the signal.
                shutdown(&fake);
                // SAFETY: signal(2) and raise(3) take plain integers; the
                // default action ends the process here.
                unsafe {
                    libc::signal(libc::SIGTERM, libc::SIG_DFL);
                    libc::raise(libc::SIGTERM);
                }
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
        if !status.is_success() {
            guard.log_error(status, &value);
        }
        let after = guard.after(&method, status, body.as_ref());
        (status, value, after)
    };
    if let After::Exit(code) = after {
        if fake.lock().expect("fake lock").exits_before_answering() {
            shutdown(&fake);
            println!("fake-firecracker: exiting with status {code} before answering");
            std::process::exit(code);
        }
        // Let hyper send the answer first, as Firecracker's API thread may.
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
