//! Template snapshots on the fake backend: a template is removed only when
//! its integrity check fails, never because a restore timed out or failed
//! for another reason, and a corrupt one is rebuilt.

mod fixture;

use std::path::PathBuf;
use std::time::Duration;

use emberd::vmm::fake::SNAPSHOT_FILE;
use fixture::{wait_until, wait_until_async, Daemon, Options};

/// A daemon whose templates of both packs are built and in use.
async fn with_templates(boot_timeout: Duration) -> Daemon {
    let daemon = Daemon::with(Options {
        templates: true,
        warm_templates_at_start: true,
        boot_timeout,
        ..Options::default()
    });
    wait_until_async("both templates are built", || async {
        daemon.backend.snapshots_taken() == 2
            && daemon.backend.live_vms() == 0
            && daemon.info().await["boot_path"] == "snapshot-restore"
    })
    .await;
    daemon
}

/// The directory of the python template.
fn python_template(daemon: &Daemon) -> PathBuf {
    std::fs::read_dir(&daemon.snapshot_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("python-"))
        })
        .expect("a python template")
}

#[tokio::test]
async fn a_restore_that_times_out_keeps_the_template() {
    let daemon = with_templates(Duration::from_millis(300)).await;
    let template = python_template(&daemon);
    daemon.backend.hold_boots(true);
    let create = tokio::spawn({
        let manager = daemon.manager.clone();
        async move { manager.create("python").await }
    });
    // The restore times out; the create falls back to a cold boot.
    wait_until("the fallback cold boot waits", || {
        daemon.backend.restores_started() == 1 && daemon.backend.boots_started() == 3
    })
    .await;
    daemon.backend.hold_boots(false);
    let id = create.await.unwrap().unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");

    assert!(
        template.join(SNAPSHOT_FILE).is_file(),
        "the template was removed"
    );
    let again = daemon.manager.create("python").await.unwrap();
    assert_eq!(
        daemon.sandbox(&again).await["boot_path"],
        "snapshot-restore"
    );
    assert_eq!(
        daemon.backend.snapshots_taken(),
        2,
        "the template was rebuilt"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_corrupted_template_is_removed_and_rebuilt() {
    let daemon = with_templates(Duration::from_secs(5)).await;
    let template = python_template(&daemon);
    let snapshot = template.join(SNAPSHOT_FILE);
    // Same size, other bytes: only the checksum tells.
    let size = std::fs::metadata(&snapshot).unwrap().len();
    std::fs::write(&snapshot, vec![b'#'; usize::try_from(size).unwrap()]).unwrap();

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    assert_eq!(daemon.backend.restores_started(), 1);
    // A snapshot is taken into staging, then published in place.
    wait_until("the template is rebuilt", || {
        daemon.backend.snapshots_taken() == 3
            && std::fs::read_to_string(&snapshot)
                .is_ok_and(|text| text.starts_with("fake snapshot of VM"))
    })
    .await;
    let again = daemon.manager.create("python").await.unwrap();
    assert_eq!(
        daemon.sandbox(&again).await["boot_path"],
        "snapshot-restore"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_template_whose_files_changed_size_is_never_restored() {
    let daemon = with_templates(Duration::from_secs(5)).await;
    let template = python_template(&daemon);
    std::fs::write(template.join(SNAPSHOT_FILE), b"short").unwrap();

    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "cold-boot");
    assert_eq!(
        daemon.backend.restores_started(),
        0,
        "a corrupt template was restored"
    );
    wait_until("the template is rebuilt", || {
        daemon.backend.snapshots_taken() == 3
    })
    .await;
    daemon.stop().await;
}

// A restored clone shares its template's RNG state until `SetIdentity`
// pushes its own seed (Firecracker's VM generation ID is not bound by the
// guest kernels before 6.10): nothing may run in it before that.
#[tokio::test]
async fn a_restored_clone_takes_its_identity_before_anything_runs() {
    use emberd::vmm::fake::AgentCall;
    let daemon = with_templates(Duration::from_secs(5)).await;
    let id = daemon.manager.create("python").await.unwrap();
    assert_eq!(daemon.sandbox(&id).await["boot_path"], "snapshot-restore");
    daemon.exec_ok(&id, "echo:after").await;
    let vm = daemon.vm_of(&id).await;
    assert!(vm.restored());
    let calls = vm.agent_calls();
    let identity = calls.iter().position(|c| *c == AgentCall::SetIdentity);
    let first_exec = calls.iter().position(|c| *c == AgentCall::Exec);
    assert_eq!(calls.first(), Some(&AgentCall::Hello), "{calls:?}");
    assert!(
        matches!((identity, first_exec), (Some(i), Some(e)) if i < e),
        "{calls:?}"
    );
    daemon.stop().await;
}
