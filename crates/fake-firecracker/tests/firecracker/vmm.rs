//! emberd's Firecracker backend against fake-firecracker: the exact API
//! calls, the hybrid-vsock agent channel, pause/resume, snapshot create and
//! load, injected failures that must unwind completely, and the daemon's
//! Firecracker path end to end over HTTP.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emberd::guest::{AgentClient, RunSpec};
use emberd::image::Manifest;
use emberd::vmm::firecracker::{instance_id, FirecrackerBackend};
use emberd::vmm::{BootSpec, SnapshotFiles, Vm, VmBackend, VmmError};
use serde_json::Value;

fn fake_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-firecracker"))
}

/// A binary of the workspace built next to this test's target directory.
fn workspace_bin(name: &str) -> PathBuf {
    let dir = std::env::current_exe().unwrap();
    let profile_dir = dir.parent().unwrap().parent().unwrap();
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace (`cargo build --workspace`)",
        path.display()
    );
    path
}

fn data_dir() -> PathBuf {
    std::env::var_os("EMBERD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(emberd::config::default_data_dir)
}

fn boot_spec(dir: &Path, id: &str) -> BootSpec {
    let manifest = Manifest::load(&data_dir()).expect("images built (`make images`)");
    BootSpec {
        sandbox_id: id.into(),
        sandbox_dir: dir.to_owned(),
        kernel_bzimage: manifest.kernel.bzimage.clone(),
        kernel_vmlinux: manifest.kernel.vmlinux.clone(),
        initramfs: manifest.initramfs.clone(),
        root_disk: manifest.pack("shell").unwrap().squashfs.clone(),
        vcpus: 1,
        memory_mib: 256,
        extra_kernel_args: vec!["emberd.overlay_size=256M".into()],
        boot_timeout: Duration::from_secs(10),
    }
}

fn setup() -> FirecrackerBackend {
    std::env::set_var("FAKE_FC_AGENT_BIN", workspace_bin("emberd-init"));
    FirecrackerBackend::new(Some(fake_bin())).expect("fake-firecracker passes the version check")
}

fn calls(dir: &Path) -> Vec<(String, String, Value)> {
    std::fs::read_to_string(dir.join("fc.sock.calls"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["method"].as_str().unwrap().to_owned(),
                v["path"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect()
}

fn call_names(dir: &Path) -> Vec<String> {
    calls(dir)
        .into_iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect()
}

/// Live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            !zombie
                && String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(needle)
        })
        .collect()
}

/// No VMM (found by its `--id`) and no guest (found by its directory) is
/// left running.
fn assert_nothing_left(dir: &Path, id: &str) {
    let fc_id = instance_id(id);
    let dir = dir.display().to_string();
    let left = || {
        let mut pids = processes_mentioning(&fc_id);
        pids.extend(processes_mentioning(&dir));
        pids
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !left().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = left()
        .iter()
        .map(|p| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
            )
            .replace('\0', " ")
        })
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

fn sandbox_dir(root: &Path, id: &str) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir(&dir).unwrap();
    dir
}

async fn echo(vm: &dyn Vm, text: &str) -> String {
    let stream = vm.connect_agent().await.expect("agent channel");
    let (agent, _) = AgentClient::handshake(stream)
        .await
        .expect("Hello over hybrid vsock");
    let outcome = agent
        .run(RunSpec {
            interpreter: vec!["/bin/sh".into()],
            code: format!("echo {text}").into_bytes(),
            file_suffix: ".sh".into(),
            timeout: Some(Duration::from_secs(10)),
            output_limit_bytes: 1024,
            ..RunSpec::default()
        })
        .await
        .expect("exec");
    String::from_utf8_lossy(&outcome.stdout).into_owned()
}

/// Retries while the guest agent is still coming up, as the manager does.
async fn echo_when_ready(vm: &dyn Vm, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match vm.connect_agent().await {
            Ok(_probe) => return echo(vm, text).await,
            Err(e) => {
                assert!(Instant::now() < deadline, "agent never answered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn create_pause_snapshot_and_restore_make_the_documented_calls() {
    let backend = setup();
    let root = tempfile::Builder::new()
        .prefix("fcb")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = root.path().join("sb_a00000000001");
    std::fs::create_dir(&dir).unwrap();
    let spec = boot_spec(&dir, "sb_a00000000001");
    let vm = backend.start(&spec).await.expect("boots on the fake");
    assert_eq!(echo_when_ready(vm.as_ref(), "hello").await, "hello\n");
    assert_eq!(
        call_names(&dir),
        [
            "PUT /logger",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /machine-config",
            "PUT /vsock",
            "PUT /actions"
        ]
    );
    let recorded = calls(&dir);
    assert_eq!(
        recorded[1].2["kernel_image_path"],
        spec.kernel_vmlinux.display().to_string()
    );
    assert_eq!(recorded[2].2["is_read_only"], true);
    assert_eq!(recorded[4].2["uds_path"], "v.sock");
    assert_eq!(recorded[5].2["action_type"], "InstanceStart");

    vm.pause().await.unwrap();
    let snapshot_dir = root.path().join("snap");
    std::fs::create_dir(&snapshot_dir).unwrap();
    let snapshot = SnapshotFiles { dir: snapshot_dir };
    vm.snapshot(&snapshot).await.unwrap();
    vm.resume().await.unwrap();
    assert_eq!(echo(vm.as_ref(), "after resume").await, "after resume\n");
    let names = call_names(&dir);
    assert_eq!(
        names[6..],
        ["PATCH /vm", "PUT /snapshot/create", "PATCH /vm"]
    );
    // A running guest is stopped by a reboot, which ends Firecracker cleanly.
    vm.stop().await.unwrap();
    assert_eq!(
        call_names(&dir).last().map(String::as_str),
        Some("PUT /actions")
    );
    assert_eq!(
        calls(&dir).last().unwrap().2["action_type"],
        "SendCtrlAltDel"
    );
    assert_eq!(vm.wait().await.unwrap().code, Some(0));
    vm.stop().await.unwrap();
    assert_nothing_left(&dir, "sb_a00000000001");

    let dir2 = root.path().join("sb_a00000000002");
    std::fs::create_dir(&dir2).unwrap();
    let restored = backend
        .restore(&boot_spec(&dir2, "sb_a00000000002"), &snapshot)
        .await
        .expect("restores on the fake");
    assert_eq!(
        echo_when_ready(restored.as_ref(), "restored").await,
        "restored\n"
    );
    assert_eq!(call_names(&dir2), ["PUT /logger", "PUT /snapshot/load"]);
    let load = &calls(&dir2)[1].2;
    assert_eq!(load["mem_backend"]["backend_type"], "File");
    assert_eq!(load["resume_vm"], true);
    // A paused guest cannot react to Ctrl-Alt-Del: it gets signals only.
    restored.pause().await.unwrap();
    restored.stop().await.unwrap();
    assert_eq!(
        call_names(&dir2),
        ["PUT /logger", "PUT /snapshot/load", "PATCH /vm"]
    );
    assert_nothing_left(&dir2, "sb_a00000000002");
}

#[tokio::test]
async fn pause_freezes_and_stop_ends_what_the_guest_runs() {
    let backend = setup();
    let root = tempfile::Builder::new()
        .prefix("fcp")
        .tempdir_in("/tmp")
        .unwrap();
    let id = "sb_b00000000001";
    let dir = sandbox_dir(root.path(), id);
    let vm = backend.start(&boot_spec(&dir, id)).await.unwrap();
    assert_eq!(echo_when_ready(vm.as_ref(), "up").await, "up\n");
    let stream = vm.connect_agent().await.unwrap();
    let (agent, _) = AgentClient::handshake(stream).await.unwrap();
    // A command still running in the guest, told apart by its argument.
    let marker = "sleep 297.31";
    let running = tokio::spawn(async move {
        agent
            .run(RunSpec {
                interpreter: vec!["/bin/sh".into()],
                code: marker.as_bytes().to_vec(),
                file_suffix: ".sh".into(),
                timeout: Some(Duration::from_secs(60)),
                output_limit_bytes: 1024,
                ..RunSpec::default()
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleeper = loop {
        if let Some(pid) = processes_mentioning(marker).first() {
            break *pid;
        }
        assert!(Instant::now() < deadline, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let state = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .unwrap_or('?')
    };
    // Signals land when the process next runs: give them a moment.
    let settles_to = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while (state(sleeper) == 'T') != want {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    };
    vm.pause().await.unwrap();
    assert!(settles_to(true), "a paused guest runs nothing");
    vm.resume().await.unwrap();
    assert!(settles_to(false), "a resumed guest runs again");
    vm.stop().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the exec ends with its VM")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    assert!(
        processes_mentioning(marker).is_empty(),
        "the command outlived its VM"
    );
    assert_nothing_left(&dir, id);
}

#[tokio::test]
async fn every_injected_failure_unwinds_completely() {
    let backend = setup();
    for (n, (failure, expected)) in [
        ("api:PUT /logger", "injected failure of PUT /logger"),
        (
            "api:PUT /boot-source",
            "injected failure of PUT /boot-source",
        ),
        (
            "api:PUT /drives/rootfs",
            "injected failure of PUT /drives/rootfs",
        ),
        (
            "api:PUT /machine-config",
            "injected failure of PUT /machine-config",
        ),
        ("api:PUT /vsock", "injected failure of PUT /vsock"),
        ("api:PUT /actions", "injected failure of PUT /actions"),
        ("crash-on-start", "firecracker exited (status 1)"),
        ("slow-start:5000", "did not come up within"),
    ]
    .iter()
    .enumerate()
    {
        let root = tempfile::Builder::new()
            .prefix("fcf")
            .tempdir_in("/tmp")
            .unwrap();
        let id = format!("sb_f0000000000{n}");
        let dir = sandbox_dir(root.path(), &id);
        std::env::set_var("FAKE_FC_FAIL", failure);
        let mut spec = boot_spec(&dir, &id);
        spec.boot_timeout = Duration::from_secs(1);
        let result = backend.start(&spec).await;
        std::env::remove_var("FAKE_FC_FAIL");
        let err = result
            .err()
            .unwrap_or_else(|| panic!("{failure}: start succeeded"));
        let message = err.to_string();
        assert!(message.contains(expected), "{failure}: {message}");
        if failure.starts_with("api:") {
            assert!(
                matches!(err, VmmError::Api { .. }),
                "{failure}: {err:?} is not an API error"
            );
        }
        assert_nothing_left(&dir, &id);
    }

    // A crash mid-boot, after InstanceStart was answered: the agent channel
    // reports the VMM's death and stop still cleans up.
    let root = tempfile::Builder::new()
        .prefix("fcf")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = sandbox_dir(root.path(), "sb_f00000000008");
    std::env::set_var("FAKE_FC_FAIL", "crash-after-start");
    let vm = backend.start(&boot_spec(&dir, "sb_f00000000008")).await;
    std::env::remove_var("FAKE_FC_FAIL");
    let vm = vm.expect("InstanceStart is answered before the crash");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match vm.connect_agent().await {
            Err(VmmError::AgentConnect(_)) | Ok(_) => {
                assert!(Instant::now() < deadline, "the crash was never reported");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(other) => break other,
        }
    };
    assert!(err.to_string().contains("exited (status 1)"), "{err}");
    vm.stop().await.unwrap();
    assert_nothing_left(&dir, "sb_f00000000008");

    // A handshake that never answers: the agent channel times out, stop cleans up.
    let root = tempfile::Builder::new()
        .prefix("fcf")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = sandbox_dir(root.path(), "sb_f00000000009");
    std::env::set_var("FAKE_FC_FAIL", "no-vsock-ack");
    let mut boot = boot_spec(&dir, "sb_f00000000009");
    boot.boot_timeout = Duration::from_secs(2);
    let vm = backend.start(&boot).await;
    std::env::remove_var("FAKE_FC_FAIL");
    let vm = vm.expect("the VMM itself starts");
    let err = vm.connect_agent().await.err().expect("no acknowledgement");
    assert!(err.to_string().contains("agent"), "{err}");
    vm.stop().await.unwrap();
    assert_nothing_left(&dir, "sb_f00000000009");
}

#[tokio::test]
async fn a_corrupted_or_missing_snapshot_is_refused_and_unwinds() {
    let backend = setup();
    let root = tempfile::Builder::new()
        .prefix("fcs")
        .tempdir_in("/tmp")
        .unwrap();
    let snapshot = SnapshotFiles {
        dir: root.path().join("snap"),
    };
    std::fs::create_dir(&snapshot.dir).unwrap();
    for (n, (state, expected)) in [
        (None, "No such file"),
        (Some("{\"not\": \"a snapshot\"}"), "corrupted"),
        (Some("\u{0}\u{1}garbage"), "corrupted"),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = std::fs::remove_file(snapshot.dir.join("vm.snap"));
        if let Some(state) = state {
            std::fs::write(snapshot.dir.join("vm.snap"), state).unwrap();
            std::fs::write(snapshot.dir.join("vm.mem"), [0u8; 4096]).unwrap();
        }
        let id = format!("sb_c0000000000{n}");
        let dir = sandbox_dir(root.path(), &id);
        let err = backend
            .restore(&boot_spec(&dir, &id), &snapshot)
            .await
            .err()
            .expect("a bad snapshot is refused");
        assert!(
            matches!(&err, VmmError::Api { request, message }
                if request == "PUT /snapshot/load" && message.contains(expected)),
            "{err:?}"
        );
        assert_nothing_left(&dir, &id);
    }
}

#[test]
fn the_fake_refuses_instance_ids_firecracker_refuses() {
    let root = tempfile::tempdir().unwrap();
    let output = Command::new(fake_bin())
        .args(["--api-sock", "fc.sock", "--id", "sb_a1b2c3d4e5f6"])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("InvalidChar('_', 2)"), "{stderr}");
    assert!(!root.path().join("fc.sock").exists());
}

#[tokio::test]
async fn the_fake_rejects_what_firecracker_rejects() {
    let root = tempfile::Builder::new()
        .prefix("fcr")
        .tempdir_in("/tmp")
        .unwrap();
    let mut fake = Command::new(fake_bin())
        .args(["--api-sock", "fc.sock", "--id", "strict"])
        .current_dir(root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let api = emberd::vmm::firecracker::FirecrackerApi::new(&root.path().join("fc.sock"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !root.path().join("fc.sock").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    use hyper::Method;
    use serde_json::json;
    for (method, path, body, expected) in [
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "bogus": 1}),
            "unknown field",
        ),
        (
            Method::PUT,
            "/boot-source",
            json!({"boot_args": "x"}),
            "kernel_image_path",
        ),
        (
            Method::PUT,
            "/actions",
            json!({"action_type": "InstanceStart"}),
            "kernel",
        ),
        (
            Method::PATCH,
            "/vm",
            json!({"state": "Paused"}),
            "before starting",
        ),
        (
            Method::PUT,
            "/drives/a",
            json!({"drive_id": "b", "is_root_device": false, "path_on_host": "/etc/hostname"}),
            "does not match",
        ),
        (Method::GET, "/nowhere", Value::Null, "Invalid request URI"),
    ] {
        let body = (!body.is_null()).then_some(body);
        let err = api
            .call(method.clone(), path, body)
            .await
            .err()
            .unwrap_or_else(|| panic!("{method} {path} accepted"));
        assert!(err.to_string().contains(expected), "{method} {path}: {err}");
    }
    let info = api.call(Method::GET, "/", None).await.unwrap();
    assert_eq!(info["state"], "Not started");

    // State rules around InstanceStart.
    let file = "/etc/hostname";
    let ok = [
        (
            Method::PUT,
            "/boot-source",
            json!({"kernel_image_path": file, "boot_args": "console=ttyS0"}),
        ),
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": 128}),
        ),
        (
            Method::PUT,
            "/vsock",
            json!({"guest_cid": 3, "uds_path": "v.sock"}),
        ),
    ];
    for (method, path, body) in ok {
        api.call(method, path, Some(body)).await.unwrap();
    }
    let load = json!({"snapshot_path": "/nonexistent", "mem_file_path": "/nonexistent"});
    let err = api
        .call(Method::PUT, "/snapshot/load", Some(load))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after configuring"), "{err}");
    api.call(
        Method::PUT,
        "/actions",
        Some(json!({"action_type": "InstanceStart"})),
    )
    .await
    .unwrap();
    assert_eq!(
        api.call(Method::GET, "/", None).await.unwrap()["state"],
        "Running"
    );
    for (method, path, body, expected) in [
        (
            Method::PUT,
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 128}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/boot-source",
            json!({"kernel_image_path": file}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/actions",
            json!({"action_type": "InstanceStart"}),
            "not supported after starting",
        ),
        (
            Method::PUT,
            "/snapshot/create",
            json!({"snapshot_path": "s", "mem_file_path": "m"}),
            "must be paused",
        ),
        (
            Method::PATCH,
            "/vm",
            json!({"state": "Frozen"}),
            "unknown variant",
        ),
    ] {
        let err = api
            .call(method.clone(), path, Some(body))
            .await
            .err()
            .unwrap_or_else(|| panic!("{method} {path} accepted after start"));
        assert!(err.to_string().contains(expected), "{method} {path}: {err}");
    }
    let _ = fake.kill();
    let _ = fake.wait();
}

/// `emberd serve --backend firecracker` on the fake, on a free port.
struct Daemon {
    child: std::process::Child,
    base: String,
    work_dir: PathBuf,
    http: reqwest::Client,
}

impl Daemon {
    fn start(root: &Path, data_dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Daemon {
        let work_dir = root.join("w");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(workspace_bin("emberd"));
        command
            .arg("serve")
            .args(["--addr", &addr, "--backend", "firecracker"])
            .args(args)
            .arg("--firecracker-bin")
            .arg(fake_bin())
            .arg("--work-dir")
            .arg(&work_dir)
            .arg("--data-dir")
            .arg(data_dir)
            .env("FAKE_FC_AGENT_BIN", workspace_bin("emberd-init"))
            .env_remove("FAKE_FC_FAIL")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "daemon exited");
            assert!(Instant::now() < deadline, "daemon did not serve");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            base: format!("http://{addr}"),
            work_dir,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn delete(&self, path: &str) -> u16 {
        self.http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Sandbox directories in the work dir.
    fn sandbox_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.work_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("sb_"))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// A data dir of its own (so that template snapshots stay out of the real
/// one) sharing the built images.
fn private_data_dir(root: &Path) -> PathBuf {
    let dir = root.join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(data_dir().join("manifest.json"), dir.join("manifest.json")).unwrap();
    std::os::unix::fs::symlink(data_dir().join("blobs"), dir.join("blobs")).unwrap();
    dir
}

#[tokio::test]
async fn the_daemon_runs_sandboxes_on_the_firecracker_path() {
    let root = tempfile::Builder::new()
        .prefix("fcd")
        .tempdir_in("/tmp")
        .unwrap();
    let daemon = Daemon::start(
        root.path(),
        &data_dir(),
        &["--pool-size", "0", "--snapshots", "false"],
        &[],
    );
    let info = daemon.get("/info").await;
    assert_eq!(info["backend"], "firecracker");
    let (status, created) = daemon
        .post("/sandboxes", r#"{"language_pack":"shell"}"#)
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, out) = daemon
        .post(
            &format!("/sandboxes/{id}/exec"),
            r#"{"code":"echo from-firecracker; exit 4"}"#,
        )
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["stdout"], "from-firecracker\n");
    assert_eq!(out["exit_code"], 4);
    assert_eq!(daemon.delete(&format!("/sandboxes/{id}")).await, 204);
    assert!(!daemon.work_dir.join(&id).exists());
    assert_nothing_left(&daemon.work_dir.join(&id), &id);
}

#[tokio::test]
async fn the_daemon_restores_sandboxes_from_a_firecracker_snapshot() {
    let root = tempfile::Builder::new()
        .prefix("fct")
        .tempdir_in("/tmp")
        .unwrap();
    let data = private_data_dir(root.path());
    let record = root.path().join("calls.jsonl");
    let daemon = Daemon::start(
        root.path(),
        &data,
        &["--pool-size", "0", "--snapshots", "true", "--skip-warm"],
        &[("FAKE_FC_RECORD", &record)],
    );
    // The first create cold-boots and asks for the pack's template; later
    // ones restore from it once it is there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let restored = loop {
        assert!(Instant::now() < deadline, "no create was ever restored");
        let (status, created) = daemon
            .post("/sandboxes", r#"{"language_pack":"shell"}"#)
            .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let info = daemon.get(&format!("/sandboxes/{id}")).await;
        let (status, out) = daemon
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
        assert_eq!(daemon.delete(&format!("/sandboxes/{id}")).await, 204);
        assert_nothing_left(&daemon.work_dir.join(&id), &id);
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
        of(template)[6..],
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

#[tokio::test]
async fn a_failed_firecracker_boot_is_a_500_and_leaves_nothing() {
    let root = tempfile::Builder::new()
        .prefix("fce")
        .tempdir_in("/tmp")
        .unwrap();
    for (n, (failure, expected)) in [
        ("api:PUT /vsock", "rejected PUT /vsock: injected failure"),
        ("crash-after-start", "firecracker exited (status 1)"),
        ("no-vsock-ack", "did not answer within 3s"),
    ]
    .iter()
    .enumerate()
    {
        let run = root.path().join(n.to_string());
        std::fs::create_dir(&run).unwrap();
        let daemon = Daemon::start(
            &run,
            &data_dir(),
            &[
                "--pool-size",
                "0",
                "--snapshots",
                "false",
                "--boot-timeout",
                "3s",
            ],
            &[("FAKE_FC_FAIL", Path::new(failure))],
        );
        let (status, body) = daemon
            .post("/sandboxes", r#"{"language_pack":"shell"}"#)
            .await;
        assert_eq!(status, 500, "{failure}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{failure}: {body}");
        assert!(
            daemon.sandbox_dirs().is_empty(),
            "{failure}: {:?}",
            daemon.sandbox_dirs()
        );
        // Every VMM and guest names its sandbox dir on its command line.
        let marker = format!("{}/sb_", daemon.work_dir.display());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !processes_mentioning(&marker).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{failure}: a VM was left running"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(daemon);
    }
}
