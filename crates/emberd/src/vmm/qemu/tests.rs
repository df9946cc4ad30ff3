//! The QEMU VM's bounds against a QMP peer that never finishes, and the
//! early-exit log read.

use std::sync::Arc;

use parking_lot::Mutex as SyncMutex;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::clone::check_memory_file;
use super::qmp::tests::fake_qemu;
use super::*;

/// A VM whose QMP peer answers every command with `answer` and records
/// the commands; its "VMM" is a `sleep`.
async fn vm_answering(dir: &Path, answer: &'static str) -> (QemuVm, Arc<SyncMutex<Vec<String>>>) {
    let seen = Arc::new(SyncMutex::new(Vec::new()));
    let record = seen.clone();
    let path = fake_qemu(dir, move |stream| async move {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            record.lock().push(line);
            if write.write_all(answer.as_bytes()).await.is_err() {
                break;
            }
        }
    })
    .await;
    let mut sleep = tokio::process::Command::new("sleep");
    sleep.arg("60");
    let vm = QemuVm {
        process: VmProcess::spawn(sleep, &dir.join("qemu.log")).unwrap(),
        dir: dir.to_owned(),
        qmp: Mutex::new(Some(Qmp::connect(&path, QMP_DEADLINE).await.unwrap())),
        console: Arc::new(ConsoleRing::default()),
        shared_memory: false,
    };
    (vm, seen)
}

#[tokio::test]
async fn a_migration_that_never_ends_is_bounded_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, seen) = vm_answering(dir.path(), "{\"return\": {\"status\": \"active\"}}\n").await;
    let started = std::time::Instant::now();
    let err = vm
        .wait_for_migration(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::Unresponsive { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        seen.lock().iter().any(|c| c.contains("migrate_cancel")),
        "{:?}",
        seen.lock()
    );
    vm.stop().await.unwrap();
}

#[tokio::test]
async fn an_incoming_migration_that_never_ends_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (vm, _) = vm_answering(dir.path(), "{\"return\": {\"status\": \"inmigrate\"}}\n").await;
    let started = std::time::Instant::now();
    let err = vm
        .finish_incoming(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, VmmError::BootTimeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    vm.stop().await.unwrap();
}

#[test]
fn an_early_exit_quotes_only_the_end_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("qemu.log");
    let mut text = "x".repeat(1 << 20);
    text.push_str("\nqemu: the last word\n");
    std::fs::write(&log, text).unwrap();
    let tail = log_tail(&log);
    assert!(tail.len() as u64 <= LOG_TAIL_BYTES);
    assert!(tail.ends_with("qemu: the last word\n"));
    let link = dir.path().join("link.log");
    std::os::unix::fs::symlink(&log, &link).unwrap();
    assert_eq!(log_tail(&link), "", "followed a symlink");
}

#[test]
fn read_only_private_ram_needs_qemu_8_2() {
    let debian = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)";
    assert!(!version_at_least(debian, (8, 2)));
    assert!(version_at_least("QEMU emulator version 8.2.0", (8, 2)));
    assert!(version_at_least(
        "QEMU emulator version 10.0.2 (v10.0.2)",
        (8, 2)
    ));
    assert!(!version_at_least("QEMU emulator version 8.1.5", (8, 2)));
    assert!(!version_at_least("something else", (8, 2)));
}

#[test]
fn a_ram_file_is_made_sparse_and_checked_for_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.ram");
    create_memory_file(&path, 4).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 4 << 20);
    assert!(
        create_memory_file(&path, 4).is_err(),
        "an existing file was reused"
    );
    check_memory_file(&path, 4).unwrap();
    assert!(
        check_memory_file(&path, 8).is_err(),
        "a RAM file of another size passed"
    );
    let link = dir.path().join("link.ram");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(check_memory_file(&link, 4).is_err(), "a symlink passed");
}
