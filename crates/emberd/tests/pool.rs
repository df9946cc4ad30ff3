//! Warm pools on the fake VM backend: a pooled VM runs its pack's warm-up
//! before it counts as ready, a failed warm-up discards the VM, refills
//! keep to their bound, and a pool's size follows demand (it grows on
//! misses, shrinks when idle, and never holds more than the memory cap).

mod fixture;

use std::time::Duration;

use emberd::sandbox::PoolPolicy;
use emberd::vmm::fake::{AgentCall, FakeVmHandle};
use fixture::{wait_until, wait_until_async, Daemon, Options, MEMORY_MIB};

/// The value of the metric line starting with `series`, if scraped.
fn metric(daemon: &Daemon, series: &str) -> Option<u64> {
    daemon
        .manager
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn pool_target(daemon: &Daemon, pack: &str) -> u64 {
    metric(daemon, &format!("emberd_pool_target{{pack=\"{pack}\"}}")).unwrap_or(0)
}

fn pool_misses(daemon: &Daemon, pack: &str) -> u64 {
    metric(
        daemon,
        &format!("emberd_pool_misses_total{{pack=\"{pack}\"}}"),
    )
    .unwrap_or(0)
}

fn execs(vm: &FakeVmHandle) -> usize {
    vm.agent_calls()
        .iter()
        .filter(|c| **c == AgentCall::Exec)
        .count()
}

#[tokio::test]
async fn a_pooled_vm_ran_its_warm_up_before_it_is_handed_out() {
    let daemon = Daemon::with_full_python_pool(1).await;
    let pooled = daemon.live_vms_of("python").remove(0);
    let calls = pooled.agent_calls();
    let identity = calls.iter().position(|c| *c == AgentCall::SetIdentity);
    let warm_up = calls.iter().position(|c| *c == AgentCall::Exec);
    assert!(
        matches!((identity, warm_up), (Some(i), Some(w)) if i < w),
        "the warm-up exec follows the identity push: {calls:?}"
    );
    assert_eq!(execs(&pooled), 1);

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.vm_of(&id).await.pid(), pooled.pid());
    assert_eq!(daemon.exec_ok(&id, "echo:first").await["stdout"], "first\n");
    assert_eq!(execs(&pooled), 2, "one warm-up, one exec of the caller's");
    assert_eq!(pool_misses(&daemon, "python"), 0);
    daemon.manager.delete(&id).await.unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn a_vm_whose_warm_up_has_not_answered_is_not_ready() {
    let daemon = Daemon::with(Options {
        pool_size: 1,
        ..Options::default()
    });
    daemon.backend.stop_answering(AgentCall::Exec, true);
    wait_until("both pools' warm-ups are under way", || {
        daemon.backend.unanswered_calls() == 2
    })
    .await;
    assert_eq!(daemon.pool_ready("python").await, 0);
    // The create finds nothing ready: a miss, served by a boot of its own.
    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    assert_eq!(pool_misses(&daemon, "python"), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_failed_warm_up_discards_the_vm() {
    let daemon = Daemon::with(Options {
        pool_size: 1,
        warmup: "stderr:no good\nexit:3".into(),
        ..Options::default()
    });
    wait_until("a pool VM was booted, warmed up and stopped", || {
        let vms = daemon.backend.vms();
        !vms.is_empty() && vms.iter().all(|vm| !vm.is_live() && execs(vm) == 1)
    })
    .await;
    assert_eq!(daemon.pool_ready("python").await, 0);
    assert_eq!(daemon.pool_ready("shell").await, 0);
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );
    daemon.stop().await;
}

#[tokio::test]
async fn refills_keep_to_their_bound() {
    let daemon = Daemon::with(Options {
        pool_size: 2,
        pool: PoolPolicy {
            max_refills: 1,
            ..PoolPolicy::default()
        },
        ..Options::default()
    });
    wait_until_async("both pools are full", || async {
        daemon.pool_ready("python").await == 2 && daemon.pool_ready("shell").await == 2
    })
    .await;
    // One VM taken from each pool, with every warm-up left unanswered:
    // the first refill holds the only refill turn.
    daemon.backend.stop_answering(AgentCall::Exec, true);
    let boots = daemon.backend.boots_started();
    let python = daemon.manager.create("python").await.unwrap();
    let shell = daemon.manager.create("shell").await.unwrap();
    wait_until("one refill's warm-up is under way", || {
        daemon.backend.unanswered_calls() == 1
    })
    .await;
    // The filler left without a turn probes its ready VM each round: two
    // probes more, and it has come round (and been refused) since.
    let ready: Vec<_> = daemon
        .backend
        .live()
        .into_iter()
        .filter(|vm| execs(vm) == 1)
        .collect();
    let probes: Vec<u64> = ready.iter().map(FakeVmHandle::health_calls).collect();
    wait_until("the other filler comes round twice", || {
        ready
            .iter()
            .zip(&probes)
            .any(|(vm, before)| vm.health_calls() >= before + 2)
    })
    .await;
    assert_eq!(daemon.backend.boots_started(), boots + 1);
    assert_eq!(daemon.backend.unanswered_calls(), 1);
    for id in [python, shell] {
        daemon.manager.delete(&id).await.unwrap();
    }
    daemon.stop().await;
}

/// A daemon whose python pool starts at one VM and may grow to `max`.
fn adaptive(max: usize, shrink_after: Duration, pool_memory_mib: u64) -> Daemon {
    Daemon::with(Options {
        pool_size: 1,
        pool_memory_mib,
        pool: PoolPolicy {
            max_size: max,
            shrink_after,
            ..PoolPolicy::default()
        },
        ..Options::default()
    })
}

/// Takes the pooled python VM and makes a create miss: the refill is held
/// at its boot while the second create arrives. Returns both sandboxes.
async fn take_and_miss(daemon: &Daemon) -> [String; 2] {
    wait_until_async("the python pool is full", || async {
        daemon.pool_ready("python").await == 1
    })
    .await;
    daemon.backend.hold_boots(true);
    let first = daemon.manager.create("python").await.unwrap();
    wait_until("the refill boot waits", || {
        daemon.backend.boots_waiting() >= 1
    })
    .await;
    let second = tokio::spawn({
        let manager = daemon.manager.clone();
        async move { manager.create("python").await.unwrap() }
    });
    wait_until("the miss grew the pool", || {
        pool_target(daemon, "python") == 2
    })
    .await;
    daemon.backend.hold_boots(false);
    [first, second.await.unwrap()]
}

#[tokio::test]
async fn a_pool_grows_when_creates_miss() {
    let daemon = adaptive(3, Duration::from_secs(3600), 4096);
    assert_eq!(pool_target(&daemon, "python"), 1);
    let ids = take_and_miss(&daemon).await;
    assert_eq!(daemon.sandbox(&ids[1]).await["boot_path"], "cold-boot");
    assert_eq!(pool_misses(&daemon, "python"), 1);
    wait_until_async("the grown pool fills", || async {
        daemon.pool_ready("python").await == 2
    })
    .await;
    // No demand for the other pack: it keeps its starting size.
    assert_eq!(pool_target(&daemon, "shell"), 1);
    for id in ids {
        daemon.manager.delete(&id).await.unwrap();
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_grown_pool_shrinks_back_when_idle() {
    let daemon = adaptive(3, Duration::from_millis(300), 4096);
    let ids = take_and_miss(&daemon).await;
    let sandbox_vms = [daemon.vm_of(&ids[0]).await, daemon.vm_of(&ids[1]).await];
    wait_until_async("the pool is back at its starting size", || async {
        pool_target(&daemon, "python") == 1 && daemon.pool_ready("python").await == 1
    })
    .await;
    // The VM over the target was stopped, never the sandboxes'.
    wait_until("only one pooled python VM lives", || {
        daemon.live_vms_of("python").len() == 3
    })
    .await;
    assert!(sandbox_vms.iter().all(FakeVmHandle::is_live));
    assert!(daemon
        .backend
        .vms()
        .iter()
        .any(|vm| !vm.is_live() && execs(vm) == 1));
    for id in ids {
        daemon.manager.delete(&id).await.unwrap();
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_growing_pool_never_exceeds_the_memory_cap() {
    const CAP_VMS: u64 = 3;
    let daemon = adaptive(
        6,
        Duration::from_secs(3600),
        CAP_VMS * u64::from(MEMORY_MIB),
    );
    let mut ids = take_and_miss(&daemon).await.to_vec();
    for _ in 0..3 {
        // Each create takes a ready VM or misses; either way demand grows.
        ids.push(daemon.manager.create("python").await.unwrap());
    }
    let ready = || async { daemon.pool_ready("python").await + daemon.pool_ready("shell").await };
    wait_until_async("the pools reach the cap", || async {
        ready().await == CAP_VMS
    })
    .await;
    assert!(pool_target(&daemon, "python") > CAP_VMS - 1);
    // Every pooled VM probed twice: each filler has come round again since
    // the cap was reached, and booted nothing more.
    let mut sandbox_pids = Vec::new();
    for id in &ids {
        sandbox_pids.push(daemon.vm_of(id).await.pid());
    }
    let pooled: Vec<_> = daemon
        .backend
        .live()
        .into_iter()
        .filter(|vm| !sandbox_pids.contains(&vm.pid()))
        .collect();
    assert_eq!(pooled.len() as u64, CAP_VMS);
    let probes: Vec<u64> = pooled.iter().map(FakeVmHandle::health_calls).collect();
    wait_until("the fillers come round again", || {
        pooled
            .iter()
            .zip(&probes)
            .all(|(vm, before)| vm.health_calls() >= before + 2)
    })
    .await;
    assert_eq!(ready().await, CAP_VMS);
    assert_eq!(
        daemon.backend.live_vms(),
        ids.len() + CAP_VMS as usize,
        "the sandboxes and the capped pools"
    );
    for id in ids {
        daemon.manager.delete(&id).await.unwrap();
    }
    daemon.stop().await;
}
