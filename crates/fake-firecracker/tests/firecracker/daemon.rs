//! The daemon's Firecracker path end to end over HTTP: `emberd serve
//! --backend firecracker` on the fake runs, snapshots and restores
//! sandboxes, and a guest that never answers is a 500 that leaves nothing.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberd::vmm::firecracker::instance_id;
use emberd_harness::Daemon;
use serde_json::Value;

use crate::support::{assert_nothing_left, data_dir, fake_bin, temp_root, workspace_bin};

/// `emberd serve --backend firecracker` on the fake, on a free port.
pub fn start(data_dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> Daemon {
    let builder = Daemon::builder(workspace_bin("emberd"))
        .backend("firecracker")
        .data_dir(data_dir)
        .arg("--firecracker-bin")
        .arg(fake_bin())
        .args(args)
        .env("FAKE_FC_AGENT_BIN", workspace_bin("emberd-init"))
        .env_remove("FAKE_FC_FAIL");
    env.iter()
        .fold(builder, |builder, (key, value)| builder.env(key, value))
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Plain HTTP to a daemon: status and JSON body as they come.
pub struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    pub fn of(daemon: &Daemon) -> Http {
        Http {
            client: reqwest::Client::new(),
            base: daemon.base_url(),
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn delete(&self, path: &str) -> u16 {
        self.client
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn the_daemon_runs_sandboxes_on_the_firecracker_path() {
    let daemon = start(
        &data_dir(),
        &["--pool-size", "0", "--snapshots", "false"],
        &[],
    );
    let http = Http::of(&daemon);
    let info = http.get("/info").await;
    assert_eq!(info["backend"], "firecracker");
    let (status, created) = http
        .post("/sandboxes", r#"{"language_pack":"shell"}"#)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, out) = http
        .post(
            &format!("/sandboxes/{id}/exec"),
            r#"{"code":"echo from-firecracker; exit 4"}"#,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "from-firecracker\n");
    assert_eq!(out["exit_code"], 4);
    assert_eq!(http.delete(&format!("/sandboxes/{id}")).await, 204);
    assert!(!daemon.work_dir().join(&id).exists());
    assert_nothing_left(&daemon.work_dir().join(&id), &id);
}

#[tokio::test]
async fn the_daemon_restores_sandboxes_from_a_firecracker_snapshot() {
    let root = temp_root("fct");
    // A data dir of its own, so that template snapshots stay out of the real one.
    let data = root.path().join("data");
    emberd_harness::share_images(&data_dir(), &data).unwrap();
    let record = root.path().join("calls.jsonl");
    let daemon = start(
        &data,
        &["--pool-size", "0", "--snapshots", "true", "--skip-warm"],
        &[("FAKE_FC_RECORD", record.as_os_str())],
    );
    let http = Http::of(&daemon);
    // The first create cold-boots and asks for the pack's template; later
    // ones restore from it once it is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        assert!(Instant::now() < deadline, "no create was ever restored");
        let (status, created) = http
            .post("/sandboxes", r#"{"language_pack":"shell"}"#)
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let info = http.get(&format!("/sandboxes/{id}")).await;
        let (status, out) = http
            .post(
                &format!("/sandboxes/{id}/exec"),
                r#"{"code":"echo $((6*7))"}"#,
            )
            .await;
        assert_eq!(
            (status, out["stdout"].as_str()),
            (200, Some("42\n")),
            "{out}"
        );
        assert_eq!(http.delete(&format!("/sandboxes/{id}")).await, 204);
        assert_nothing_left(&daemon.work_dir().join(&id), &id);
        if info["boot_path"] == "snapshot-restore" {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let calls: Vec<Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |fc_id: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|c| c["id"] == fc_id)
            .map(|c| {
                format!(
                    "{} {}",
                    c["method"].as_str().unwrap(),
                    c["path"].as_str().unwrap()
                )
            })
            .collect()
    };
    let mut ids: Vec<&str> = calls.iter().filter_map(|c| c["id"].as_str()).collect();
    ids.dedup();
    let template = ids
        .iter()
        .find(|id| of(id).contains(&"PUT /snapshot/create".to_owned()))
        .expect("a template VM was snapshotted");
    assert_eq!(
        of(template)[7..],
        ["PATCH /vm", "PUT /snapshot/create"],
        "the template VM is paused, snapshotted, then stopped by signal"
    );
    assert_eq!(
        of(&instance_id(&restored)),
        [
            "PUT /logger",
            "PUT /snapshot/load",
            "PUT /actions" // SendCtrlAltDel on delete
        ]
    );
    let snapshots: Vec<_> = walk(&data.join("snapshots"))
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(snapshots.contains(&"vm.snap".to_owned()), "{snapshots:?}");
    assert!(snapshots.contains(&"vm.mem".to_owned()), "{snapshots:?}");
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A guest whose agent never acknowledges the vsock CONNECT: the daemon's
/// boot deadline turns it into a 500, and nothing is left behind. (Failures
/// of the VMM itself are the backend's, tested in `vmm.rs`.)
#[tokio::test]
async fn a_guest_that_never_answers_is_a_500_and_leaves_nothing() {
    let daemon = start(
        &data_dir(),
        &[
            "--pool-size",
            "0",
            "--snapshots",
            "false",
            "--boot-timeout",
            "3s",
        ],
        &[("FAKE_FC_FAIL", OsStr::new("no-vsock-ack"))],
    );
    let http = Http::of(&daemon);
    let (status, body) = http
        .post("/sandboxes", r#"{"language_pack":"shell"}"#)
        .await;
    assert_eq!(status, 500, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains("did not answer within 3s"), "{body}");
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
    // Every VMM and guest names its sandbox dir on its command line.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.vm_processes().is_empty() {
        assert!(Instant::now() < deadline, "a VM was left running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A hybrid-vsock stream that breaks right after `OK` (before `Hello`) is
/// dialled again within the boot timeout: the create succeeds.
#[tokio::test]
async fn a_handshake_that_breaks_after_ok_is_retried() {
    let daemon = start(
        &data_dir(),
        &["--pool-size", "0", "--snapshots", "false"],
        &[("FAKE_FC_FAIL", OsStr::new("drop-after-ok:2"))],
    );
    let http = Http::of(&daemon);
    let (status, created) = http
        .post("/sandboxes", r#"{"language_pack":"shell"}"#)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, out) = http
        .post(&format!("/sandboxes/{id}/exec"), r#"{"code":"echo again"}"#)
        .await;
    assert_eq!(
        (status, out["stdout"].as_str()),
        (200, Some("again\n")),
        "{out}"
    );
    assert_eq!(http.delete(&format!("/sandboxes/{id}")).await, 204);
}
