//! Containment in the Manager over the fake VM backend: per-sandbox sizes
//! checked against the operator's maxima, admission limits (sandboxes,
//! guest memory, concurrent boots) that refuse with 429 before any VM work,
//! reaping past a TTL or an idle timeout, and VMs that end on their own.
//! Each test ends by checking that nothing is left, reservations included.

mod fixture;

use std::time::{Duration, Instant, SystemTime};

use axum::http::{Method, StatusCode};
use emberd::sandbox::Limits;
use emberd_proto::kernel_args::KernelArg;
use fixture::{wait_until, wait_until_async, Daemon, Options, MEMORY_MIB};
use serde_json::{json, Value};

/// `POST /sandboxes` with `body`; the status and the answer.
async fn create(daemon: &Daemon, body: Value) -> (StatusCode, Value) {
    daemon.call(Method::POST, "/sandboxes", Some(body)).await
}

/// `POST /sandboxes` with `body`, expecting a 201; the id.
async fn create_ok(daemon: &Daemon, body: Value) -> String {
    let (status, answer) = create(daemon, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().unwrap_or_else(|| panic!("{value}"))).unwrap()
}

fn limits(edit: impl FnOnce(&mut Limits)) -> Options {
    let mut limits = Limits::default();
    edit(&mut limits);
    Options {
        limits,
        ..Options::default()
    }
}

#[tokio::test]
async fn sizes_over_a_maximum_or_zero_are_refused_before_any_vm_work() {
    let daemon = Daemon::with(limits(|l| {
        l.max_vcpus = 2;
        l.max_memory_mib = 1024;
        l.max_disk_mib = 512;
        l.max_ttl = Some(Duration::from_secs(60));
    }));
    for (body, says) in [
        (
            json!({ "vcpus": 3 }),
            "vcpus must be at most 2 (asked for 3)",
        ),
        (
            json!({ "memory_mib": 1025 }),
            "memory_mib must be at most 1024",
        ),
        (json!({ "disk_mib": 4096 }), "disk_mib must be at most 512"),
        (json!({ "ttl_s": 61 }), "ttl_s must be at most 60"),
        (json!({ "vcpus": 0 }), "vcpus must be at least 1"),
        (json!({ "memory_mib": 0 }), "memory_mib must be at least"),
        (json!({ "disk_mib": 0 }), "disk_mib must be at least 1"),
    ] {
        let (status, answer) = create(&daemon, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    assert_eq!(daemon.backend.boots_started(), 0);
    daemon.assert_nothing_left();
    daemon.stop().await;
}

// A shape other than the default neither takes a pooled VM nor restores
// the template (both are of the default shape): it cold-boots its sizes.
#[tokio::test]
async fn a_non_default_shape_cold_boots_with_its_sizes() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        pool_size: 1,
        ..Options::default()
    });
    wait_until_async("templates are built and the pools full", || async {
        daemon.backend.snapshots_taken() == 2
            && daemon.pool_ready("python").await == 1
            && daemon.pool_ready("shell").await == 1
    })
    .await;
    let restores = daemon.backend.restores_started();
    let pooled: Vec<u32> = daemon.backend.live().iter().map(|vm| vm.pid()).collect();

    let id = create_ok(
        &daemon,
        json!({ "vcpus": 2, "memory_mib": 512, "disk_mib": 128 }),
    )
    .await;
    let info = daemon.sandbox(&id).await;
    assert_eq!(info["boot_path"], "cold-boot");
    assert_eq!(
        (&info["vcpus"], &info["memory_mib"], &info["disk_mib"]),
        (&json!(2), &json!(512), &json!(128))
    );
    let vm = daemon.vm_of(&id).await;
    assert!(!pooled.contains(&vm.pid()), "a pooled VM was handed out");
    assert!(!vm.restored());
    assert_eq!(daemon.backend.restores_started(), restores);
    let spec = vm.spec();
    assert_eq!((spec.vcpus, spec.memory_mib), (2, 512));
    let overlay = KernelArg::OverlaySize { mib: 128 }.to_string();
    assert!(
        spec.extra_kernel_args.contains(&overlay),
        "{:?}",
        spec.extra_kernel_args
    );
    assert_eq!(daemon.pool_ready("python").await, 1);

    // The default shape still comes from the pool, and shows its sizes.
    let default = daemon.manager.create("python").await.unwrap();
    let info = daemon.sandbox(&default).await;
    assert_eq!(info["boot_path"], "warm-pool");
    assert_eq!(
        (&info["vcpus"], &info["memory_mib"], &info["disk_mib"]),
        (&json!(1), &json!(MEMORY_MIB), &json!(64))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_storm_past_max_sandboxes_gets_only_201s_and_429s() {
    const MAX: usize = 5;
    let daemon = &Daemon::with(limits(|l| l.max_sandboxes = MAX));
    let creates = (0..4 * MAX).map(|_| create(daemon, json!({ "language_pack": "shell" })));
    let answers = futures::future::join_all(creates).await;
    let mut ids = Vec::new();
    for (status, answer) in answers {
        match status {
            StatusCode::CREATED => ids.push(answer["id"].as_str().unwrap().to_owned()),
            StatusCode::TOO_MANY_REQUESTS => {
                let message = answer["error"].as_str().unwrap();
                assert!(message.starts_with("at capacity: "), "{message}");
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(ids.len(), MAX);
    assert_eq!(
        daemon.backend.boots_started(),
        MAX,
        "refusals booted nothing"
    );
    assert_eq!(
        daemon.manager.held(),
        (MAX, MAX as u64 * u64::from(MEMORY_MIB))
    );
    for id in &ids {
        daemon.manager.delete(id).await.unwrap();
    }
    daemon.assert_nothing_left();
    // The room is back.
    let id = create_ok(daemon, json!({})).await;
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

// Pooled VMs hold guest memory too: fillers stop at the budget, and a
// create that finds no room takes it from a pooled VM before it is refused.
#[tokio::test]
async fn the_guest_memory_budget_counts_pooled_vms() {
    const BUDGET_VMS: u64 = 3;
    let daemon = Daemon::with(Options {
        pool_size: 2,
        ..limits(|l| l.max_guest_memory_mib = BUDGET_VMS * u64::from(MEMORY_MIB))
    });
    let ready = || async { daemon.pool_ready("python").await + daemon.pool_ready("shell").await };
    wait_until_async("the pools fill the budget", || async {
        ready().await == BUDGET_VMS
    })
    .await;
    let budget = (BUDGET_VMS as usize, BUDGET_VMS * u64::from(MEMORY_MIB));
    assert_eq!(daemon.manager.held(), budget);

    // A hand-out keeps the room it had; the filler finds none to refill.
    let first = daemon.manager.create("python").await.unwrap();
    let handed_out = daemon.vm_of(&first).await.pid();
    let pooled: Vec<_> = daemon
        .backend
        .live()
        .into_iter()
        .filter(|vm| vm.pid() != handed_out)
        .collect();
    let probes: Vec<u64> = pooled.iter().map(|vm| vm.health_calls()).collect();
    wait_until("the fillers come round twice", || {
        pooled
            .iter()
            .zip(&probes)
            .all(|(vm, before)| vm.health_calls() >= before + 2)
    })
    .await;
    assert_eq!(daemon.backend.most_live_vms() as u64, BUDGET_VMS);
    assert_eq!(daemon.manager.held(), budget);

    // Two creates of another shape take the two pooled VMs' room.
    let shaped = json!({ "language_pack": "shell", "vcpus": 2 });
    let second = create_ok(&daemon, shaped.clone()).await;
    let third = create_ok(&daemon, shaped.clone()).await;
    assert_eq!(ready().await, 0);
    assert_eq!(daemon.backend.live_vms() as u64, BUDGET_VMS);
    let (status, answer) = create(&daemon, shaped).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("guest memory"),
        "{answer}"
    );
    assert_eq!(daemon.backend.most_live_vms() as u64, BUDGET_VMS);
    for id in [first, second, third] {
        daemon.manager.delete(&id).await.unwrap();
    }
    daemon.stop().await;
}

#[tokio::test]
async fn boots_beyond_the_bound_wait_for_their_turn() {
    let daemon = Daemon::with(limits(|l| l.max_concurrent_boots = 1));
    daemon.backend.hold_boots(true);
    let creates: Vec<_> = (0..3)
        .map(|_| {
            let manager = daemon.manager.clone();
            tokio::spawn(async move { manager.create("shell").await })
        })
        .collect();
    wait_until_async("three sandboxes are booting", || async {
        daemon.listed_ids().await.len() == 3
    })
    .await;
    wait_until("one boot reached the VMM", || {
        daemon.backend.boots_waiting() == 1
    })
    .await;
    assert_eq!(
        daemon.backend.boots_started(),
        1,
        "the others wait their turn"
    );
    daemon.backend.hold_boots(false);
    let mut ids = Vec::new();
    for create in creates {
        ids.push(create.await.unwrap().unwrap());
    }
    assert_eq!(daemon.backend.most_live_vms(), 3);
    for id in &ids {
        daemon.manager.delete(id).await.unwrap();
    }
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn the_summary_shows_the_terms() {
    let daemon = Daemon::start();
    let id = create_ok(&daemon, json!({ "ttl_s": 3600, "idle_timeout_s": 600 })).await;
    let info = daemon.sandbox(&id).await;
    let created = time(&info["created_at"]);
    assert_eq!(
        time(&info["expires_at"]),
        created + Duration::from_secs(3600)
    );
    let idle = time(&info["idle_expires_at"]);
    let from_created = idle.duration_since(created).unwrap();
    assert!(
        (Duration::from_secs(600)..Duration::from_secs(610)).contains(&from_created),
        "{info}"
    );

    // The defaults: no TTL, 30 minutes idle, the daemon's sizes.
    let id = create_ok(&daemon, json!({})).await;
    let info = daemon.sandbox(&id).await;
    assert!(info.get("expires_at").is_none(), "{info}");
    let idle = time(&info["idle_expires_at"]).duration_since(time(&info["created_at"]));
    assert!(idle.unwrap() >= Duration::from_secs(1800), "{info}");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["memory_mib"], MEMORY_MIB);

    // An idle timeout of 0 disables it.
    let id = create_ok(&daemon, json!({ "idle_timeout_s": 0 })).await;
    let info = daemon.sandbox(&id).await;
    assert!(info.get("idle_expires_at").is_none(), "{info}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_sandbox_past_its_ttl_is_reaped() {
    let daemon = Daemon::start();
    let id = create_ok(&daemon, json!({ "ttl_s": 1, "idle_timeout_s": 0 })).await;
    let kept = create_ok(&daemon, json!({ "idle_timeout_s": 0 })).await;
    wait_until("the reaper deletes it", || daemon.manager.reaped() == 1).await;
    let (_, info) = daemon.call(Method::GET, "/info", None).await;
    assert_eq!(info["sandboxes_reaped"], 1, "{info}");
    let (status, _) = daemon
        .call(Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(daemon.listed_ids().await, vec![kept.clone()]);
    daemon.manager.delete(&kept).await.unwrap();
    daemon.assert_nothing_left();
    daemon.stop().await;
}

// Idle means no exec running and none for the idle timeout: a long exec
// keeps its sandbox, which is reaped once it has been idle long enough.
#[tokio::test]
async fn an_idle_sandbox_is_reaped_but_never_during_an_exec() {
    let daemon = Daemon::start();
    let id = create_ok(&daemon, json!({ "idle_timeout_s": 1 })).await;
    let exec = tokio::spawn({
        let app = daemon.app.clone();
        let id = id.clone();
        async move { fixture::oneshot_exec(app, &id, json!({ "code": "block" })).await }
    });
    wait_until("the exec runs", || daemon.backend.blocked_execs() == 1).await;
    assert!(daemon.sandbox(&id).await.get("idle_expires_at").is_none());
    // Twice the idle timeout passes with the exec running.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(daemon.manager.reaped(), 0);
    daemon.backend.release_blocked();
    let (status, body) = exec.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(daemon.sandbox(&id).await.get("idle_expires_at").is_some());

    wait_until("the reaper deletes it", || daemon.manager.reaped() == 1).await;
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn a_vm_that_exits_on_its_own_is_exited_within_a_second() {
    let daemon = Daemon::start();
    let id = daemon.manager.create("python").await.unwrap();
    let vm = daemon.vm_of(&id).await;
    vm.write_console("Kernel panic - not syncing: sysrq triggered crash\n");
    let killed = Instant::now();
    vm.kill();
    wait_until_async("the sandbox is exited", || async {
        daemon.sandbox(&id).await["state"] == "exited"
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(1),
        "{:?}",
        killed.elapsed()
    );

    let info = daemon.sandbox(&id).await;
    let reason = info["exit_reason"].as_str().unwrap();
    assert!(reason.contains("signal 9"), "{reason}");
    assert!(reason.contains("Kernel panic - not syncing"), "{reason}");
    assert!(
        info["console_tail"]
            .as_str()
            .unwrap()
            .contains("Kernel panic"),
        "{info}"
    );
    let (status, body) = daemon.exec(&id, json!({ "code": "echo:hi" })).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], format!("sandbox has stopped: {reason}"));
    assert!(daemon.work_dir.join(&id).is_dir(), "kept until the delete");

    daemon.manager.delete(&id).await.unwrap();
    daemon.assert_nothing_left();
    daemon.stop().await;
}
