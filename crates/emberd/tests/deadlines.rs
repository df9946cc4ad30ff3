//! A guest that stops answering (its agent stopped, the VM paused) hangs
//! nothing: on the fake backend, whose agent can be told to take a call and
//! never answer it, each call to the guest fails within its bound with an
//! error that names it, leaves nothing behind, and a shutdown in the middle
//! of hung calls returns promptly. Also: the exec's answer is awaited past
//! the agent's drain limit, so output a lingering child writes after a
//! timeout comes back with the timeout's status.

mod fixture;

use std::time::{Duration, Instant};

use emberd::guest::bounds::{EXEC_DRAIN_LIMIT, IDENTITY_BOUND, QUIESCE_BOUND};
use emberd::vmm::fake::AgentCall;
use emberd_proto::boundary::DEFAULT_EXEC_DRAIN_LIMIT_MS;
use fixture::{wait_until, Daemon, Options};
use serde_json::json;

/// Slack on top of a bound for the work around the hung call.
const SLACK: Duration = Duration::from_secs(3);
/// How long a shutdown may take with every guest call hung.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(3);

/// Polls `condition` until it holds or `bound` passes; true when it held.
async fn within(bound: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while !condition() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn a_create_whose_agent_never_takes_its_identity_fails_within_the_bound() {
    let daemon = Daemon::start();
    daemon.backend.stop_answering(AgentCall::SetIdentity, true);
    let started = Instant::now();
    let error = tokio::time::timeout(IDENTITY_BOUND + SLACK, daemon.manager.create("python"))
        .await
        .expect("the create hangs")
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < IDENTITY_BOUND + SLACK, "took {elapsed:?}");
    let message = emberd::error_chain::render(&error);
    assert!(message.contains("did not answer SetIdentity"), "{message}");
    daemon.assert_nothing_left();

    daemon.backend.stop_answering(AgentCall::SetIdentity, false);
    let id = daemon.manager.create("python").await.unwrap();
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_create_whose_agent_never_says_hello_fails_within_the_boot_timeout() {
    let boot_timeout = Duration::from_millis(500);
    let daemon = Daemon::with(Options {
        boot_timeout,
        ..Options::default()
    });
    daemon.backend.stop_answering(AgentCall::Hello, true);
    let started = Instant::now();
    let error = tokio::time::timeout(boot_timeout + SLACK, daemon.manager.create("python"))
        .await
        .expect("the create hangs")
        .unwrap_err();
    assert!(
        started.elapsed() < boot_timeout + SLACK,
        "took {:?}",
        started.elapsed()
    );
    let message = emberd::error_chain::render(&error);
    assert!(message.contains("did not answer within"), "{message}");
    daemon.assert_nothing_left();
    daemon.stop().await;
}

#[tokio::test]
async fn a_template_build_whose_agent_never_quiesces_fails_and_creates_cold_boot() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        ..Options::default()
    });
    daemon.backend.stop_answering(AgentCall::Quiesce, true);
    wait_until("a build waits for Quiesce", || {
        daemon.backend.unanswered_calls() >= 1
    })
    .await;
    // Both builds give up (one after the other), stop their VMs and
    // publish nothing.
    let gave_up = within(2 * (QUIESCE_BOUND + SLACK), || {
        daemon.backend.boots_started() == 2
            && daemon.backend.unanswered_calls() == 0
            && daemon.backend.live_vms() == 0
    })
    .await;
    assert!(gave_up, "the builds still wait: {:?}", daemon.backend);
    assert_eq!(daemon.backend.snapshots_taken(), 0);
    assert!(daemon.sandbox_dirs().is_empty());

    daemon.backend.stop_answering(AgentCall::Quiesce, false);
    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

// Every place a guest can hang the daemon, at once: a create waiting for
// SetIdentity, a pool filler waiting for SetIdentity, and a template build
// waiting for its warm-up exec. The shutdown ends them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_promptly_while_every_guest_call_hangs() {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        pool_size: 1,
        ..Options::default()
    });
    daemon.backend.stop_answering(AgentCall::Exec, true);
    daemon.backend.stop_answering(AgentCall::SetIdentity, true);
    let create = tokio::spawn({
        let manager = daemon.manager.clone();
        async move { manager.create("shell").await }
    });
    wait_until("the build's warm-up and a create hang", || {
        daemon.backend.unanswered_calls() >= 2
    })
    .await;
    let started = Instant::now();
    tokio::time::timeout(SHUTDOWN_BOUND, daemon.manager.shutdown())
        .await
        .expect("the shutdown hangs");
    assert!(
        started.elapsed() < SHUTDOWN_BOUND,
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(create.await.unwrap().is_err());
    daemon.assert_nothing_left();
}

#[tokio::test]
async fn a_pool_filler_whose_agent_hangs_ends_at_shutdown() {
    let daemon = Daemon::with(Options {
        pool_size: 1,
        ..Options::default()
    });
    daemon.backend.stop_answering(AgentCall::SetIdentity, true);
    daemon.backend.stop_answering(AgentCall::Health, true);
    wait_until("the fillers' identity pushes hang", || {
        daemon.backend.unanswered_calls() >= 2
    })
    .await;
    let started = Instant::now();
    tokio::time::timeout(SHUTDOWN_BOUND, daemon.stop())
        .await
        .expect("the shutdown hangs");
    assert!(
        started.elapsed() < SHUTDOWN_BOUND,
        "{:?}",
        started.elapsed()
    );
}

// The agent drains a lingering child's output for the drain limit the
// request carries before it answers; the daemon waits longer than that.
#[tokio::test]
async fn output_written_after_a_timeout_comes_back_with_the_timeout() {
    let daemon = Daemon::start();
    let id = daemon.manager.create("python").await.unwrap();
    let started = Instant::now();
    let (status, body) = daemon
        .exec(
            &id,
            json!({ "code": "echo:before\nlinger\nblock", "timeout_ms": 100 }),
        )
        .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{body}");
    assert_eq!(body["exit_code"], -1, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("timed out"),
        "{body}"
    );
    let stdout = body["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("before\nlingering\n"), "{stdout}");
    assert_eq!(
        daemon.backend.last_drain_limit_ms(),
        DEFAULT_EXEC_DRAIN_LIMIT_MS
    );
    assert!(
        started.elapsed() >= EXEC_DRAIN_LIMIT,
        "the drain was cut short"
    );
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}
