//! Attacks on containment, with real VMs. The code in the guest runs as root
//! (`"user": "root"`) because the host-side bounds must hold even against a
//! guest that owns its kernel: it floods the console, stops answering, forks,
//! eats memory and disk, reboots and panics the kernel; a client storms
//! creates past the limit. Each test fails if the defence it attacks is
//! removed. See docs/security.md.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{eventually, Api, Daemon};

/// The console ring's bound (`vmm::console::CONSOLE_RING_BYTES`).
const CONSOLE_RING_BYTES: u64 = 1024 * 1024;
/// The daemon's RSS must stay under this while a guest floods its console.
const DAEMON_RSS_BOUND_MIB: u64 = 100;
/// Generous bounds for "answers at all": far below anything that would
/// mean a hang, far above a busy TCG host's worst case.
const ANSWER_BOUND: Duration = Duration::from_secs(90);
/// How soon after a guest dies its sandbox must show `exited`.
const EXITED_BOUND: Duration = Duration::from_secs(5);

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The largest regular file under `dir`, in bytes.
fn largest_file(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => largest_file(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Runs `code` as root in the guest and returns the status and body,
/// failing the test if no answer comes within [`ANSWER_BOUND`].
async fn exec_as_root(api: &Api, id: &str, code: &str, timeout_ms: u64) -> (u16, Value) {
    let request = json!({ "code": code, "user": "root", "timeout_ms": timeout_ms });
    tokio::time::timeout(ANSWER_BOUND, api.exec_raw(id, &request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {ANSWER_BOUND:?} to {code:?}"))
}

/// The sandbox still runs code.
async fn assert_answers(api: &Api, id: &str) {
    let out = tokio::time::timeout(ANSWER_BOUND, api.exec(id, "print(6*7)"))
        .await
        .unwrap_or_else(|_| panic!("sandbox {id} stopped answering"));
    assert_eq!(out.stdout, "42\n", "{out:?}");
}

/// DELETE answers 204 and the sandbox leaves no VMM and no directory.
async fn assert_deleted(daemon: &Daemon, api: &Api, id: &str) {
    let status = tokio::time::timeout(ANSWER_BOUND, api.delete(id))
        .await
        .expect("delete answered");
    assert_eq!(status, 204);
    assert!(!daemon.work_dir().join(id).exists(), "{id}'s dir is left");
}

#[tokio::test]
async fn a_console_flood_stays_in_its_ring_and_other_sandboxes_keep_answering() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (flooder, bystander) = tokio::join!(api.create("python"), api.create("python"));

    // Root in the guest writes to the serial console without pause for 30 s.
    let flood = r#"
import os, time
fd = os.open("/dev/ttyS0", os.O_WRONLY | os.O_NOCTTY)
line = b"flood " * 680 + b"\n"
written, end = 0, time.time() + 30
while time.time() < end:
    written += os.write(fd, line)
print(written)
"#;
    let flooding = {
        let api = api.clone();
        let flooder = flooder.clone();
        tokio::spawn(async move { exec_as_root(&api, &flooder, flood, 60_000).await })
    };

    let (mut answers, mut max_rss, mut max_file) = (0, 0, 0);
    while !flooding.is_finished() {
        assert_answers(&api, &bystander).await;
        answers += 1;
        max_rss = max_rss.max(rss_mib(daemon.pid()));
        max_file = max_file.max(largest_file(daemon.work_dir()));
        let info = api.sandbox(&flooder).await;
        let tail = info["console_tail"].as_str().unwrap_or("");
        assert!(tail.len() as u64 <= CONSOLE_RING_BYTES, "{}", tail.len());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = flooding.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let written: u64 = body["stdout"].as_str().unwrap().trim().parse().unwrap();
    eprintln!(
        "flood: {written} bytes in 30 s; bystander answered {answers} times; \
         daemon RSS peak {max_rss} MiB; largest file {max_file} bytes"
    );
    assert!(
        written > CONSOLE_RING_BYTES,
        "the flood wrote only {written} bytes"
    );
    assert!(answers >= 5, "the bystander answered {answers} times");
    assert!(max_rss < DAEMON_RSS_BOUND_MIB, "daemon RSS {max_rss} MiB");
    assert!(max_file <= CONSOLE_RING_BYTES, "a file grew to {max_file}");
    let tail = api.sandbox(&flooder).await["console_tail"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(tail.contains("flood flood"), "{tail:?}");
    assert_answers(&api, &flooder).await;
    assert_deleted(&daemon, &api, &flooder).await;
    assert_deleted(&daemon, &api, &bystander).await;
}

#[tokio::test]
async fn a_guest_that_stops_answering_cannot_hang_exec_delete_or_shutdown() {
    let mut daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (frozen, bystander) = tokio::join!(api.create("python"), api.create("python"));

    // The whole VM stops: no vCPU runs, nothing in the guest answers.
    let vmm = api.vmm_pid(&frozen).await;
    kill(Pid::from_raw(vmm as i32), Signal::SIGSTOP).unwrap();

    let started = Instant::now();
    let (status, body) = exec_as_root(&api, &frozen, "print(1)", 1_000).await;
    eprintln!(
        "exec on a frozen VM answered {status} after {:?}",
        started.elapsed()
    );
    assert!(status >= 400, "{status} {body}");
    assert!(body["error"].is_string(), "{body}");
    assert_answers(&api, &bystander).await;

    let started = Instant::now();
    assert_deleted(&daemon, &api, &frozen).await;
    eprintln!("delete of a frozen VM took {:?}", started.elapsed());
    assert!(!emberd_harness::is_alive(vmm));

    // Shutdown with a frozen VM still ends, and leaves nothing.
    let second = api.vmm_pid(&bystander).await;
    kill(Pid::from_raw(second as i32), Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let exit = support::signal_and_wait(&mut daemon, Signal::SIGTERM);
    eprintln!("shutdown with a frozen VM took {:?}", started.elapsed());
    assert!(exit.success(), "{exit:?}\n{}", daemon.log_text());
    assert!(!emberd_harness::is_alive(second));
}

#[tokio::test]
async fn fork_memory_and_disk_bombs_stay_inside_their_sandbox() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (victim, bystander) = tokio::join!(api.create("python"), api.create("python"));

    let bombs = [
        (
            "fork bomb",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        ),
        (
            "memory bomb",
            "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
        ),
        (
            "disk fill",
            "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))\n    f.flush()\n",
        ),
    ];
    for (name, code) in bombs {
        let started = Instant::now();
        let (status, body) = exec_as_root(&api, &victim, code, 5_000).await;
        eprintln!("{name}: {status} after {:?}: {body}", started.elapsed());
        assert_eq!(status, 200, "{name}: {body}");
        assert_ne!(body["exit_code"], 0, "{name}: {body}");
        assert_answers(&api, &bystander).await;
        assert_answers(&api, &victim).await;
        assert!(
            largest_file(daemon.work_dir()) <= CONSOLE_RING_BYTES,
            "{name} grew a host file"
        );
        // Clean up what the bomb left, so the next one starts fresh.
        exec_as_root(
            &api,
            &victim,
            "import os\nos.system('rm -f /tmp/fill')",
            30_000,
        )
        .await;
    }
    assert_deleted(&daemon, &api, &victim).await;
    assert_deleted(&daemon, &api, &bystander).await;
}

/// A guest that ends its own VM (sysrq `b` reboots at once, sysrq `c`
/// panics the kernel): its sandbox is `exited` with a reason within
/// [`EXITED_BOUND`], execs on it are 409, the other sandbox is untouched,
/// and delete cleans up.
async fn a_dying_guest_is_noticed(trigger: &str) {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (victim, bystander) = tokio::join!(api.create("python"), api.create("python"));
    let vmm = api.vmm_pid(&victim).await;

    let code = format!("open('/proc/sysrq-trigger', 'w').write({trigger:?})");
    let (status, body) = exec_as_root(&api, &victim, &code, 30_000).await;
    let answered = Instant::now();
    eprintln!("sysrq {trigger}: exec answered {status}: {body}");
    assert!(
        eventually(Duration::from_secs(30), || !emberd_harness::is_alive(vmm)),
        "the VMM outlived its guest"
    );
    let vmm_gone = Instant::now();
    let mut info = api.sandbox(&victim).await;
    while info["state"] != "exited" && vmm_gone.elapsed() < EXITED_BOUND {
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = api.sandbox(&victim).await;
    }
    eprintln!(
        "sysrq {trigger}: exited {:?} after the VMM ended ({:?} after the exec answered): {info}",
        vmm_gone.elapsed(),
        answered.elapsed()
    );
    assert_eq!(info["state"], "exited", "{info}");
    assert!(
        info["exit_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{info}"
    );

    let (status, body) = api.exec_raw(&victim, &json!({ "code": "print(1)" })).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("sandbox has stopped")),
        "{body}"
    );
    assert_answers(&api, &bystander).await;
    assert_deleted(&daemon, &api, &victim).await;
    assert_deleted(&daemon, &api, &bystander).await;
}

#[tokio::test]
async fn reboot_from_inside_ends_the_sandbox_as_exited() {
    a_dying_guest_is_noticed("b").await;
}

#[tokio::test]
async fn a_kernel_panic_ends_the_sandbox_as_exited() {
    a_dying_guest_is_noticed("c").await;
}

#[tokio::test]
async fn a_create_storm_past_the_limit_gets_only_201s_and_429s() {
    let daemon = support::start(&["--max-sandboxes", "2"]);
    let api = support::api(&daemon);
    let creates = (0..6).map(|_| {
        let api = api.clone();
        async move {
            let request = json!({ "language_pack": "python" }).to_string();
            let response = api
                .http
                .post(format!("{}/sandboxes", api.base))
                .header("content-type", "application/json")
                .body(request)
                .send()
                .await
                .expect("create answered");
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.expect("JSON body");
            (status, retry_after, body)
        }
    });
    let answers = futures::future::join_all(creates).await;
    let mut made = Vec::new();
    for (status, retry_after, body) in answers {
        match status {
            201 => made.push(body["id"].as_str().unwrap().to_owned()),
            429 => {
                assert!(retry_after.is_some(), "429 without Retry-After: {body}");
                assert!(body["error"].is_string(), "{body}");
            }
            other => panic!("create answered {other}: {body}"),
        }
    }
    assert!(!made.is_empty() && made.len() <= 2, "{made:?}");
    for id in &made {
        assert_answers(&api, id).await;
        assert_deleted(&daemon, &api, id).await;
    }
    assert!(daemon.vm_processes().is_empty(), "VMMs left behind");
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
    // Room again: the next create is served.
    let id = api.create("python").await;
    assert_deleted(&daemon, &api, &id).await;
}
