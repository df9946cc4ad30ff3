//! Copy-on-write templates against real VMs: a QEMU template keeps guest
//! RAM in a file beside a small device-state file, its clones map that file
//! privately (their writes never reach it) and share its pages, and the
//! daemon's shutdown leaves no VMM behind.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::Api;

fn template_of(data: &Path, pack: &str) -> PathBuf {
    std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pack}-")))
        })
        .unwrap_or_else(|| panic!("no {pack} template"))
}

fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    hex::encode(hash.finalize())
}

/// Resident and proportional size (KiB) of `pid`'s mappings of `file`.
fn mapping_kib(pid: u32, file: &Path) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let name = file.to_string_lossy();
    let (mut rss, mut pss, mut inside) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = line.ends_with(name.as_ref());
            continue;
        }
        if !inside {
            continue;
        }
        let value = |l: &str| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
        if line.starts_with("Rss:") {
            rss += value(line);
        } else if line.starts_with("Pss:") {
            pss += value(line);
        }
    }
    (rss, pss)
}

async fn boot_path(api: &Api, id: &str) -> String {
    api.sandbox(id).await["boot_path"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Touches `mib` MiB of fresh guest memory, page by page, and keeps it.
fn dirty_code(mib: u32) -> String {
    format!(
        "import builtins\nb = bytearray({mib} << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 7\nbuiltins.keep = b\nprint(sum(b[::4096]))"
    )
}

#[tokio::test]
async fn clones_map_the_template_ram_privately_and_share_its_pages() {
    // A data dir of its own: its templates are of this build's format.
    let data = tempfile::Builder::new()
        .prefix("embd")
        .tempdir_in("/tmp")
        .unwrap();
    emberd_harness::share_images(&support::data_dir(), data.path()).unwrap();
    // Only the python template: its first cold boot asks for it.
    let mut daemon = support::builder(&["--snapshots", "true", "--pool-size", "0", "--skip-warm"])
        .data_dir(data.path())
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let api = support::api(&daemon);
    let first = api.create("python").await;
    assert_eq!(boot_path(&api, &first).await, "cold-boot");
    assert_eq!(api.delete(&first).await, 204);
    api.wait_for_boot_path("snapshot-restore", Duration::from_secs(900))
        .await;

    let template = template_of(data.path(), "python");
    let ram = template.join("guest.ram");
    let state = std::fs::metadata(template.join("vm.migration"))
        .unwrap()
        .len();
    assert!(ram.is_file(), "the template has no RAM file");
    assert!(
        state < 4 << 20,
        "the device state is {state} bytes: guest RAM went into the stream"
    );
    let before = sha256_file(&ram);

    let (a, b) = tokio::join!(api.create("python"), api.create("python"));
    assert_eq!(boot_path(&api, &a).await, "snapshot-restore");
    assert_eq!(boot_path(&api, &b).await, "snapshot-restore");
    for id in [&a, &b] {
        assert_eq!(api.exec(id, "print(6*7)").await.stdout, "42\n");
    }
    // Both clones map the template's RAM file and share its pages.
    for id in [&a, &b] {
        let pid = api.vmm_pid(id).await;
        let (rss, pss) = mapping_kib(pid, &ram);
        assert!(rss > 8 << 10, "clone {id} maps only {rss} KiB of {ram:?}");
        assert!(
            pss * 10 <= rss * 7,
            "clone {id}: PSS {pss} KiB of a {rss} KiB resident mapping: pages not shared"
        );
    }

    // A clone's writes (fresh memory, a file in its tmpfs) stay its own.
    let out = api.exec(&a, &dirty_code(64)).await;
    assert_eq!(out.stdout, format!("{}\n", 7 * 64 * 256), "{out:?}");
    let out = api
        .exec(&a, "open('/tmp/big','wb').write(b'z' * (16 << 20))")
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(
        api.exec(&b, "print('still here')").await.stdout,
        "still here\n"
    );
    assert_eq!(
        sha256_file(&ram),
        before,
        "a clone wrote the template's RAM file"
    );
    assert_eq!(api.delete(&a).await, 204);
    assert_eq!(api.delete(&b).await, 204);
    assert_eq!(
        sha256_file(&ram),
        before,
        "a clone's end changed the RAM file"
    );

    // A fresh clone still restores from the untouched file.
    let c = api.create("python").await;
    assert_eq!(boot_path(&api, &c).await, "snapshot-restore");
    assert_eq!(api.exec(&c, "print(6*7)").await.stdout, "42\n");

    // The daemon's shutdown leaves no VMM behind.
    let vmms = daemon.vm_processes();
    assert!(!vmms.is_empty());
    let status = support::signal_and_wait(&mut daemon, nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{status:?}");
    assert!(
        support::eventually(Duration::from_secs(10), || vmms
            .iter()
            .all(|pid| !emberd_harness::is_alive(*pid))),
        "VMMs {vmms:?} outlived the daemon"
    );
}
