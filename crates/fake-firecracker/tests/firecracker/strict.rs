//! The fake behaves as Firecracker v1.15.1 does where it is least kind,
//! one behaviour per test, and the backend copes with each.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emberd::vmm::{SnapshotFiles, VmBackend, VmmError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::{
    assert_nothing_left, backend, boot_spec, call_names, echo_when_ready, fake_bin, sandbox_dir,
    temp_root,
};

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_leftover_api_socket_is_address_in_use_and_sigterm_kills_by_signal() {
    let root = temp_root("fcsock");
    let spawn = || {
        Command::new(fake_bin())
            .args(["--api-sock", "fc.sock", "--id", "sock"])
            .current_dir(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    wait_for(&root.path().join("fc.sock"));
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    assert!(
        root.path().join("fc.sock").exists(),
        "the socket was removed on exit"
    );
    let second = spawn().wait_with_output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("Check that it is not already used"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_backend_boots_where_a_dead_firecracker_left_its_sockets() {
    let root = temp_root("fcleft");
    let id = "sb_e00000000001";
    let dir = sandbox_dir(root.path(), id);
    for socket in ["fc.sock", "v.sock"] {
        drop(std::os::unix::net::UnixListener::bind(dir.join(socket)).unwrap());
    }
    let vm = backend(None)
        .start(&boot_spec(&dir, id))
        .await
        .expect("boots");
    assert_eq!(echo_when_ready(vm.as_ref(), "fresh").await, "fresh\n");
    vm.stop().await.unwrap();
    assert_nothing_left(&dir, id);
}

/// Dials `v.sock` in `dir` and sends `line`; the answer line, or None when
/// the connection is closed without one.
async fn dial(dir: &Path, line: &str) -> Option<String> {
    let mut stream = UnixStream::connect(dir.join("v.sock")).await.unwrap();
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    loop {
        match stream.read_u8().await {
            Ok(b'\n') => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(byte) => answer.push(byte),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn an_early_connect_waits_for_the_guest_and_gives_up_after_two_seconds() {
    let root = temp_root("fcearly");
    for (n, (delay_ms, answered)) in [(700u64, true), (3500, false)].into_iter().enumerate() {
        let id = format!("sb_e0000000001{n}");
        let dir = sandbox_dir(root.path(), &id);
        let vm = backend(Some(&format!("slow-guest:{delay_ms}")))
            .start(&boot_spec(&dir, &id))
            .await
            .expect("InstanceStart is answered before the guest is up");
        let asked = Instant::now();
        let answer = dial(&dir, "CONNECT 1024\n").await;
        let waited = asked.elapsed();
        if answered {
            assert!(answer.is_some_and(|a| a.starts_with("OK ")), "closed early");
        } else {
            assert_eq!(answer, None);
            assert!(
                waited >= Duration::from_millis(1900),
                "gave up after {waited:?}"
            );
            assert!(waited < Duration::from_secs(3), "waited {waited:?}");
        }
        vm.stop().await.unwrap();
        assert_nothing_left(&dir, &id);
    }
}

#[tokio::test]
async fn connect_is_read_in_any_case_and_every_port_goes_to_the_guest() {
    let root = temp_root("fccase");
    let id = "sb_e00000000021";
    let dir = sandbox_dir(root.path(), id);
    let vm = backend(None).start(&boot_spec(&dir, id)).await.unwrap();
    echo_when_ready(vm.as_ref(), "up").await;
    let lower = dial(&dir, "connect 1024\n").await;
    assert!(lower.is_some_and(|a| a.starts_with("OK ")));
    // No listener on port 52 in the guest: reset at once, not after 2 s.
    let asked = Instant::now();
    assert_eq!(dial(&dir, "CONNECT 52\n").await, None);
    assert!(asked.elapsed() < Duration::from_secs(1));
    vm.stop().await.unwrap();
    assert_nothing_left(&dir, id);
}

#[tokio::test]
async fn ctrl_alt_del_ignored_by_the_guest_is_skipped_from_then_on() {
    let backend = backend(Some("no-i8042"));
    let root = temp_root("fccad");
    let mut stops = Vec::new();
    for id in ["sb_e00000000031", "sb_e00000000032"] {
        let dir = sandbox_dir(root.path(), id);
        let vm = backend.start(&boot_spec(&dir, id)).await.unwrap();
        echo_when_ready(vm.as_ref(), "up").await;
        let started = Instant::now();
        vm.stop().await.unwrap();
        stops.push(started.elapsed());
        let exit = vm.wait().await.unwrap();
        assert_eq!(exit.signal, Some(libc::SIGTERM), "{exit:?}");
        let sent = call_names(&dir).iter().any(|c| c == "PUT /actions")
            && crate::support::calls(&dir)
                .iter()
                .any(|(_, _, b)| b["action_type"] == "SendCtrlAltDel");
        assert_eq!(sent, id.ends_with('1'), "{id}: Ctrl-Alt-Del sent: {sent}");
        assert_nothing_left(&dir, id);
    }
    assert!(stops[0] >= Duration::from_secs(1), "{stops:?}");
    assert!(
        stops[1] < Duration::from_secs(1),
        "the second stop waited: {stops:?}"
    );
}

#[tokio::test]
async fn a_vm_needs_kvm_an_elf_kernel_and_a_short_command_line() {
    let root = temp_root("fckvm");
    let id = "sb_e00000000041";
    let dir = sandbox_dir(root.path(), id);
    let no_kvm = backend(None).with_vmm_env("FAKE_FC_KVM", "/nonexistent/kvm");
    let err = no_kvm.start(&boot_spec(&dir, id)).await.err().unwrap();
    assert!(err.to_string().contains("KVM"), "{err}");
    assert_nothing_left(&dir, id);

    let id = "sb_e00000000042";
    let dir = sandbox_dir(root.path(), id);
    let mut spec = boot_spec(&dir, id);
    spec.kernel_vmlinux = spec.kernel_bzimage.clone();
    let err = backend(None).start(&spec).await.err().unwrap();
    assert!(err.to_string().contains("invalid kernel image"), "{err}");
    assert_nothing_left(&dir, id);

    let id = "sb_e00000000043";
    let dir = sandbox_dir(root.path(), id);
    let mut spec = boot_spec(&dir, id);
    spec.extra_kernel_args.push("x".repeat(2048));
    let err = backend(None).start(&spec).await.err().unwrap();
    assert!(matches!(err, VmmError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("at most 2047"), "{err}");
    assert!(!call_names(&dir).contains(&"PUT /boot-source".to_owned()));
    assert_nothing_left(&dir, id);
}

/// A template: boot, pause, snapshot into `root/snap`.
async fn template(root: &Path) -> SnapshotFiles {
    let id = "sb_e00000000050";
    let dir = sandbox_dir(root, id);
    let spec = boot_spec(&dir, id);
    let vm = backend(None).start(&spec).await.unwrap();
    echo_when_ready(vm.as_ref(), "up").await;
    vm.pause().await.unwrap();
    let snapshot = SnapshotFiles {
        dir: root.join("snap"),
    };
    std::fs::create_dir(&snapshot.dir).unwrap();
    vm.snapshot(&snapshot).await.unwrap();
    vm.stop().await.unwrap();
    let memory = std::fs::metadata(snapshot.dir.join("vm.mem"))
        .unwrap()
        .len();
    assert_eq!(
        memory,
        u64::from(spec.memory_mib) << 20,
        "the memory file is the guest's memory"
    );
    snapshot
}

#[tokio::test]
async fn a_snapshot_is_checked_on_load_and_a_failed_load_ends_firecracker() {
    let root = temp_root("fcload");
    let snapshot = template(root.path()).await;
    let state = snapshot.dir.join("vm.snap");
    let good = std::fs::read(&state).unwrap();
    let mut flipped = good.clone();
    let at = good.iter().position(|b| *b == b'{').unwrap() + 2;
    flipped[at] ^= 1;
    for (n, (bytes, env, fault, expected)) in [
        (b"garbage".to_vec(), None, None, "snapshot format"),
        (flipped, None, None, "checksum"),
        (
            good.clone(),
            Some(("FAKE_FC_CPU", "another cpu")),
            None,
            "another CPU",
        ),
        (
            b"garbage".to_vec(),
            None,
            Some("exit-unanswered"),
            "snapshot format",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&state, bytes).unwrap();
        let id = format!("sb_e0000000006{n}");
        let dir = sandbox_dir(root.path(), &id);
        let mut backend = backend(fault);
        if let Some((key, value)) = env {
            backend = backend.with_vmm_env(key, value);
        }
        let err = backend
            .restore(&boot_spec(&dir, &id), &snapshot)
            .await
            .err()
            .expect("a bad snapshot is refused");
        let message = err.to_string();
        assert!(message.contains(expected), "{n}: {message}");
        if fault.is_some() {
            // No answer: the cause is read from Firecracker's log, named.
            assert!(
                message.contains("firecracker exited (status 1)"),
                "{message}"
            );
            assert!(message.contains("(from Firecracker's log"), "{message}");
        }
        let log = std::fs::read_to_string(dir.join("fc.log")).unwrap();
        assert!(log.contains(expected), "{n}: fc.log has {log:?}");
        // The process ended by itself (nothing left even before a stop).
        assert_nothing_left(&dir, &id);
    }
}

#[tokio::test]
async fn the_log_file_is_created_and_gets_firecrackers_errors() {
    let root = temp_root("fclog");
    let mut fake = Command::new(fake_bin())
        .args(["--api-sock", "fc.sock", "--id", "log"])
        .current_dir(root.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&root.path().join("fc.sock"));
    let api = emberd::vmm::firecracker::FirecrackerApi::new(&root.path().join("fc.sock"));
    let logger = serde_json::json!({ "log_path": "fc.log", "level": "Warning" });
    api.call(hyper::Method::PUT, "/logger", Some(logger))
        .await
        .unwrap();
    assert!(
        root.path().join("fc.log").is_file(),
        "the log file was not created"
    );
    let start = serde_json::json!({ "action_type": "InstanceStart" });
    let err = api
        .call(hyper::Method::PUT, "/actions", Some(start))
        .await
        .unwrap_err();
    let log = std::fs::read_to_string(root.path().join("fc.log")).unwrap();
    assert!(
        log.contains("ERROR") && log.contains("kernel configuration"),
        "{log} / {err}"
    );
    let _ = fake.kill();
    let _ = fake.wait();
}

#[tokio::test]
async fn snapshots_are_refused_below_1_15_1_and_restores_on_1_16_0() {
    let root = temp_root("fcver");
    for (release, expected) in [("1.14.2", "#5809"), ("1.16.0", "#5969")] {
        let wrapper = root.path().join(format!("firecracker-{release}"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nFAKE_FC_VERSION={release} exec {} \"$@\"\n",
                fake_bin().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let backend = emberd::vmm::firecracker::FirecrackerBackend::new(Some(wrapper)).unwrap();
        let caps = backend.capabilities();
        assert!(
            !caps.snapshot && !caps.restore && caps.pause_resume,
            "{release}"
        );
        let id = format!("sb_e000000{}", release.replace('.', "0"));
        let dir = sandbox_dir(root.path(), &id);
        let snapshot = SnapshotFiles { dir: dir.clone() };
        let err = backend
            .restore(&boot_spec(&dir, &id), &snapshot)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(expected), "{release}: {err}");
        assert!(call_names(&dir).is_empty(), "{release}: a VMM was started");
    }
}
