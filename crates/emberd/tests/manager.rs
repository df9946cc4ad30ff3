//! The sandbox Manager's lifecycle on the fake VM backend: creates, execs
//! and deletes racing each other, boots that fail or hang, shutdown in the
//! middle of work, warm pools and template snapshots. Each test ends by
//! checking that nothing is left: no sandbox, no directory, no VM that was
//! never stopped. Exec results and sandbox details are read through the
//! HTTP router.

mod fixture;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use fixture::{wait_until, wait_until_async, Daemon, Options, MEMORY_MIB};
use serde_json::json;

#[tokio::test]
async fn create_exec_delete() {
    let daemon = Daemon::start();
    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.manager.list().len(), 1);

    let result = daemon.exec_ok(&id, "echo:42").await;
    assert_eq!(result["stdout"], "42\n");
    assert_eq!(result["exit_code"], 0);

    let info = daemon.sandbox(&id).await;
    assert_eq!(info["state"], "running");
    assert_eq!(info["boot_path"], "cold-boot");
    let vm = daemon.vm_of(&id).await;
    assert_eq!(vm.identity().as_deref(), Some(id.as_str()));
    assert!(daemon.work_dir.join(&id).is_dir());

    daemon.manager.delete(&id).await.unwrap();
    daemon.assert_nothing_left();
    let again = daemon.manager.delete(&id).await.unwrap_err();
    assert_eq!(again.to_string(), "sandbox not found");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_each_get_their_own_vm() {
    const N: usize = 12;
    let daemon = &Daemon::start();
    let creates = (0..N).map(|i| {
        let pack = if i % 2 == 0 { "python" } else { "shell" };
        daemon.manager.create(pack)
    });
    let ids: Vec<String> = futures::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), N);
    assert_eq!(daemon.manager.list().len(), N);
    assert_eq!(daemon.backend.live_vms(), N);

    // Each sandbox answers from its own VM, which took its own identity.
    let execs = ids.iter().map(|id| async move {
        let result = daemon.exec_ok(id, &format!("echo:{id}")).await;
        assert_eq!(result["stdout"], format!("{id}\n"));
        let vm = daemon.vm_of(id).await;
        assert_eq!(vm.identity().as_deref(), Some(id.as_str()));
        vm.pid()
    });
    let pids: HashSet<u32> = futures::future::join_all(execs).await.into_iter().collect();
    assert_eq!(pids.len(), N);

    let deletes = ids.iter().map(|id| daemon.manager.delete(id));
    for result in futures::future::join_all(deletes).await {
        result.unwrap();
    }
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn delete_during_boot_fails_the_create_and_leaves_nothing() {
    let daemon = Daemon::start();
    daemon.backend.hold_boots(true);
    let create = tokio::spawn({
        let manager = daemon.manager.clone();
        async move { manager.create("python").await }
    });
    wait_until("the boot is under way", || {
        daemon.backend.boots_waiting() == 1
    })
    .await;
    let ids = daemon.listed_ids().await;
    assert_eq!(ids.len(), 1);
    assert_eq!(daemon.sandbox(&ids[0]).await["state"], "booting");

    daemon.manager.delete(&ids[0]).await.unwrap();
    let error = create.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("deleted"), "{error}");
    assert_eq!(daemon.backend.boots_waiting(), 0, "the boot was abandoned");
    daemon.assert_nothing_left();
    daemon.backend.hold_boots(false);
    assert_eq!(daemon.backend.vms().len(), 0, "no VM came up for it");
    daemon.stop().await;
}

#[tokio::test]
async fn delete_during_exec_answers_deleted_and_kills_the_exec() {
    let daemon = Daemon::start();
    let id = daemon.manager.create("python").await.unwrap();
    let exec = tokio::spawn({
        let app = daemon.app.clone();
        let id = id.clone();
        async move { fixture::oneshot_exec(app, &id, json!({ "code": "block" })).await }
    });
    wait_until("the exec runs", || daemon.backend.blocked_execs() == 1).await;

    daemon.manager.delete(&id).await.unwrap();
    let (status, body) = exec.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"],
        "sandbox was deleted while the code was running"
    );
    wait_until("the guest's process is gone", || {
        daemon.backend.running_execs() == 0
    })
    .await;
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn a_boot_failure_unwinds_and_the_next_create_works() {
    let daemon = Daemon::start();
    daemon.backend.fail_boots(true);
    let error = daemon.manager.create("python").await.unwrap_err();
    let message = emberd::error_chain::render(&error);
    assert!(message.contains("told to fail boots"), "{message}");
    assert_eq!(daemon.backend.boots_started(), 1);
    daemon.assert_nothing_left();

    daemon.backend.fail_boots(false);
    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.exec_ok(&id, "echo:up").await["stdout"], "up\n");
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_handshake_stops_the_vm_it_booted() {
    let daemon = Daemon::start();
    daemon.backend.speak_wrong_generation(true);
    let error = daemon.manager.create("python").await.unwrap_err();
    let message = emberd::error_chain::render(&error);
    assert!(message.contains("generation"), "{message}");
    assert_eq!(daemon.backend.vms().len(), 1, "the VM itself came up");
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn a_boot_that_never_comes_up_times_out_and_unwinds() {
    let daemon = Daemon::with(Options {
        boot_timeout: Duration::from_millis(100),
        ..Options::default()
    });
    daemon.backend.hold_boots(true);
    let error = daemon.manager.create("shell").await.unwrap_err();
    let message = emberd::error_chain::render(&error);
    assert!(message.contains("did not come up"), "{message}");
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn shutdown_during_boot_fails_the_create_and_stops_everything() {
    let daemon = Daemon::start();
    daemon.backend.hold_boots(true);
    let create = tokio::spawn({
        let manager = daemon.manager.clone();
        async move { manager.create("python").await }
    });
    wait_until("the boot is under way", || {
        daemon.backend.boots_waiting() == 1
    })
    .await;
    daemon.manager.shutdown().await;
    assert!(create.await.unwrap().is_err());
    daemon.assert_nothing_left();

    let refused = daemon.manager.create("python").await.unwrap_err();
    assert_eq!(refused.to_string(), "the daemon is shutting down");
    let (status, _) = daemon
        .call(Method::POST, "/sandboxes", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn shutdown_during_exec_ends_the_exec_and_stops_everything() {
    let daemon = Daemon::start();
    let id = daemon.manager.create("shell").await.unwrap();
    let exec = tokio::spawn({
        let app = daemon.app.clone();
        let id = id.clone();
        async move { fixture::oneshot_exec(app, &id, json!({ "code": "echo:started\nblock" })).await }
    });
    wait_until("the exec runs", || daemon.backend.blocked_execs() == 1).await;
    daemon.manager.shutdown().await;
    let (status, body) = exec.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    wait_until("the guest's process is gone", || {
        daemon.backend.running_execs() == 0
    })
    .await;
    daemon.assert_nothing_left();
}

#[tokio::test]
async fn shutdown_during_pool_fill_stops_everything() {
    let daemon = Daemon::with(Options {
        pool_size: 2,
        ..Options::default()
    });
    daemon.backend.hold_boots(true);
    // One filler per pack, each with a boot in flight.
    wait_until("both fillers boot", || daemon.backend.boots_waiting() == 2).await;
    daemon.stop().await;
}

// A shutdown that interrupts a template build leaves no directory behind,
// and no queued build starts after it.
#[tokio::test]
async fn shutdown_during_template_build_stops_everything() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        ..Options::default()
    });
    daemon.backend.hold_boots(true);
    wait_until("the template boot is under way", || {
        daemon.backend.boots_waiting() == 1
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn the_pool_hands_out_a_pooled_vm_and_refills() {
    let daemon = Daemon::with_full_python_pool(2).await;
    let pooled: HashSet<u32> = daemon
        .live_vms_of("python")
        .iter()
        .map(|vm| vm.pid())
        .collect();
    assert_eq!(pooled.len(), 2);

    let id = daemon.manager.create("python").await.unwrap();
    let info = daemon.sandbox(&id).await;
    assert_eq!(info["boot_path"], "warm-pool");
    let vm = daemon.vm_of(&id).await;
    assert!(pooled.contains(&vm.pid()), "{} not in {pooled:?}", vm.pid());
    // The pooled VM took its final identity before it was handed out.
    assert_eq!(vm.identity().as_deref(), Some(id.as_str()));
    assert_eq!(
        daemon.exec_ok(&id, "echo:pooled").await["stdout"],
        "pooled\n"
    );

    wait_until_async("the pool refills", || async {
        daemon.pool_ready("python").await == 2 && daemon.live_vms_of("python").len() == 3
    })
    .await;
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_pooled_vm_that_died_is_skipped_once_the_pool_noticed() {
    let daemon = Daemon::with_full_python_pool(2).await;
    // The pool hands out oldest first and checks its VMs' health in that order.
    let pooled = daemon.live_vms_of("python");
    let (dead, next) = (&pooled[0], &pooled[1]);
    dead.kill();
    // Two probes of the next VM after the kill: a whole health round, which
    // probed the dead one first, began after the kill and has finished.
    let probes = next.health_calls();
    wait_until("a health round after the kill", || {
        next.health_calls() >= probes + 2
    })
    .await;

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.vm_of(&id).await.pid(), next.pid());
    assert!(!dead.is_live(), "the dead VM was stopped");
    assert_eq!(daemon.exec_ok(&id, "echo:alive").await["stdout"], "alive\n");
    daemon.stop().await;
}

// A pooled VM that died after its last `Health` answer is not handed out.
#[tokio::test]
async fn a_pooled_vm_that_just_died_is_not_handed_out() {
    let daemon = Daemon::with_full_python_pool(1).await;
    let dead = daemon.live_vms_of("python").remove(0);
    dead.kill();

    let id = daemon.manager.create("python").await.unwrap();
    assert_ne!(daemon.vm_of(&id).await.pid(), dead.pid());
    assert_eq!(daemon.exec_ok(&id, "echo:alive").await["stdout"], "alive\n");
    daemon.stop().await;
}

#[tokio::test]
async fn a_pooled_vm_whose_health_hangs_is_skipped() {
    let daemon = Daemon::with_full_python_pool(2).await;
    let pooled = daemon.live_vms_of("python");
    let (hung, next) = (&pooled[0], &pooled[1]);
    hung.hang_health();
    // The second unanswered probe starts after the first one gave up, which
    // marked the VM unhealthy.
    let probes = hung.health_calls();
    wait_until("a probe of the hung VM gave up", || {
        hung.health_calls() >= probes + 2
    })
    .await;

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.vm_of(&id).await.pid(), next.pid());
    assert!(!hung.is_live(), "the hung VM was stopped");
    daemon.stop().await;
}

#[tokio::test]
async fn the_pool_memory_cap_bounds_all_pools_together() {
    const CAP_VMS: u64 = 3;
    let daemon = Daemon::with(Options {
        pool_size: 3,
        pool_memory_mib: CAP_VMS * u64::from(MEMORY_MIB),
        ..Options::default()
    });
    let ready = || async { daemon.pool_ready("python").await + daemon.pool_ready("shell").await };
    wait_until_async("the pools reach the cap", || async {
        ready().await == CAP_VMS
    })
    .await;
    // Every pooled VM probed twice: each filler has come round again since
    // the cap was reached, and booted nothing more.
    let pooled = daemon.backend.live();
    let probes: Vec<u64> = pooled.iter().map(|vm| vm.health_calls()).collect();
    wait_until("the fillers come round again", || {
        pooled
            .iter()
            .zip(&probes)
            .all(|(vm, before)| vm.health_calls() >= before + 2)
    })
    .await;
    assert_eq!(ready().await, CAP_VMS);
    assert_eq!(daemon.backend.live_vms() as u64, CAP_VMS);
    assert_eq!(daemon.backend.most_live_vms() as u64, CAP_VMS);
    daemon.stop().await;
}

#[tokio::test]
async fn a_template_is_built_then_restored() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        ..Options::default()
    });
    wait_until_async("both templates are built", || async {
        daemon.backend.snapshots_taken() == 2
            && daemon.backend.live_vms() == 0
            && daemon.info().await["boot_path"] == "snapshot-restore"
    })
    .await;

    let id = daemon.manager.create("python").await.unwrap();
    let info = daemon.sandbox(&id).await;
    assert_eq!(info["boot_path"], "snapshot-restore");
    let vm = daemon.vm_of(&id).await;
    assert!(vm.restored());
    assert_eq!(vm.identity().as_deref(), Some(id.as_str()));
    assert_eq!(daemon.backend.restores_started(), 1);
    assert_eq!(
        daemon.backend.boots_started(),
        2,
        "only the template builds cold-booted"
    );
    assert_eq!(
        daemon.exec_ok(&id, "echo:restored").await["stdout"],
        "restored\n"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_failing_restore_falls_back_to_a_cold_boot() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        ..Options::default()
    });
    wait_until_async("both templates are built", || async {
        daemon.backend.snapshots_taken() == 2
            && daemon.backend.live_vms() == 0
            && daemon.info().await["boot_path"] == "snapshot-restore"
    })
    .await;
    daemon.backend.fail_restores(true);

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.backend.restores_started(), 1);
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    assert!(!daemon.vm_of(&id).await.restored());
    assert_eq!(daemon.exec_ok(&id, "echo:cold").await["stdout"], "cold\n");
    // The template is intact, so it stays; but the VMM refused it, so the
    // pack is not restored (nor rebuilt) again in this daemon's lifetime.
    daemon.backend.fail_restores(false);
    let again = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&again).await["boot_path"], "cold-boot");
    assert_eq!(daemon.backend.restores_started(), 1, "restored again");
    assert_eq!(daemon.manager.restores_given_up(), 1);
    assert_eq!(daemon.info().await["boot_path"], "cold-boot");
    assert_eq!(
        daemon.backend.snapshots_taken(),
        2,
        "an intact template was rebuilt"
    );
    // The other pack still restores.
    let shell = daemon.manager.create("shell").await.unwrap();
    assert_eq!(
        daemon.sandbox(&shell).await["boot_path"],
        "snapshot-restore"
    );
    daemon.stop().await;
}

// A VM that dies, between execs or under one, makes the sandbox `exited`:
// its execs answer 409 with the reason, and a delete still cleans up.
#[tokio::test]
async fn a_vm_that_dies_fails_the_exec_and_the_sandbox_can_still_be_deleted() {
    let daemon = Daemon::start();
    let between = daemon.manager.create("python").await.unwrap();
    let during = daemon.manager.create("python").await.unwrap();

    daemon.exec_ok(&between, "echo:first").await;
    daemon.vm_of(&between).await.kill();
    let (status, body) = daemon
        .exec(&between, json!({ "code": "echo:second" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("sandbox has stopped: "), "{body}");

    let vm = daemon.vm_of(&during).await;
    let exec = tokio::spawn({
        let app = daemon.app.clone();
        let id = during.clone();
        async move { fixture::oneshot_exec(app, &id, json!({ "code": "block" })).await }
    });
    wait_until("the exec runs", || daemon.backend.blocked_execs() == 1).await;
    vm.kill();
    let (status, body) = exec.await.unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("signal 9"), "{body}");

    daemon.manager.delete(&between).await.unwrap();
    daemon.manager.delete(&during).await.unwrap();
    daemon.assert_nothing_left();
    daemon.stop().await;
}
