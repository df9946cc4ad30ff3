//! The built kernel, initramfs and python pack booted under QEMU (TCG on
//! hosts without hardware KVM): the agent answers `Hello` and runs code.
//! Fails, never skips, when the VM does not come up.

mod support;

use emberd_proto::warm::WarmLanguage;
use std::time::{Duration, Instant};

use emberd::guest::{AgentClient, RunSpec};
use emberd::image::Manifest;
use emberd::vmm::qemu::{AccelChoice, QemuBackend};
use emberd::vmm::{BootSpec, VmBackend};

#[tokio::test]
async fn python_pack_boots_and_answers() {
    let data_dir = support::data_dir();
    let manifest = Manifest::load(&data_dir).expect("images built (`make images`)");
    manifest.verify().expect("every image file present");
    let python = manifest.pack("python").unwrap();
    let backend = QemuBackend::new(None, AccelChoice::Auto).expect("QEMU installed");
    let root = tempfile::Builder::new()
        .prefix("emb")
        .tempdir_in("/tmp")
        .unwrap();
    let spec = BootSpec {
        sandbox_id: "sb_000000000001".into(),
        sandbox_dir: root.path().to_owned(),
        kernel_bzimage: manifest.kernel.bzimage.clone(),
        kernel_vmlinux: manifest.kernel.vmlinux.clone(),
        initramfs: manifest.initramfs.clone(),
        root_disk: python.squashfs.clone(),
        vcpus: 1,
        memory_mib: 256,
        extra_kernel_args: vec![],
        boot_timeout: Duration::from_secs(60),
    };

    let launched = Instant::now();
    let vm = backend.start(&spec).await.expect("QEMU starts");
    let stream = tokio::time::timeout(Duration::from_secs(60), vm.connect_agent())
        .await
        .unwrap_or_else(|_| panic!("no agent within 60 s; console:\n{}", console(&spec)))
        .expect("agent channel");
    let (agent, hello) =
        tokio::time::timeout(Duration::from_secs(60), AgentClient::handshake(stream))
            .await
            .unwrap_or_else(|_| panic!("no Hello within 60 s; console:\n{}", console(&spec)))
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
    assert_eq!(outcome.exit_code, 0);

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
        beyond_guest_ms.push((started.elapsed() - outcome.guest_duration).as_secs_f64() * 1000.0);
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

fn console(spec: &BootSpec) -> String {
    std::fs::read_to_string(spec.sandbox_dir.join("console.log")).unwrap_or_default()
}
