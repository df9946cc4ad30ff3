//! What the Firecracker tests share: the binaries, boot specs, backends on
//! the fake (each with its own faults), the fake's record of API calls, and
//! the check that nothing is left running.

use emberd_proto::kernel_args::KernelArg;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberd::guest::{AgentClient, RunSpec};
use emberd::image::Manifest;
use emberd::vmm::firecracker::{instance_id, FirecrackerBackend};
use emberd::vmm::{BootSpec, Vm};
use emberd_harness::processes_mentioning;
use serde_json::Value;

pub fn fake_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-firecracker"))
}

/// A binary of the workspace built next to this test's target directory.
pub fn workspace_bin(name: &str) -> PathBuf {
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

pub fn data_dir() -> PathBuf {
    std::env::var_os("EMBERD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(emberd::config::default_data_dir)
}

/// A fresh directory under /tmp (sandbox dirs hold Unix sockets, whose
/// paths are capped).
pub fn temp_root(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

pub fn boot_spec(dir: &Path, id: &str) -> BootSpec {
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
        extra_kernel_args: vec![KernelArg::OverlaySize { mib: 256 }.to_string()],
        boot_timeout: Duration::from_secs(10),
        memory_file: None,
    }
}

/// A backend whose VMMs are the fake running the workspace's agent, told
/// to fail as `faults` says (`FAKE_FC_FAIL`).
pub fn backend(faults: Option<&str>) -> FirecrackerBackend {
    let backend = FirecrackerBackend::new(Some(fake_bin()))
        .expect("fake-firecracker passes the version check")
        .with_vmm_env("FAKE_FC_AGENT_BIN", workspace_bin("emberd-init"));
    match faults {
        Some(faults) => backend.with_vmm_env("FAKE_FC_FAIL", faults),
        None => backend,
    }
}

/// The API calls the fake recorded in sandbox dir `dir`: method, path, body.
pub fn calls(dir: &Path) -> Vec<(String, String, Value)> {
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

/// "PUT /logger", … for the calls recorded in `dir`.
pub fn call_names(dir: &Path) -> Vec<String> {
    calls(dir)
        .into_iter()
        .map(|(m, p, _)| format!("{m} {p}"))
        .collect()
}

/// No VMM (found by its `--id`) and no guest (found by its directory) is
/// left running.
pub fn assert_nothing_left(dir: &Path, id: &str) {
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
        .filter_map(|p| emberd_harness::Process::read(*p))
        .map(|p| p.command_line())
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
}

/// Creates sandbox dir `id` under `root`.
pub fn sandbox_dir(root: &Path, id: &str) -> PathBuf {
    let dir = root.join(id);
    std::fs::create_dir(&dir).unwrap();
    dir
}

/// Runs `echo <text>` in the guest over a fresh agent connection.
pub async fn echo(vm: &dyn Vm, text: &str) -> String {
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
pub async fn echo_when_ready(vm: &dyn Vm, text: &str) -> String {
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
