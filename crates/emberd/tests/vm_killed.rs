//! A VM killed under a live sandbox (its VMM SIGKILLed from outside),
//! between execs and during one: the sandbox becomes `exited` and the exec
//! answers 409 `sandbox has stopped: …` instead of hanging, the daemon keeps serving the other sandboxes, and
//! DELETE still cleans up. Real VMs, like e2e.rs.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{eventually, Api, Daemon};

/// Far below the exec's own timeout: an answer within it comes from the
/// VM's death, not from a timeout.
const ANSWER_BOUND: Duration = Duration::from_secs(30);
const LONG_TIMEOUT_MS: u64 = 600_000;

/// SIGKILLs sandbox `id`'s VMM and waits until the daemon has reaped it.
async fn kill_vmm(api: &Api, id: &str) -> u32 {
    let pid = api.vmm_pid(id).await;
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !std::path::Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "VMM {pid} was not reaped"
    );
    pid
}

/// The answer to an exec on a sandbox whose VM is gone.
fn assert_stopped(status: u16, body: &Value) {
    assert_eq!(status, 409, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(
        message.starts_with("sandbox has stopped: the VM exited with signal 9"),
        "{body}"
    );
}

/// DELETE answers 204 and leaves neither the VMM nor the directory.
async fn assert_deleted_cleanly(daemon: &Daemon, api: &Api, id: &str, vmm_pid: u32) {
    assert_eq!(api.delete(id).await, 204);
    assert!(!daemon.work_dir().join(id).exists());
    assert!(!emberd_harness::is_alive(vmm_pid));
    let (status, _) = api
        .raw(reqwest::Method::GET, &format!("/sandboxes/{id}"), None)
        .await;
    assert_eq!(status, 404);
}

/// Deleting the daemon's last sandbox leaves no VMM and no sandbox directory.
async fn assert_last_one_deleted_cleanly(daemon: &Daemon, api: &Api, id: &str) {
    assert_eq!(api.delete(id).await, 204);
    assert!(daemon.vm_processes().is_empty());
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
}

#[tokio::test]
async fn a_vm_killed_between_execs_fails_the_next_exec_and_nothing_else() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (victim, bystander) = tokio::join!(api.create("python"), api.create("python"));
    assert_eq!(api.exec(&victim, "print(1)").await.stdout, "1\n");

    let vmm_pid = kill_vmm(&api, &victim).await;
    let request = json!({ "code": "print(2)", "timeout_ms": LONG_TIMEOUT_MS });
    let (status, body) = tokio::time::timeout(ANSWER_BOUND, api.exec_raw(&victim, &request))
        .await
        .expect("the exec on a dead VM answered");
    assert_stopped(status, &body);
    let (status, info) = api
        .raw(reqwest::Method::GET, &format!("/sandboxes/{victim}"), None)
        .await;
    assert_eq!((status, &info["state"]), (200, &json!("exited")), "{info}");
    assert!(info["exit_reason"].is_string(), "{info}");

    // The other sandbox is untouched.
    assert_eq!(api.exec(&bystander, "print(3)").await.stdout, "3\n");
    assert_deleted_cleanly(&daemon, &api, &victim, vmm_pid).await;
    assert_eq!(
        daemon.vm_processes().len(),
        1,
        "{:?}",
        daemon.vm_processes()
    );
    assert_eq!(api.exec(&bystander, "print(4)").await.stdout, "4\n");
    assert_last_one_deleted_cleanly(&daemon, &api, &bystander).await;
}

#[tokio::test]
async fn a_vm_killed_during_an_exec_ends_the_exec_with_an_error() {
    let daemon = support::start(&[]);
    let api = support::api(&daemon);
    let (victim, bystander) = tokio::join!(api.create("python"), api.create("python"));
    let runner = {
        let api = api.clone();
        let id = victim.clone();
        let code = "import time\nopen('/tmp/running', 'w').close()\ntime.sleep(600)";
        tokio::spawn(async move {
            api.exec_raw(&id, &json!({ "code": code, "timeout_ms": LONG_TIMEOUT_MS }))
                .await
        })
    };
    api.wait_for_output(
        &victim,
        "import os; print(os.path.exists('/tmp/running'))",
        "True\n",
        Duration::from_secs(60),
    )
    .await;

    let vmm_pid = kill_vmm(&api, &victim).await;
    let (status, body) = tokio::time::timeout(ANSWER_BOUND, runner)
        .await
        .expect("the running exec answered")
        .unwrap();
    assert_stopped(status, &body);

    assert_eq!(api.exec(&bystander, "print(5)").await.stdout, "5\n");
    assert_deleted_cleanly(&daemon, &api, &victim, vmm_pid).await;
    assert_last_one_deleted_cleanly(&daemon, &api, &bystander).await;
}
