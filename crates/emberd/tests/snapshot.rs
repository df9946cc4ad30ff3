//! Template snapshots and warm pools against real VMs: restored clones get
//! their own identity, a corrupted template falls back to a cold boot, and
//! a pooled sandbox is handed out and replaced.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use support::{eventually, Api, Daemon};

/// Waits until `GET /info` reports `boot_path`.
async fn wait_for_boot_path(api: &Api, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
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

/// Waits until every pack's pool holds `ready` VMs.
async fn wait_for_pools(api: &Api, ready: u64) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let (_, info) = api.raw(Method::GET, "/info", None).await;
        let pools = info["pool_ready"].as_object().cloned().unwrap_or_default();
        if !pools.is_empty() && pools.values().all(|n| n.as_u64() == Some(ready)) {
            return;
        }
        assert!(Instant::now() < deadline, "pools did not fill: {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn boot_path(api: &Api, id: &str) -> String {
    let (_, info) = api
        .raw(Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    info["boot_path"].as_str().unwrap_or_default().to_owned()
}

const IDENTITY_CODE: &str = "import random, socket\nprint(open('/proc/sys/kernel/random/uuid').read().strip())\nprint(random.getrandbits(64))\nprint(socket.gethostname())";

#[tokio::test]
async fn clones_of_one_template_get_their_own_identity() {
    let daemon = Daemon::start(&["--snapshots", "true", "--pool-size", "0"]);
    let api = daemon.client();
    wait_for_boot_path(&api, "snapshot-restore").await;
    let (a, b) = tokio::join!(api.create("python"), api.create("python"));
    assert_eq!(boot_path(&api, &a).await, "snapshot-restore");
    assert_eq!(boot_path(&api, &b).await, "snapshot-restore");
    let (out_a, out_b) = tokio::join!(api.exec(&a, IDENTITY_CODE), api.exec(&b, IDENTITY_CODE));
    let lines_a: Vec<&str> = out_a.stdout.lines().collect();
    let lines_b: Vec<&str> = out_b.stdout.lines().collect();
    assert_eq!(lines_a.len(), 3, "{out_a:?}");
    assert_eq!(lines_b.len(), 3, "{out_b:?}");
    assert_ne!(
        lines_a[0], lines_b[0],
        "two clones drew the same kernel UUID"
    );
    assert_ne!(
        lines_a[1], lines_b[1],
        "two clones drew the same Python random numbers"
    );
    assert_eq!(lines_a[2], a);
    assert_eq!(lines_b[2], b);
    // The clock was set on restore, not frozen at snapshot time.
    let out = api.exec(&a, "import time; print(int(time.time()))").await;
    let guest_now: u64 = out.stdout.trim().parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        guest_now.abs_diff(host_now) < 30,
        "guest clock {guest_now}, host {host_now}"
    );
    // Files still persist and packs still work after a restore.
    assert_eq!(
        api.exec(&a, "open('/tmp/x','w').write('1')")
            .await
            .exit_code,
        0
    );
    assert_eq!(
        api.exec(&a, "print(open('/tmp/x').read())").await.stdout,
        "1\n"
    );
    assert_eq!(api.delete(&a).await, 204);
    assert_eq!(api.delete(&b).await, 204);

    // Node clones too: their spare node is started after the restore, so no
    // two share V8's random state.
    let (c, d) = tokio::join!(api.create("node"), api.create("node"));
    assert_eq!(boot_path(&api, &c).await, "snapshot-restore");
    assert_eq!(boot_path(&api, &d).await, "snapshot-restore");
    let code =
        "console.log(Math.random())\nconsole.log(require('crypto').randomBytes(8).toString('hex'))";
    let (out_c, out_d) = tokio::join!(api.exec(&c, code), api.exec(&d, code));
    let lines_c: Vec<&str> = out_c.stdout.lines().collect();
    let lines_d: Vec<&str> = out_d.stdout.lines().collect();
    assert_eq!(lines_c.len(), 2, "{out_c:?}");
    assert_eq!(lines_d.len(), 2, "{out_d:?}");
    // Each line on its own: OpenSSL seeds at first use, so its bytes would
    // differ even if the clones shared a spare node and its V8 state.
    assert_ne!(
        lines_c[0], lines_d[0],
        "two node clones drew the same Math.random"
    );
    assert_ne!(
        lines_c[1], lines_d[1],
        "two node clones drew the same random bytes"
    );
    assert_eq!(api.delete(&c).await, 204);
    assert_eq!(api.delete(&d).await, 204);
}

#[tokio::test]
async fn a_corrupted_template_falls_back_to_a_cold_boot() {
    let daemon = Daemon::start(&["--snapshots", "true", "--pool-size", "0"]);
    let api = daemon.client();
    wait_for_boot_path(&api, "snapshot-restore").await;
    let snapshots = support::data_dir().join("snapshots");
    let template = std::fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python-"))
        })
        .expect("a python template");
    std::fs::write(
        template.join("vm.migration"),
        b"this is not a migration stream",
    )
    .unwrap();

    let id = api.create("python").await;
    assert_eq!(boot_path(&api, &id).await, "cold-boot");
    assert_eq!(api.exec(&id, "print(6*7)").await.stdout, "42\n");
    assert!(
        daemon.log_text().contains("falling back to a cold boot"),
        "{}",
        daemon.log_text()
    );
    // The broken template is gone and a new one is built in its place.
    let api2 = api.clone();
    assert!(
        eventually(Duration::from_secs(5), || !template
            .join("vm.migration")
            .exists()
            || std::fs::metadata(template.join("vm.migration"))
                .map(|m| m.len())
                .unwrap_or(0)
                > 1024),
        "the corrupted template stayed"
    );
    wait_for_boot_path(&api2, "snapshot-restore").await;
    let again = api.create("python").await;
    assert_eq!(boot_path(&api, &again).await, "snapshot-restore");
    assert_eq!(
        api.exec(&again, "print('restored')").await.stdout,
        "restored\n"
    );
}

#[tokio::test]
async fn a_pooled_sandbox_is_handed_out_and_replaced() {
    let daemon = Daemon::start(&["--snapshots", "true", "--pool-size", "1"]);
    let api = daemon.client();
    let (_, info) = api.raw(Method::GET, "/info", None).await;
    assert_eq!(info["boot_path"], "warm-pool");
    // One ready VM per pack.
    wait_for_pools(&api, 1).await;
    assert_eq!(daemon.vm_processes().len(), 3);
    let started = Instant::now();
    let id = api.create("python").await;
    let create_time = started.elapsed();
    assert_eq!(boot_path(&api, &id).await, "warm-pool");
    assert!(create_time < Duration::from_secs(5), "{create_time:?}");
    let out = api.exec(&id, IDENTITY_CODE).await;
    assert_eq!(out.stdout.lines().nth(2), Some(id.as_str()), "{out:?}");
    // The pool refills behind the hand-out.
    wait_for_pools(&api, 1).await;
    assert_eq!(daemon.vm_processes().len(), 4);
    assert_eq!(api.delete(&id).await, 204);
    let listed = api.raw(Method::GET, "/sandboxes", None).await.1;
    assert_eq!(
        listed["sandboxes"].as_array().unwrap().len(),
        0,
        "pooled VMs are not listed"
    );
}
