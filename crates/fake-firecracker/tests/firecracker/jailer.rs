//! Firecracker behind its jailer, on the fake jailer: the daemon jails
//! every VMM (uid/gid, chroot with the VM's files linked in, sockets
//! inside, new PID and network namespaces), snapshots and restores through
//! the jail, and leaves neither jail nor process after a delete; a guest
//! flooding its console costs the host at most the ring's bound.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use emberd::image::Manifest;
use emberd::vmm::console::CONSOLE_RING_BYTES;
use emberd::vmm::firecracker::{instance_id, JailerConfig};
use emberd::vmm::VmBackend;
use emberd_harness::{is_alive, Daemon};
use serde_json::Value;

use crate::support::{
    backend, boot_spec, data_dir, echo_when_ready, fake_bin, sandbox_dir, temp_root, workspace_bin,
};

/// The uid and gid the tests jail VMMs as (`nobody`).
const VMM_ID: u32 = 65534;

fn jailer_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jailer"))
}

/// A file the jailed fake (running as `nobody`) can append to.
fn shared_file(dir: &Path, name: &str) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, "").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    path
}

fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn net_ns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

/// `emberd serve` with Firecracker (the fake) behind the fake jailer, VMMs
/// as `nobody`, no pool.
fn jailed_daemon(data: &Path, work_dir: Option<&Path>) -> emberd_harness::DaemonBuilder {
    let builder = Daemon::builder(workspace_bin("emberd"))
        .backend("firecracker")
        .data_dir(data)
        .arg("--firecracker-bin")
        .arg(fake_bin())
        .arg("--jailer")
        .arg(jailer_bin())
        .args(["--pool-size", "0"])
        .env("EMBERD_VMM_USER", "nobody")
        .env("FAKE_FC_AGENT_BIN", workspace_bin("emberd-init"))
        .env_remove("FAKE_FC_FAIL");
    match work_dir {
        Some(dir) => builder.work_dir(dir),
        None => builder,
    }
}

#[tokio::test]
async fn the_daemon_jails_firecracker_and_leaves_nothing_after_delete() {
    let root = temp_root("fcj");
    let data = root.path().join("data");
    emberd_harness::share_images(&data_dir(), &data).unwrap();
    let jailer_record = shared_file(root.path(), "jailer.jsonl");
    let calls = shared_file(root.path(), "calls.jsonl");
    let daemon = jailed_daemon(&data, None)
        .args(["--snapshots", "true", "--skip-warm"])
        .env("FAKE_FC_RECORD", &calls)
        .env("FAKE_JAILER_RECORD", &jailer_record)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        daemon.log_text().contains("Firecracker runs in its jailer"),
        "{}",
        daemon.log_text()
    );
    let http = reqwest::Client::new();
    let base = std::fs::canonicalize(data.join("jail")).unwrap();
    let manifest = Manifest::load(&data).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut restored = false;
    let mut first = true;
    while !restored {
        assert!(Instant::now() < deadline, "no create was ever restored");
        let (status, created) = json(
            http.post(daemon.url("/sandboxes"))
                .body(r#"{"language_pack":"shell"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_owned();
        let fc_id = instance_id(&id);
        let (status, out) = json(
            http.post(daemon.url(&format!("/sandboxes/{id}/exec")))
                .body(r#"{"code":"echo jailed"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, out["stdout"].as_str()),
            (200, Some("jailed\n")),
            "{out}"
        );
        let (_, info) = json(
            http.get(daemon.url(&format!("/sandboxes/{id}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        restored = info["boot_path"] == "snapshot-restore";

        // The jailer's command line.
        let runs: Vec<Value> = std::fs::read_to_string(&jailer_record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let args: Vec<String> = runs
            .iter()
            .map(|r| serde_json::from_value::<Vec<String>>(r["args"].clone()).unwrap())
            .find(|a| a.contains(&fc_id))
            .expect("the jailer started this sandbox's VMM");
        let pairs: Vec<(&str, &str)> = args
            .windows(2)
            .map(|w| (w[0].as_str(), w[1].as_str()))
            .collect();
        let base_text = base.display().to_string();
        for expected in [
            ("--id", fc_id.as_str()),
            ("--uid", "65534"),
            ("--gid", "65534"),
            ("--chroot-base-dir", base_text.as_str()),
            ("--api-sock", "/fc.sock"),
        ] {
            assert!(pairs.contains(&expected), "{expected:?} not in {args:?}");
        }
        assert!(args.contains(&"--new-pid-ns".to_owned()), "{args:?}");
        assert!(
            pairs.contains(&("--exec-file", fake_bin().to_str().unwrap())),
            "{args:?}"
        );

        // The chroot: the VM's files linked in, the sockets inside.
        let jail_root = base.join("fake-firecracker").join(&fc_id).join("root");
        for socket in ["fc.sock", "v.sock"] {
            assert!(jail_root.join(socket).exists(), "{socket} not in the jail");
        }
        let pack = manifest.pack("shell").unwrap();
        assert!(same_file(
            &jail_root.join("rootfs.squashfs"),
            &pack.squashfs
        ));
        if restored {
            assert!(jail_root.join("vm.snap").is_file() && jail_root.join("vm.mem").is_file());
        } else {
            assert!(same_file(
                &jail_root.join("vmlinux"),
                &manifest.kernel.vmlinux
            ));
            assert!(same_file(&jail_root.join("initrd"), &manifest.initramfs));
        }

        // The VMM: the jailer's pid, as the VMM user, in a network
        // namespace of its own, recorded for crash recovery.
        let pid: u32 = std::fs::read_to_string(jail_root.join("fake-firecracker.pid"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(uid_of(pid), Some(VMM_ID));
        assert_ne!(net_ns(&pid.to_string()), net_ns("self"));
        let record = std::fs::read_to_string(daemon.work_dir().join(&id).join("vmm.pid")).unwrap();
        assert!(record.starts_with(&format!("{pid} ")), "{record}");
        if first {
            // The first VM was a cold boot; its console reached the ring.
            first = false;
        }

        let status = http
            .delete(daemon.url(&format!("/sandboxes/{id}")))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 204);
        assert!(!jail_root.parent().unwrap().exists(), "the jail is left");
        let gone = Instant::now() + Duration::from_secs(5);
        while is_alive(pid) {
            assert!(
                Instant::now() < gone,
                "the jailed VMM {pid} outlived its sandbox"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Template snapshots were taken out of the jail: owned by the daemon,
    // not writable by the VMM user.
    let snaps: Vec<PathBuf> = walk(&data.join("snapshots"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n == "vm.mem" || n == "vm.snap")
        })
        .collect();
    assert!(!snaps.is_empty());
    for snap in snaps {
        let meta = std::fs::metadata(&snap).unwrap();
        assert_eq!(
            (meta.uid(), meta.mode() & 0o777),
            (0, 0o640),
            "{}",
            snap.display()
        );
    }
    let jails: Vec<PathBuf> = walk(&base);
    assert!(jails.is_empty(), "{jails:?}");
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
async fn a_console_flood_stays_within_the_ring_and_writes_no_file() {
    let root = temp_root("fcf");
    let base = root.path().join("jail");
    let backend = backend(Some("console-flood:8388608"))
        .with_jailer(JailerConfig {
            binary: jailer_bin(),
            uid: VMM_ID,
            gid: VMM_ID,
            chroot_base: base.clone(),
            cgroups: false,
        })
        .unwrap();
    let id = "sb_f00000000001";
    let dir = sandbox_dir(root.path(), id);
    let vm = backend
        .start(&boot_spec(&dir, id))
        .await
        .expect("boots jailed");
    assert_eq!(echo_when_ready(vm.as_ref(), "flooded").await, "flooded\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&vm.console_tail(64)).ends_with("console flood done\n") {
        assert!(Instant::now() < deadline, "the flood never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = vm.console_tail(usize::MAX);
    assert!(
        held.len() <= CONSOLE_RING_BYTES,
        "{} bytes held",
        held.len()
    );
    assert!(
        held.len() > CONSOLE_RING_BYTES / 2,
        "the ring holds the newest output"
    );
    // 8 MiB went to the console; no file anywhere took it.
    for file in walk(root.path()) {
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let linked = file.file_name().is_some_and(|n| {
            n == "rootfs.squashfs" || n == "vmlinux" || n == "initrd" || n == "fake-firecracker"
        });
        assert!(
            linked || size < 64 * 1024,
            "{} has {size} bytes",
            file.display()
        );
    }
    let pid = vm.pid().unwrap();
    vm.stop().await.unwrap();
    assert!(!is_alive(pid));
    assert!(walk(&base).is_empty(), "{:?}", walk(&base));
}

#[test]
fn the_fake_jailer_refuses_what_the_jailer_refuses() {
    let base = temp_root("fcr");
    let base_text = base.path().display().to_string();
    let fc = fake_bin().display().to_string();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(jailer_bin())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let with = |id: &str, uid: &str, base: &str, extra: &[&str]| {
        let mut args = vec![
            "--id",
            id,
            "--exec-file",
            &fc,
            "--uid",
            uid,
            "--gid",
            "65534",
            "--chroot-base-dir",
            base,
        ];
        args.extend_from_slice(extra);
        run(&args).to_owned()
    };
    assert!(with("sb_1", "65534", &base_text, &[]).contains("Invalid instance ID"));
    assert!(with(&"a".repeat(65), "65534", &base_text, &[]).contains("Invalid instance ID"));
    assert!(with("sb-1", "nobody", &base_text, &[]).contains("Invalid uid"));
    assert!(with("sb-1", "65534", "relative/base", &[]).contains("not an absolute path"));
    assert!(with("sb-1", "65534", &base_text, &["--bogus"]).contains("wasn't expected"));
    assert!(with("sb-1", "65534", &base_text, &["--cgroup", "cpu.max"]).contains("Invalid format"));
    assert!(with("sb-1", "65534", &base_text, &["--cgroup", "cpumax=1"]).contains("invalid file"));
    assert!(with(
        "sb-1",
        "65534",
        &base_text,
        &["--", "--config-file", "/vm.json"]
    )
    .contains("not in the jail"));
    assert!(with(
        "sb-1",
        "65534",
        &base_text,
        &["--", "--api-sock", "/../../x.sock"]
    )
    .contains("leaves the jail"));
    assert!(run(&[
        "--id",
        "sb-1",
        "--exec-file",
        "/bin/true",
        "--uid",
        "1",
        "--gid",
        "1"
    ])
    .contains("must contain \"firecracker\""));
    assert!(run(&["--id", "sb-1", "--uid", "1", "--gid", "1"]).contains("'exec-file' required"));
}

/// The jailer clears the parent-death signal, so a jailed VMM outlives a
/// daemon killed outright; the next daemon on that work dir kills it
/// (from the sandbox's `vmm.pid`) and, at its first jailed start, removes
/// the jail it left.
#[tokio::test]
async fn a_jailed_vmm_left_by_a_killed_daemon_is_cleared_by_the_next() {
    let root = temp_root("fck");
    let data = root.path().join("data");
    emberd_harness::share_images(&data_dir(), &data).unwrap();
    let work = root.path().join("w");
    let http = reqwest::Client::new();
    let create = |daemon: &Daemon| {
        let request = http
            .post(daemon.url("/sandboxes"))
            .body(r#"{"language_pack":"shell"}"#)
            .send();
        async move {
            let (status, created) = json(request.await.unwrap()).await;
            assert_eq!(status, 201, "{created}");
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let first = jailed_daemon(&data, Some(&work))
        .args(["--snapshots", "false"])
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let id = create(&first).await;
    let record = std::fs::read_to_string(work.join(&id).join("vmm.pid")).unwrap();
    let pid: u32 = record.split_whitespace().next().unwrap().parse().unwrap();
    let jail = std::fs::canonicalize(data.join("jail"))
        .unwrap()
        .join("fake-firecracker")
        .join(instance_id(&id));
    // SAFETY: kill(2) with the daemon's pid and a signal number.
    assert_eq!(unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(first.pid()) {
        assert!(Instant::now() < deadline, "the daemon survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_alive(pid), "the jailed VMM died with its daemon");

    let second = jailed_daemon(&data, Some(&work))
        .args(["--snapshots", "false"])
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the jailed VMM {pid} was left running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(jail.exists(), "the jail stays until a jailed start");
    let id2 = create(&second).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while jail.exists() {
        assert!(Instant::now() < deadline, "the dead VMM's jail was left");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = http
        .delete(second.url(&format!("/sandboxes/{id2}")))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
}
