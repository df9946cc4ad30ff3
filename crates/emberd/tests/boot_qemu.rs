//! The built kernel, initramfs and python pack booted under QEMU (TCG on
//! hosts without hardware KVM): the agent answers `Hello` and runs code;
//! QEMU runs confined (seccomp, the VMM user when the daemon is root) and
//! the guest console lands in a bounded ring, not a file. Fails, never
//! skips, when the VM does not come up.

mod support;

use emberd_proto::warm::WarmLanguage;
use std::path::Path;
use std::time::{Duration, Instant};

use emberd::guest::{AgentClient, RunSpec};
use emberd::image::Manifest;
use emberd::vmm::qemu::{AccelChoice, QemuBackend};
use emberd::vmm::vmm_user::{VmmUser, DEFAULT_VMM_USER};
use emberd::vmm::{BootSpec, Vm, VmBackend};

/// QEMU as `emberd serve` makes it: the VMM user when root.
fn backend() -> QemuBackend {
    let user = VmmUser::for_daemon(nix::unistd::geteuid(), DEFAULT_VMM_USER)
        .unwrap_or_else(|e| panic!("{e}"));
    QemuBackend::new(None, AccelChoice::Auto)
        .expect("QEMU installed")
        .with_vmm_user(user)
}

fn python_spec(manifest: &Manifest, dir: &Path) -> BootSpec {
    let python = manifest.pack("python").unwrap();
    BootSpec {
        sandbox_id: "sb_000000000001".into(),
        sandbox_dir: dir.to_owned(),
        kernel_bzimage: manifest.kernel.bzimage.clone(),
        kernel_vmlinux: manifest.kernel.vmlinux.clone(),
        initramfs: manifest.initramfs.clone(),
        root_disk: python.squashfs.clone(),
        vcpus: 1,
        memory_mib: 256,
        extra_kernel_args: vec![],
        boot_timeout: Duration::from_secs(60),
        memory_file: None,
    }
}

fn manifest() -> Manifest {
    let manifest = Manifest::load(&support::data_dir()).expect("images built (`make images`)");
    manifest.verify().expect("every image file present");
    manifest
}

#[tokio::test]
async fn python_pack_boots_and_answers() {
    let manifest = manifest();
    let python = manifest.pack("python").unwrap();
    let backend = backend();
    let root = tempfile::Builder::new()
        .prefix("emb")
        .tempdir_in("/tmp")
        .unwrap();
    let spec = python_spec(&manifest, root.path());

    let launched = Instant::now();
    let vm = backend.start(&spec).await.expect("QEMU starts");
    let stream = tokio::time::timeout(Duration::from_secs(60), vm.connect_agent())
        .await
        .unwrap_or_else(|_| panic!("no agent within 60 s; console:\n{}", console(&*vm)))
        .expect("agent channel");
    let (agent, hello) =
        tokio::time::timeout(Duration::from_secs(60), AgentClient::handshake(stream))
            .await
            .unwrap_or_else(|_| panic!("no Hello within 60 s; console:\n{}", console(&*vm)))
            .expect("Hello");
    let boot_to_hello = launched.elapsed();
    assert_eq!(hello.generation, emberd_proto::PROTOCOL_GENERATION);
    eprintln!(
        "boot to Hello: {} ms ({})",
        boot_to_hello.as_millis(),
        backend.version()
    );

    let outcome = agent
        .run(RunSpec {
            interpreter: python.interpreter.clone(),
            code: b"print(6*7)".to_vec(),
            file_suffix: python.file_suffix.clone(),
            timeout: Some(Duration::from_secs(30)),
            output_limit_bytes: 1024,
            ..RunSpec::default()
        })
        .await
        .expect("exec");
    assert_eq!(outcome.stdout, b"42\n", "{outcome:?}");
    assert_eq!(outcome.exit.exit_code, 0);

    // The guest runs the Debian kernel the manifest names.
    let uname = agent
        .run(RunSpec {
            interpreter: vec!["/bin/sh".into()],
            code: b"uname -r".to_vec(),
            file_suffix: ".sh".into(),
            timeout: Some(Duration::from_secs(30)),
            output_limit_bytes: 1024,
            ..RunSpec::default()
        })
        .await
        .expect("exec");
    assert_eq!(
        String::from_utf8_lossy(&uname.stdout).trim(),
        manifest.kernel.release
    );

    // What the agent channel costs: a unary Health round trip, and an exec's
    // host-observed time beyond the guest's own measure (warm Python).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agent
        .warm_interpreters()
        .await
        .is_some_and(|warm| warm.contains(&WarmLanguage::Python))
    {
        assert!(
            Instant::now() < deadline,
            "the guest's Python fork server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut health_ms = Vec::new();
    let mut beyond_guest_ms = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert!(agent.healthy().await);
        health_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = Instant::now();
        let outcome = agent
            .run(RunSpec {
                interpreter: python.interpreter.clone(),
                code: b"print(6*7)".to_vec(),
                file_suffix: python.file_suffix.clone(),
                timeout: Some(Duration::from_secs(30)),
                output_limit_bytes: 1024,
                warm_language: Some(WarmLanguage::Python),
                ..RunSpec::default()
            })
            .await
            .expect("warm exec");
        assert_eq!(outcome.stdout, b"42\n");
        assert!(outcome.warm, "the exec was not forked from the warm Python");
        beyond_guest_ms
            .push((started.elapsed() - outcome.exit.guest_duration).as_secs_f64() * 1000.0);
    }
    eprintln!(
        "agent channel: Health round trip median {:.2} ms; exec host time beyond guest time median {:.2} ms",
        median(&mut health_ms),
        median(&mut beyond_guest_ms)
    );

    // QEMU ends on SIGTERM with status 0; a SIGKILL after the grace would
    // show as signal 9.
    vm.stop().await.unwrap();
    let exit = vm.wait().await.unwrap();
    assert_eq!((exit.code, exit.signal), (Some(0), None), "{exit:?}");
    let qemu_log = std::fs::read_to_string(spec.sandbox_dir.join("qemu.log")).unwrap_or_default();
    assert!(
        qemu_log.contains("terminating on signal 15"),
        "QEMU's log: {qemu_log}"
    );
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[samples.len() / 2]
}

fn console(vm: &dyn Vm) -> String {
    String::from_utf8_lossy(&vm.console_tail(64 * 1024)).into_owned()
}

#[tokio::test]
async fn the_console_lands_in_the_ring_and_in_no_file() {
    let manifest = manifest();
    let root = tempfile::Builder::new()
        .prefix("emb")
        .tempdir_in("/tmp")
        .unwrap();
    let spec = python_spec(&manifest, root.path());
    let vm = backend().start(&spec).await.expect("QEMU starts");
    let stream = tokio::time::timeout(Duration::from_secs(60), vm.connect_agent())
        .await
        .expect("agent within 60 s")
        .expect("agent channel");
    let (_agent, _hello) =
        tokio::time::timeout(Duration::from_secs(60), AgentClient::handshake(stream))
            .await
            .expect("Hello within 60 s")
            .expect("Hello");
    // The agent says it is ready on the console just before it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !console(&*vm).contains("emberd-init: ready") {
        assert!(
            Instant::now() < deadline,
            "the ring lacks the boot output: {:?}",
            console(&*vm)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(vm.console_tail(5).len() <= 5);
    let files: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !files.iter().any(|f| f == "console.log"),
        "a console file in the sandbox dir: {files:?}"
    );
    let qemu_log = std::fs::read_to_string(root.path().join("qemu.log")).unwrap();
    assert!(
        !qemu_log.contains("emberd-init"),
        "guest output reached qemu.log: {qemu_log}"
    );
    vm.stop().await.unwrap();
}

/// A field of `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("VMM running");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

#[tokio::test]
async fn the_daemons_vmm_runs_unprivileged_under_seccomp() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let pid = api.vmm_pid(&id).await;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(args[0].contains("qemu-system"), "{args:?}");

    // Filter mode 2: a seccomp filter is installed.
    assert_eq!(status_field(pid, "Seccomp"), "2");
    let uids: Vec<u32> = status_field(pid, "Uid")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    let gids: Vec<u32> = status_field(pid, "Gid")
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    if nix::unistd::geteuid().is_root() {
        let user = VmmUser::lookup(DEFAULT_VMM_USER)
            .unwrap()
            .expect("the VMM user exists (`make setup`)");
        assert_ne!(user.uid, 0);
        // Real, effective, saved and file-system ids: no way back to root.
        assert_eq!(uids, [user.uid; 4], "{args:?}");
        assert_eq!(gids, [user.gid; 4], "{args:?}");
        assert!(args.iter().any(|a| a == "-runas"), "{args:?}");
    } else {
        let own = nix::unistd::geteuid().as_raw();
        assert_eq!(uids, [own; 4]);
        assert!(!args.iter().any(|a| a == "-runas"), "{args:?}");
    }

    // The VMM's cgroup: its own group where the host delegates
    // controllers, the daemon's otherwise.
    let vmm_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = vmm_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("")
        .to_owned();
    if daemon.log_text().contains("VMMs get cgroup v2") {
        assert!(v2.ends_with(&format!("/emberd/{id}")), "{vmm_cgroup}");
    } else {
        assert!(daemon.log_text().contains("VMMs run without cgroup limits"));
        assert!(!v2.contains("/emberd/"), "{vmm_cgroup}");
    }
    api.delete(&id).await;
}

#[test]
fn a_root_daemon_without_its_vmm_user_refuses_to_start() {
    let started = support::builder(&["--vmm-user", "no-such-user-emberd"]).start();
    if nix::unistd::geteuid().is_root() {
        let Err(err) = started else {
            panic!("a root daemon started without its VMM user");
        };
        let text = err.to_string();
        assert!(
            text.contains("\"no-such-user-emberd\" does not exist"),
            "{text}"
        );
        assert!(text.contains("make setup"), "{text}");
    } else {
        // An unprivileged daemon passes no -runas, so it needs no VMM user.
        started.expect("an unprivileged daemon serves without a VMM user");
    }
}
