//! Standby VMMs (`--standby-vmms`) on the fake backend: a create that
//! misses the pool restores into a VMM started ahead and says so
//! (`standby-restore`), the filler brings the count back, a standby whose
//! VMM died is replaced and never restored, a pack whose restores are given
//! up loses its standbys, shutdown leaves none, and a standby holds a
//! sandbox slot but no guest memory until a create takes it.

mod fixture;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use emberd::sandbox::Limits;
use emberd::vmm::fake::FakeStandbyHandle;
use fixture::{wait_until, wait_until_async, Daemon, Options, MEMORY_MIB};
use serde_json::json;

/// A daemon with templates of both packs built, no pool, and `per_pack`
/// standby VMMs of each pack ready.
async fn with_standbys(per_pack: usize, limits: Limits) -> Daemon {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        standby_vmms: per_pack,
        limits,
        ..Options::default()
    });
    wait_until_async("templates built and standby VMMs ready", || async {
        daemon.backend.snapshots_taken() == 2
            && live_standbys_of(&daemon, "python").len() == per_pack
            && live_standbys_of(&daemon, "shell").len() == per_pack
            && daemon.info().await["boot_path"] == "standby-restore"
    })
    .await;
    daemon
}

/// The live standby VMMs started for `pack`.
fn live_standbys_of(daemon: &Daemon, pack: &str) -> Vec<FakeStandbyHandle> {
    daemon
        .backend
        .live_standbys()
        .into_iter()
        .filter(|s| s.root_disk().file_stem().is_some_and(|stem| stem == pack))
        .collect()
}

fn pids(standbys: &[FakeStandbyHandle]) -> BTreeSet<u32> {
    standbys.iter().map(FakeStandbyHandle::pid).collect()
}

/// The value of the metric line starting with `series`.
fn metric(daemon: &Daemon, series: &str) -> Option<u64> {
    daemon
        .manager
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn a_create_restores_into_a_standby_and_the_filler_starts_another() {
    let daemon = with_standbys(1, Limits::default()).await;
    let before = live_standbys_of(&daemon, "python");
    let restores = daemon.backend.restores_started();

    let id = daemon.create("python").await;
    let info = daemon.sandbox(&id).await;
    assert_eq!(info["boot_path"], "standby-restore", "{info}");
    assert_eq!(daemon.backend.restores_started(), restores + 1);
    assert!(!before[0].is_live(), "the standby was not the one restored");
    assert!(
        daemon.vm_of(&id).await.restored(),
        "the sandbox's VM was not restored"
    );
    assert_eq!(daemon.exec_ok(&id, "echo:hi").await["stdout"], "hi\n");
    assert_eq!(
        metric(
            &daemon,
            "emberd_creates_total{boot_path=\"standby-restore\"}"
        ),
        Some(1)
    );
    // The standby's directory became the sandbox's.
    assert!(daemon.work_dir.join(&id).is_dir());

    wait_until("the python standby is replaced", || {
        live_standbys_of(&daemon, "python").len() == 1
    })
    .await;
    assert!(pids(&live_standbys_of(&daemon, "python")).is_disjoint(&pids(&before)));
    assert_eq!(daemon.sandbox_dirs().len(), 3, "one sandbox, two standbys");

    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_standby_whose_vmm_died_is_never_restored_and_is_replaced() {
    let daemon = with_standbys(1, Limits::default()).await;
    let dead = live_standbys_of(&daemon, "python").remove(0);
    dead.kill();

    // Whether the filler noticed first or the create did, the dead one is
    // stopped, not restored, and the create succeeds.
    let id = daemon.create("python").await;
    let path = daemon.sandbox(&id).await["boot_path"].clone();
    assert!(
        path == "standby-restore" || path == "snapshot-restore",
        "{path}"
    );
    wait_until("the dead standby is stopped", || !dead.is_live()).await;
    wait_until("a new python standby runs", || {
        live_standbys_of(&daemon, "python").len() == 1
    })
    .await;
    assert!(!pids(&live_standbys_of(&daemon, "python")).contains(&dead.pid()));

    // Killed while nobody creates: the filler replaces it on its own.
    let dead = live_standbys_of(&daemon, "python").remove(0);
    dead.kill();
    wait_until("the filler replaced the dead standby", || {
        !dead.is_live() && live_standbys_of(&daemon, "python").len() == 1
    })
    .await;
    let again = daemon.create("python").await;
    assert_eq!(daemon.sandbox(&again).await["boot_path"], "standby-restore");

    daemon.manager.delete(&id).await.unwrap();
    daemon.manager.delete(&again).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_pack_whose_restores_are_given_up_loses_its_standbys() {
    let daemon = with_standbys(2, Limits::default()).await;
    daemon.backend.fail_restores(true);
    let id = daemon.create("python").await;
    // The restore into the standby was refused on an intact template: the
    // pack cold-boots from now on, and keeps no standby.
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    wait_until("the python standbys are stopped", || {
        live_standbys_of(&daemon, "python").is_empty()
    })
    .await;
    assert_eq!(live_standbys_of(&daemon, "shell").len(), 2);
    assert_ne!(daemon.info().await["boot_path"], "standby-restore");

    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn shutdown_stops_every_standby() {
    let daemon = with_standbys(2, Limits::default()).await;
    assert_eq!(daemon.backend.live_standbys().len(), 4);
    daemon.stop().await;
    let live = daemon.backend.live_standbys();
    assert!(live.is_empty(), "standby VMMs left running: {live:?}");
}

#[tokio::test]
async fn a_standby_holds_a_slot_and_no_memory_until_it_is_taken() {
    let limits = Limits {
        max_sandboxes: 3,
        ..Limits::default()
    };
    let daemon = with_standbys(1, limits).await;
    assert_eq!(daemon.manager.held(), (2, 0), "two standbys, no memory");

    let id = daemon.create("python").await;
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "standby-restore");
    let memory = u64::from(MEMORY_MIB);
    wait_until("the python standby is replaced", || {
        live_standbys_of(&daemon, "python").len() == 1
    })
    .await;
    assert_eq!(daemon.manager.held(), (3, memory));

    // Every slot is held: a create that no standby serves (another shape)
    // takes a standby's slot rather than being refused.
    let (status, body) = daemon
        .call(
            Method::POST,
            "/sandboxes",
            Some(json!({ "language_pack": "shell", "memory_mib": 128 })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(daemon.manager.held(), (3, memory + 128));
    assert_eq!(daemon.backend.live_standbys().len(), 1);

    let other = body["id"].as_str().unwrap().to_owned();
    daemon.manager.delete(&id).await.unwrap();
    daemon.manager.delete(&other).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_create_whose_memory_is_refused_gives_the_standby_back() {
    let limits = Limits {
        max_guest_memory_mib: u64::from(MEMORY_MIB) - 1,
        ..Limits::default()
    };
    let daemon = with_standbys(1, limits).await;
    let standby = live_standbys_of(&daemon, "python").remove(0);

    let (status, body) = daemon
        .call(
            Method::POST,
            "/sandboxes",
            Some(json!({ "language_pack": "python" })),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(standby.is_live(), "the standby was stopped");
    assert_eq!(daemon.manager.held(), (2, 0));
    assert_eq!(daemon.info().await["boot_path"], "standby-restore");
    daemon.stop().await;
}
