//! Template snapshots and warm pools against real VMs: restored clones get
//! their own identity, a corrupted template falls back to a cold boot, and
//! a pooled sandbox is handed out and replaced.

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use support::{eventually, Api};

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

/// How long templates wait before their first restore in the clock check.
const TEMPLATE_AGE: Duration = Duration::from_secs(5);
/// How far a restored guest's clock may be from the host's, in seconds.
const CLOCK_TOLERANCE: f64 = 2.0;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

const IDENTITY_CODE: &str = "import random, socket\nprint(open('/proc/sys/kernel/random/uuid').read().strip())\nprint(random.getrandbits(64))\nprint(socket.gethostname())\nprint(socket.gethostbyname(socket.gethostname()))";

#[tokio::test]
async fn clones_of_one_template_get_their_own_identity() {
    let daemon = support::start(&["--snapshots", "true", "--pool-size", "0"]);
    let api = support::api(&daemon);
    api.wait_for_boot_path("snapshot-restore", Duration::from_secs(240))
        .await;
    // Age the templates: a clock frozen at snapshot time is now this far behind.
    tokio::time::sleep(TEMPLATE_AGE).await;
    let (a, b) = tokio::join!(api.create("python"), api.create("python"));
    assert_eq!(boot_path(&api, &a).await, "snapshot-restore");
    assert_eq!(boot_path(&api, &b).await, "snapshot-restore");
    let (out_a, out_b) = tokio::join!(api.exec(&a, IDENTITY_CODE), api.exec(&b, IDENTITY_CODE));
    let lines_a: Vec<&str> = out_a.stdout.lines().collect();
    let lines_b: Vec<&str> = out_b.stdout.lines().collect();
    assert_eq!(lines_a.len(), 4, "{out_a:?}");
    assert_eq!(lines_b.len(), 4, "{out_b:?}");
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
    // `/etc/hosts` names the clone, so its own name resolves without DNS.
    assert_eq!(lines_a[3], "127.0.1.1");
    assert_eq!(lines_b[3], "127.0.1.1");
    // The clock was set on restore, not frozen at snapshot time.
    let before = unix_now();
    let out = api.exec(&a, "import time; print(time.time())").await;
    let after = unix_now();
    let guest_now: f64 = out.stdout.trim().parse().unwrap();
    assert!(
        before - CLOCK_TOLERANCE <= guest_now && guest_now <= after + CLOCK_TOLERANCE,
        "guest clock {guest_now}, host {before}..{after}"
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
    // A data dir of its own: the templates damaged here are nobody else's.
    let data = tempfile::Builder::new()
        .prefix("embd")
        .tempdir_in("/tmp")
        .unwrap();
    emberd_harness::share_images(&support::data_dir(), data.path()).unwrap();
    let daemon = support::builder(&["--snapshots", "true", "--pool-size", "0"])
        .data_dir(data.path())
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let api = support::api(&daemon);
    api.wait_for_boot_path("snapshot-restore", Duration::from_secs(240))
        .await;
    let snapshots = data.path().join("snapshots");
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
    // Same size, other first bytes: the files look whole, the restore fails,
    // and only the checksum check finds the damage.
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(template.join("vm.migration"))
            .unwrap();
        file.write_all(b"this is not a migration stream").unwrap();
    }

    let id = api.create("python").await;
    assert_eq!(boot_path(&api, &id).await, "cold-boot");
    assert_eq!(api.exec(&id, "print(6*7)").await.stdout, "42\n");
    assert!(
        daemon.log_text().contains("falling back to a cold boot"),
        "{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("the template is corrupt"),
        "{}",
        daemon.log_text()
    );
    // The broken template is gone and a new one is built in its place.
    let api2 = api.clone();
    let damaged = |path: &std::path::Path| {
        use std::io::Read;
        let mut head = [0u8; 30];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok_and(|()| &head == b"this is not a migration stream")
    };
    assert!(
        eventually(Duration::from_secs(30), || !damaged(
            &template.join("vm.migration")
        )),
        "the corrupted template stayed"
    );
    api2.wait_for_boot_path("snapshot-restore", Duration::from_secs(240))
        .await;
    let again = api.create("python").await;
    assert_eq!(boot_path(&api, &again).await, "snapshot-restore");
    assert_eq!(
        api.exec(&again, "print('restored')").await.stdout,
        "restored\n"
    );
}

#[tokio::test]
async fn a_pooled_sandbox_is_handed_out_and_replaced() {
    let daemon = support::start(&["--snapshots", "true", "--pool-size", "1"]);
    let api = support::api(&daemon);
    // One ready VM per pack.
    wait_for_pools(&api, 1).await;
    assert_eq!(daemon.vm_processes().len(), 3);
    let pooled = daemon.children();
    let id = api.create("python").await;
    assert_eq!(boot_path(&api, &id).await, "warm-pool");
    // The sandbox runs on a VM that was already there, not a fresh one.
    let vmm_pid = api.vmm_pid(&id).await;
    assert!(
        pooled.contains(&vmm_pid),
        "VMM {vmm_pid} was not among the pooled {pooled:?}"
    );
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
