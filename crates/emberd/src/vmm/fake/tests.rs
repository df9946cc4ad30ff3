//! The fake backend driven through the daemon's own guest client.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::guest::{AgentClient, GuestError, RunSpec};

fn spec(dir: &Path, boot_timeout: Duration) -> BootSpec {
    let root_disk = dir.join("pack.squashfs");
    std::fs::write(&root_disk, b"fake pack").unwrap();
    BootSpec {
        sandbox_id: "sb_0123456789ab".into(),
        sandbox_dir: dir.to_owned(),
        kernel_bzimage: dir.join("bzImage"),
        kernel_vmlinux: dir.join("vmlinux"),
        initramfs: dir.join("initramfs"),
        root_disk,
        vcpus: 1,
        memory_mib: 256,
        extra_kernel_args: Vec::new(),
        boot_timeout,
        memory_file: None,
    }
}

fn run(code: &str) -> RunSpec {
    RunSpec {
        interpreter: vec!["python3".into()],
        code: code.as_bytes().to_vec(),
        file_suffix: ".py".into(),
        output_limit_bytes: 1024,
        ..RunSpec::default()
    }
}

async fn boot(backend: &FakeBackend, dir: &Path) -> (Box<dyn Vm>, AgentClient) {
    let vm = backend
        .start(&spec(dir, Duration::from_secs(5)))
        .await
        .unwrap();
    let (agent, hello) = AgentClient::handshake(vm.connect_agent().await.unwrap())
        .await
        .unwrap();
    assert_eq!(hello.generation, emberd_proto::PROTOCOL_GENERATION);
    (vm, agent)
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn scripts_produce_the_output_and_status_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let (vm, agent) = boot(&backend, dir.path()).await;

    let out = agent
        .run(run("echo:hi\nstderr:oops\nexit:3"))
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"hi\n"[..], &b"oops\n"[..])
    );
    assert_eq!(out.exit.exit_code, 3);

    let out = agent.run(run("bytes:ff41")).await.unwrap();
    assert_eq!(out.stdout, vec![0xff, b'A']);
    assert_eq!(out.exit.exit_code, 0);

    let mut with_stdin = run("cat");
    with_stdin.stdin = Some(b"abc".to_vec());
    assert_eq!(agent.run(with_stdin).await.unwrap().stdout, b"abc");

    let out = agent.run(run("flood:5000")).await.unwrap();
    assert_eq!(out.stdout.len(), 1024);
    assert!(out.exit.stdout_truncated);

    let out = agent.run(run("signal:15")).await.unwrap();
    assert_eq!((out.exit.exit_code, out.exit.signal), (143, Some(15)));

    let out = agent.run(run("print(6*7)")).await.unwrap();
    assert_eq!(out.exit.exit_code, 127);

    vm.stop().await.unwrap();
    assert_eq!(backend.live_vms(), 0);
}

#[tokio::test]
async fn a_timeout_kills_and_keeps_the_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let (vm, agent) = boot(&backend, dir.path()).await;
    let mut spec = run("echo:partial\nblock");
    spec.timeout = Some(Duration::from_millis(50));
    let out = agent.run(spec).await.unwrap();
    assert!(out.exit.timed_out);
    assert_eq!((out.exit.exit_code, out.exit.signal), (137, Some(9)));
    assert_eq!(out.stdout, b"partial\n");
    wait_until("the exec is gone", || backend.running_execs() == 0).await;
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn blocked_execs_run_on_when_released_and_die_with_the_host_stream() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let (vm, agent) = boot(&backend, dir.path()).await;
    let running = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(run("block\necho:after")).await }
    });
    wait_until("the exec blocks", || backend.blocked_execs() == 1).await;
    backend.release_blocked();
    let out = running.await.unwrap().unwrap();
    assert_eq!(out.stdout, b"after\n");
    assert_eq!(backend.blocked_execs(), 0);

    // Dropping the call drops the stream, and the agent ends the exec.
    let abandoned = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(run("block")).await }
    });
    wait_until("the exec blocks", || backend.blocked_execs() == 1).await;
    abandoned.abort();
    wait_until("the exec ends", || backend.running_execs() == 0).await;
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn a_killed_vm_breaks_its_agent_and_ends_its_wait() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let (vm, agent) = boot(&backend, dir.path()).await;
    let handle = backend.vm(vm.pid().unwrap()).unwrap();
    assert!(vm.pid().unwrap() >= FIRST_PID);
    let running = tokio::spawn({
        let agent = agent.clone();
        async move { agent.run(run("block")).await }
    });
    wait_until("the exec blocks", || backend.blocked_execs() == 1).await;
    handle.kill();
    let exit = vm.wait().await.unwrap();
    assert_eq!(exit.signal, Some(9));
    assert!(matches!(
        running.await.unwrap(),
        Err(GuestError::Broken { .. })
    ));
    assert!(!agent.healthy().await);
    assert!(matches!(
        vm.connect_agent().await,
        Err(VmmError::ExitedEarly(_))
    ));
    // Died is not stopped: it is live until its owner stops it.
    assert_eq!(backend.live_vms(), 1);
    vm.stop().await.unwrap();
    assert_eq!(backend.live_vms(), 0);
}

#[tokio::test]
async fn a_dropped_vm_ends_like_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let (vm, _agent) = boot(&backend, dir.path()).await;
    let handle = backend.vm(vm.pid().unwrap()).unwrap();
    drop(vm);
    assert!(handle.has_ended());
    assert_eq!(backend.live_vms(), 0);
    assert_eq!(backend.most_live_vms(), 1);
}

#[tokio::test]
async fn held_boots_wait_for_release_or_fail_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    backend.hold_boots(true);
    let timed_out = backend
        .start(&spec(dir.path(), Duration::from_millis(20)))
        .await;
    assert!(matches!(timed_out, Err(VmmError::BootTimeout(_))));
    let held = tokio::spawn({
        let backend = backend.clone();
        let spec = spec(dir.path(), Duration::from_secs(5));
        async move { backend.start(&spec).await.map(|vm| vm.pid()) }
    });
    wait_until("the boot waits", || backend.boots_waiting() == 1).await;
    backend.hold_boots(false);
    assert!(held.await.unwrap().is_ok());
    assert_eq!(backend.boots_waiting(), 0);
    assert_eq!(backend.boots_started(), 2);
}

#[tokio::test]
async fn snapshots_need_a_pause_and_restores_need_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = tempfile::tempdir().unwrap();
    let files = SnapshotFiles {
        dir: snapshot.path().to_owned(),
    };
    let backend = FakeBackend::new();
    let spec = spec(dir.path(), Duration::from_secs(5));
    assert!(backend.restore(&spec, &files).await.is_err());
    let (vm, _agent) = boot(&backend, dir.path()).await;
    assert!(vm.snapshot(&files).await.is_err());
    vm.pause().await.unwrap();
    vm.snapshot(&files).await.unwrap();
    vm.stop().await.unwrap();
    assert_eq!(backend.snapshots_taken(), 1);

    let restored = backend.restore(&spec, &files).await.unwrap();
    assert!(backend.vm(restored.pid().unwrap()).unwrap().restored());
    restored.stop().await.unwrap();
    backend.fail_restores(true);
    assert!(backend.restore(&spec, &files).await.is_err());
    assert_eq!(backend.restores_started(), 3);
    assert_eq!(backend.live_vms(), 0);
}

#[tokio::test]
async fn faults_reach_the_handshake_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    backend.speak_wrong_generation(true);
    let vm = backend
        .start(&spec(dir.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    let refused = AgentClient::handshake(vm.connect_agent().await.unwrap()).await;
    assert!(matches!(refused, Err(GuestError::Generation { .. })));
    backend.speak_wrong_generation(false);
    let (agent, _) = AgentClient::handshake(vm.connect_agent().await.unwrap())
        .await
        .unwrap();
    assert!(agent.healthy().await);
    let handle = backend.vm(vm.pid().unwrap()).unwrap();
    handle.hang_health();
    let hung = tokio::time::timeout(Duration::from_millis(50), agent.healthy()).await;
    assert!(hung.is_err());
    assert_eq!(handle.health_calls(), 2);
    vm.stop().await.unwrap();

    backend.fail_boots(true);
    assert!(backend
        .start(&spec(dir.path(), Duration::from_secs(5)))
        .await
        .is_err());
}

#[tokio::test]
async fn calls_an_agent_never_answers_end_at_shutdown_or_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new();
    let vm = backend
        .start(&spec(dir.path(), Duration::from_secs(5)))
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (agent, _) =
        AgentClient::handshake_until(vm.connect_agent().await.unwrap(), shutdown.clone())
            .await
            .unwrap();
    backend.stop_answering(AgentCall::Quiesce, true);
    backend.stop_answering(AgentCall::Health, true);
    let quiesce = tokio::spawn({
        let agent = agent.clone();
        async move { agent.quiesce().await }
    });
    // Health is bounded on its own: no answer is "not healthy", in time.
    let started = std::time::Instant::now();
    assert!(!agent.healthy().await);
    assert!(started.elapsed() < crate::guest::bounds::HEALTH_BOUND + Duration::from_secs(1));
    wait_until("Quiesce hangs", || backend.unanswered_calls() >= 1).await;
    shutdown.cancel();
    let ended = tokio::time::timeout(Duration::from_secs(1), quiesce)
        .await
        .expect("Quiesce outlived the shutdown")
        .unwrap();
    assert!(
        matches!(ended, Err(GuestError::ShuttingDown { call: "Quiesce" })),
        "{ended:?}"
    );
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn a_standby_vmm_restores_later_and_a_stopped_one_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = tempfile::tempdir().unwrap();
    let files = SnapshotFiles {
        dir: snapshot.path().to_owned(),
    };
    let backend = FakeBackend::new();
    let spec = spec(dir.path(), Duration::from_secs(5));
    let (vm, _agent) = boot(&backend, dir.path()).await;
    vm.pause().await.unwrap();
    vm.snapshot(&files).await.unwrap();
    vm.stop().await.unwrap();

    let standby = backend.prepare_restore(&spec, &files).await.unwrap();
    assert_eq!(backend.restores_started(), 0, "preparing loaded state");
    let restored = standby.restore(&files).await.unwrap();
    assert!(backend.vm(restored.pid().unwrap()).unwrap().restored());
    assert_eq!(backend.restores_started(), 1);
    restored.stop().await.unwrap();

    let stopped = backend.prepare_restore(&spec, &files).await.unwrap();
    stopped.stop().await;
    assert!(stopped.has_exited());
    assert!(stopped.restore(&files).await.is_err());
}
