//! Standby VMMs against real VMs: with `--standby-vmms 1` and no pool, a
//! create of the python pack restores into the QEMU process started ahead
//! (`boot_path: "standby-restore"`, its VMM pid that process's), its exec
//! answers, and after the delete and the daemon's shutdown no QEMU is left.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use support::Api;

/// Waits until `GET /info` reports `boot_path`.
async fn wait_for_boot_path(api: &Api, expected: &str) {
    // Generous: a template build under TCG on a loaded host takes minutes.
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let (_, info) = api.raw(Method::GET, "/info", None).await;
        if info["boot_path"] == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "boot_path never became {expected}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_create_restores_into_a_qemu_started_ahead() {
    // A data dir of its own: its templates are of this build's format.
    let data = tempfile::Builder::new()
        .prefix("embd")
        .tempdir_in("/tmp")
        .unwrap();
    emberd_harness::share_images(&support::data_dir(), data.path()).unwrap();
    let mut daemon = support::builder(&[
        "--snapshots",
        "true",
        "--pool-size",
        "0",
        "--skip-warm",
        "--standby-vmms",
        "1",
    ])
    .data_dir(data.path())
    .start()
    .unwrap_or_else(|e| panic!("{e}"));
    let api = support::api(&daemon);

    // The first create cold-boots and asks for the python template; once
    // it is built a standby VMM is started for it.
    let first = api.create("python").await;
    assert_eq!(api.delete(&first).await, 204);
    wait_for_boot_path(&api, "standby-restore").await;
    let started_ahead = daemon.vm_processes();
    assert_eq!(
        started_ahead.len(),
        1,
        "one standby VMM, nothing else: {started_ahead:?}"
    );

    let id = api.create("python").await;
    let info = api.sandbox(&id).await;
    assert_eq!(info["boot_path"], "standby-restore", "{info}");
    assert_eq!(
        api.vmm_pid(&id).await,
        started_ahead[0],
        "the sandbox does not run in the VMM started ahead"
    );
    assert_eq!(api.exec(&id, "print(6*7)").await.stdout, "42\n");
    assert_eq!(api.delete(&id).await, 204);

    // The filler starts another; shutdown stops it and leaves no QEMU.
    assert!(
        support::eventually(Duration::from_secs(120), || daemon.vm_processes().len()
            == 1),
        "no new standby VMM: {:?}",
        daemon.vm_processes()
    );
    let vmms = daemon.vm_processes();
    let status = support::signal_and_wait(&mut daemon, nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        support::eventually(Duration::from_secs(10), || vmms
            .iter()
            .all(|pid| !emberd_harness::is_alive(*pid))),
        "VMMs {vmms:?} outlived the daemon"
    );
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "sandbox dirs left: {:?}",
        daemon.sandbox_dirs()
    );
}
