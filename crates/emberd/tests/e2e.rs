//! End to end: the real daemon booting real VMs (QEMU/TCG here, or the
//! backend named by `EMBERD_TEST_BACKEND`), driven over HTTP.
//!
//! These tests need the images built by `make images`. They fail, never
//! skip, when a VM does not come up.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::json;
use support::eventually;

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);

    let (status, body) = api
        .raw(Method::POST, "/sandboxes", Some(b"{not json".to_vec()))
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("invalid JSON"),
        "{body}"
    );

    let (status, body) = api
        .raw(
            Method::POST,
            "/sandboxes",
            Some(br#"{"language_pack":"ruby"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body, json!({ "error": "unknown language pack: \"ruby\"" }));

    let (status, body) = api
        .raw(Method::POST, "/sandboxes", Some(vec![b' '; 8 * 1024]))
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string());

    for (method, path) in [
        (Method::POST, "/sandboxes/sb_000000000000/exec"),
        (Method::GET, "/sandboxes/sb_000000000000"),
        (Method::DELETE, "/sandboxes/sb_000000000000"),
        (Method::DELETE, "/sandboxes/..%2F..%2Fetc"),
    ] {
        let body = (method == Method::POST).then(|| br#"{"code":"print(1)"}"#.to_vec());
        let (status, reply) = api.raw(method.clone(), path, body).await;
        assert_eq!(status, 404, "{method} {path}: {reply}");
        assert_eq!(reply, json!({ "error": "sandbox not found" }));
    }

    let (status, info) = api.raw(Method::GET, "/info", None).await;
    assert_eq!(status, 200);
    assert_eq!(info["packs"], json!(["node", "python", "shell"]));
    assert_eq!(info["guest_ram_mib"], 256);
    assert_eq!(info["boot_path"], "cold-boot");
    assert_eq!(info["backend"], support::test_backend());

    let (status, _) = api.raw(Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
}

/// Starts a child, writes its own and the child's PIDs to `/tmp/victims`,
/// prints a line and sleeps past any timeout.
const TIMED_OUT_CODE: &str = "import os, time
child = os.fork()
if child == 0:
    os.execvp('sleep', ['sleep', '600'])
open('/tmp/victims', 'w').write(f'{os.getpid()} {child}')
print('before', flush=True)
time.sleep(600)";

/// Prints which of the PIDs in `/tmp/victims` still run (not zombies),
/// after giving the kill up to 5 s to land.
const LIVE_VICTIMS_CODE: &str = "import time
pids = open('/tmp/victims').read().split()
def alive():
    found = []
    for pid in pids:
        try:
            state = open(f'/proc/{pid}/stat').read().rsplit(') ', 1)[1][0]
        except FileNotFoundError:
            continue
        if state != 'Z':
            found.append(int(pid))
    return found
deadline = time.monotonic() + 5
while alive() and time.monotonic() < deadline:
    time.sleep(0.05)
print(f'victims: {len(pids)}, alive: {alive()}')";

#[tokio::test]
async fn python_sandbox_runs_code_and_reports_exits() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (status, body) = api.raw(Method::POST, "/sandboxes", Some(Vec::new())).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("sb_") && id.len() == 15, "{id}");

    let out = api.exec(&id, "print(6*7)").await;
    assert_eq!((out.stdout.as_str(), out.exit_code), ("42\n", 0), "{out:?}");
    assert_eq!(out.error, None);
    // The three clocks nest: the agent's time within the VM's, the VM's
    // within the daemon's.
    let agent_us = out.duration_us.expect("duration_us");
    let vm_us = out.vm_duration_us.expect("vm_duration_us");
    assert!(
        0 < agent_us && agent_us <= vm_us && vm_us <= (out.duration_ms + 1) * 1000,
        "{out:?}"
    );

    let out = api.exec(&id, "exit(7)").await;
    assert_eq!(out.exit_code, 7, "{out:?}");

    let out = api.exec(&id, "raise ValueError('boom')").await;
    assert_eq!(out.exit_code, 1);
    assert!(
        out.stderr.contains("Traceback") && out.stderr.contains("ValueError: boom"),
        "{out:?}"
    );

    let out = api
        .exec_with(
            &id,
            json!({ "code": "import sys; print(sys.stdin.read().upper())", "stdin": "hello" }),
        )
        .await;
    assert_eq!(out.stdout, "HELLO\n");

    // The timed-out code and a child it started note their PIDs first.
    let started = Instant::now();
    let out = api
        .exec_with(&id, json!({ "code": TIMED_OUT_CODE, "timeout_ms": 3000 }))
        .await;
    assert_eq!(out.exit_code, -1, "{out:?}");
    assert_eq!(out.error.as_deref(), Some("execution timed out"));
    assert_eq!(out.stdout, "before\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Both were killed, and the sandbox still works after a timeout.
    let out = api.exec(&id, LIVE_VICTIMS_CODE).await;
    assert_eq!(out.stdout, "victims: 2, alive: []\n", "{out:?}");

    assert_eq!(api.delete(&id).await, 204);
}

#[tokio::test]
async fn files_persist_within_a_sandbox_and_not_across() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (a, b) = tokio::join!(api.create("python"), api.create("python"));

    let out = api
        .exec(&a, "open('/tmp/note.txt','w').write('kept')")
        .await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let out = api.exec(&a, "print(open('/tmp/note.txt').read())").await;
    assert_eq!(out.stdout, "kept\n");
    // Code starts in the sandbox user's home: a relative file lands there.
    let out = api
        .exec(&a, "open('home.txt','w').write('x'); print('ok')")
        .await;
    assert_eq!(out.stdout, "ok\n", "{out:?}");
    let out = api
        .exec(&a, "print(open('/home/sandbox/home.txt').read())")
        .await;
    assert_eq!(out.stdout, "x\n", "{out:?}");

    let out = api
        .exec(
            &b,
            "import os; print(os.path.exists('/tmp/note.txt'), os.path.exists('/home/sandbox/home.txt'))",
        )
        .await;
    assert_eq!(out.stdout, "False False\n", "{out:?}");

    assert_eq!(api.delete(&a).await, 204);
    assert_eq!(api.delete(&b).await, 204);
}

#[tokio::test]
async fn shell_and_node_packs_run() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let shell = api.create("shell").await;
    let out = api.exec(&shell, "uname -r; echo err >&2; exit 3").await;
    assert_eq!(out.exit_code, 3, "{out:?}");
    // The guest runs the kernel the manifest names.
    let manifest = emberd::image::Manifest::load(&support::data_dir()).expect("images built");
    assert_eq!(out.stdout, format!("{}\n", manifest.kernel.release));
    assert_eq!(out.stderr, "err\n");

    let node = api.create("node").await;
    let out = api.exec(&node, "console.log(6*7)").await;
    assert_eq!((out.stdout.as_str(), out.exit_code), ("42\n", 0), "{out:?}");

    assert_eq!(api.delete(&shell).await, 204);
    assert_eq!(api.delete(&node).await, 204);
}

#[tokio::test]
async fn delete_removes_everything_and_a_second_delete_is_404() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;

    let (status, info) = api
        .raw(Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(info["state"], "running");
    assert_eq!(info["pack"], "python");
    let pid = info["vmm_pid"].as_u64().expect("vmm_pid") as u32;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let (status, list) = api.raw(Method::GET, "/sandboxes", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["sandboxes"][0]["id"], id.as_str());

    assert_eq!(api.delete(&id).await, 204);
    assert_eq!(api.delete(&id).await, 404);
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
    let (_, list) = api.raw(Method::GET, "/sandboxes", None).await;
    assert_eq!(list["sandboxes"], json!([]));
}

#[tokio::test]
async fn eight_sandboxes_at_once() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let ids = futures::future::join_all((0..8).map(|_| api.create("python"))).await;
    let outputs = futures::future::join_all(ids.iter().enumerate().map(|(i, id)| {
        let api = api.clone();
        let id = id.clone();
        async move { api.exec(&id, &format!("print({i} * 6)")).await }
    }))
    .await;
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out.stdout, format!("{}\n", i * 6), "{out:?}");
    }
    assert_eq!(daemon.vm_processes().len(), 8);
    let statuses = futures::future::join_all(ids.iter().map(|id| api.delete(id))).await;
    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    assert!(daemon.vm_processes().is_empty());
    assert!(daemon.sandbox_dirs().is_empty());
}

/// Marks this exec as arrived in /tmp, then waits (up to 60 s, else exits 9)
/// until 20 have.
const BARRIER_CODE: &str = "import os, sys, time
open(f'/tmp/arrived-{os.getpid()}', 'w').close()
deadline = time.monotonic() + 60
while sum(name.startswith('arrived-') for name in os.listdir('/tmp')) < 20:
    if time.monotonic() > deadline:
        sys.exit(9)
    time.sleep(0.05)";

#[tokio::test]
async fn twenty_concurrent_execs_on_one_sandbox() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    // A barrier in the guest: each exec waits until all 20 have started, so
    // execs run one at a time would never get past it.
    let outputs = futures::future::join_all((0..20).map(|i| {
        let api = api.clone();
        let id = id.clone();
        let code = format!("{BARRIER_CODE}\nprint({i} ** 2)");
        async move {
            let request = json!({ "code": code, "timeout_ms": 120_000 });
            (i, api.exec_with(&id, request).await)
        }
    }))
    .await;
    for (i, out) in outputs {
        assert_eq!(out.stdout, format!("{}\n", i * i), "{out:?}");
        assert_eq!(out.exit_code, 0);
    }
    assert_eq!(api.delete(&id).await, 204);
}

#[tokio::test]
async fn delete_during_an_exec_ends_the_exec_with_a_409() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let id = api.create("python").await;
    let runner = {
        let api = api.clone();
        let id = id.clone();
        let code = "import time\nopen('/tmp/running', 'w').close()\ntime.sleep(120)";
        tokio::spawn(async move {
            api.exec_raw(&id, &json!({ "code": code, "timeout_ms": 600_000 }))
                .await
        })
    };
    // A second exec sees the marker the first one wrote: it is running.
    api.wait_for_output(
        &id,
        "import os; print(os.path.exists('/tmp/running'))",
        "True\n",
        Duration::from_secs(60),
    )
    .await;
    assert!(!runner.is_finished());
    assert_eq!(api.delete(&id).await, 204);
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), runner)
        .await
        .expect("the exec ended")
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body,
        json!({ "error": "sandbox was deleted while the code was running" })
    );
    assert!(!daemon.work_dir().join(&id).exists());
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
}

#[tokio::test]
async fn sigterm_stops_every_vm_and_exits_zero() {
    let mut daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (a, b) = tokio::join!(api.create("python"), api.create("shell"));
    assert!(!a.is_empty() && !b.is_empty());
    assert_eq!(daemon.vm_processes().len(), 2);
    let status = support::signal_and_wait(&mut daemon, Signal::SIGTERM);
    assert!(status.success(), "{status}:\n{}", daemon.log_text());
    assert!(
        daemon.vm_processes().is_empty(),
        "{:?}",
        daemon.vm_processes()
    );
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
}

#[tokio::test]
async fn a_restart_after_sigkill_leaves_nothing_behind() {
    let mut daemon = support::start(&[]);
    let api = support::api(&daemon);
    let _a = api.create("python").await;
    let _b = api.create("python").await;
    assert_eq!(daemon.vm_processes().len(), 2);
    support::signal_and_wait(&mut daemon, Signal::SIGKILL);
    // PR_SET_PDEATHSIG takes the VMs down with the daemon.
    assert!(
        eventually(Duration::from_secs(10), || daemon.vm_processes().is_empty()),
        "VMs outlived the daemon: {:?}",
        daemon.vm_processes()
    );
    assert_eq!(daemon.sandbox_dirs().len(), 2);
    let restarted = support::start_in(daemon.work_dir(), &[]);
    assert!(
        restarted.sandbox_dirs().is_empty(),
        "{:?}",
        restarted.sandbox_dirs()
    );
    assert!(restarted.vm_processes().is_empty());
    let api = support::api(&restarted);
    let id = api.create("python").await;
    assert_eq!(api.exec(&id, "print('again')").await.stdout, "again\n");
}
