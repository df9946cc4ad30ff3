//! emberd's Firecracker backend on the fake: the exact API calls, the
//! hybrid-vsock agent channel, pause/resume, snapshot create and load, and
//! injected VMM failures that must unwind completely.

use std::time::{Duration, Instant};

use emberd::guest::{AgentClient, RunSpec};
use emberd::vmm::{SnapshotFiles, VmBackend, VmmError};
use emberd_harness::processes_mentioning;

use crate::support::{
    assert_nothing_left, backend, boot_spec, call_names, calls, echo, echo_when_ready, sandbox_dir,
    temp_root,
};

#[tokio::test]
async fn create_pause_snapshot_and_restore_make_the_documented_calls() {
    let backend = backend(None);
    let root = temp_root("fcb");
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
            "PUT /entropy",
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
    assert_eq!(
        recorded[5].2,
        serde_json::json!({}),
        "virtio-rng, no rate limit"
    );
    assert_eq!(recorded[6].2["action_type"], "InstanceStart");

    vm.pause().await.unwrap();
    let snapshot_dir = root.path().join("snap");
    std::fs::create_dir(&snapshot_dir).unwrap();
    let snapshot = SnapshotFiles { dir: snapshot_dir };
    vm.snapshot(&snapshot).await.unwrap();
    vm.resume().await.unwrap();
    assert_eq!(echo(vm.as_ref(), "after resume").await, "after resume\n");
    let names = call_names(&dir);
    assert_eq!(
        names[7..],
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
    let backend = backend(None);
    let root = temp_root("fcp");
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

/// Failures of the VMM while it is being set up: `start` fails with the
/// cause and leaves nothing running. (A guest that never answers is the
/// daemon's boot deadline, tested in `daemon.rs`.)
#[tokio::test]
async fn every_injected_start_failure_unwinds_completely() {
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
        let backend = backend(Some(failure));
        let root = temp_root("fcf");
        let id = format!("sb_f0000000000{n}");
        let dir = sandbox_dir(root.path(), &id);
        let mut spec = boot_spec(&dir, &id);
        spec.boot_timeout = Duration::from_secs(1);
        let err = backend
            .start(&spec)
            .await
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
}

/// A crash mid-boot, after InstanceStart was answered: the agent channel
/// reports the VMM's death and stop still cleans up.
#[tokio::test]
async fn a_crash_after_start_is_reported_by_the_agent_channel() {
    let backend = backend(Some("crash-after-start"));
    let root = temp_root("fcf");
    let id = "sb_f00000000008";
    let dir = sandbox_dir(root.path(), id);
    let vm = backend
        .start(&boot_spec(&dir, id))
        .await
        .expect("InstanceStart is answered before the crash");
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
    assert_nothing_left(&dir, id);
}

#[tokio::test]
async fn a_missing_snapshot_is_refused_and_unwinds() {
    let backend = backend(None);
    let root = temp_root("fcs");
    let snapshot = SnapshotFiles {
        dir: root.path().join("snap"),
    };
    std::fs::create_dir(&snapshot.dir).unwrap();
    let id = "sb_c00000000000";
    let dir = sandbox_dir(root.path(), id);
    let err = backend
        .restore(&boot_spec(&dir, id), &snapshot)
        .await
        .err()
        .expect("a missing snapshot is refused");
    assert!(err.to_string().contains("No such file"), "{err:?}");
    assert_nothing_left(&dir, id);
}
