//! The process table's limit and retention, and a process record's end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::Process;
use super::table::{prune_at, ProcessTable, KEEP_ENDED, KEEP_ENDED_BYTES, RETAIN};
use super::ProcessStatus;
use crate::guest::OutputStream;
use crate::sandbox::SandboxError;

fn process(pid: u32) -> Arc<Process> {
    Arc::new(Process::new(
        pid,
        vec!["true".into()],
        false,
        None,
        false,
        4096,
    ))
}

#[test]
fn the_running_limit_counts_starts_in_progress_and_frees_on_end() {
    let table = ProcessTable::default();
    let first = table.reserve(2).unwrap();
    let second = table.reserve(2).unwrap();
    assert!(matches!(
        table.reserve(2),
        Err(SandboxError::TooManyProcesses { max: 2 })
    ));
    let running = process(10);
    table.insert(running.clone()).unwrap();
    drop(first);
    drop(second);
    table.insert(process(11)).unwrap();
    assert!(table.reserve(2).is_err(), "two run");
    running.finish(ProcessStatus::Exited(0), None);
    assert!(table.reserve(2).is_ok(), "one ended: room for another");
}

#[test]
fn ended_records_are_kept_for_a_while_and_at_most_a_hundred() {
    let table = ProcessTable::default();
    let running = process(1);
    table.insert(running.clone()).unwrap();
    for pid in 2..(2 + KEEP_ENDED as u32 + 5) {
        let ended = process(pid);
        table.insert(ended.clone()).unwrap();
        ended.finish(ProcessStatus::Exited(0), None);
    }
    let listed = table.list();
    assert_eq!(
        listed.len(),
        1 + KEEP_ENDED,
        "the running one and the last 100 ended"
    );
    assert!(listed.iter().any(|p| p.pid == 1));
    // The oldest ended ones went first.
    for pid in 2..7 {
        assert!(matches!(table.get(pid), Err(SandboxError::ProcessNotFound(p)) if p == pid));
    }
    assert!(table.get(7).is_ok());
    // Past the retention, every ended record is forgotten; a running one never is.
    prune_at(&table, Instant::now() + RETAIN + Duration::from_secs(1));
    let left: Vec<u32> = table.list().iter().map(|p| p.pid).collect();
    assert_eq!(left, vec![1]);
}

#[test]
fn ended_records_hold_a_bounded_amount_of_output_together() {
    const LOG: usize = 8 * 1024 * 1024;
    let table = ProcessTable::default();
    let running = Arc::new(Process::new(1, vec!["cat".into()], false, None, false, LOG));
    table.insert(running.clone()).unwrap();
    running.append(OutputStream::Stdout, &vec![b'r'; LOG]);
    let loud = KEEP_ENDED_BYTES / LOG + 3;
    for pid in 2..(2 + loud as u32) {
        let ended = Arc::new(Process::new(
            pid,
            vec!["yes".into()],
            false,
            None,
            false,
            LOG,
        ));
        table.insert(ended.clone()).unwrap();
        ended.append(OutputStream::Stdout, &vec![b'y'; LOG]);
        ended.finish(ProcessStatus::Exited(0), None);
    }
    let listed = table.list();
    let ended_held: usize = listed
        .iter()
        .filter(|p| !p.is_running())
        .map(|p| p.held_bytes())
        .sum();
    assert!(ended_held <= KEEP_ENDED_BYTES, "{ended_held} bytes kept");
    assert!(
        ended_held > KEEP_ENDED_BYTES - 2 * LOG,
        "{ended_held} bytes kept"
    );
    // The running one is never forgotten, and the newest ended ones stay.
    assert!(table.get(1).is_ok());
    assert!(table.get(1 + loud as u32).is_ok());
    assert!(matches!(
        table.get(2),
        Err(SandboxError::ProcessNotFound(2))
    ));
}

#[test]
fn a_reused_pid_replaces_the_ended_record() {
    let table = ProcessTable::default();
    let old = process(5);
    table.insert(old.clone()).unwrap();
    old.append(OutputStream::Stdout, b"old");
    // A running process's pid cannot be reported again.
    assert!(matches!(
        table.insert(process(5)),
        Err(SandboxError::ProcessLaunch(_))
    ));
    old.finish(ProcessStatus::Exited(0), None);
    table.insert(process(5)).unwrap();
    assert_eq!(table.list().len(), 1);
    assert_eq!(table.get(5).unwrap().snapshot().output_bytes, 0);
}

#[tokio::test]
async fn the_first_end_wins_and_wakes_waiters() {
    let p = process(3);
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.ended().await })
    };
    p.finish(
        ProcessStatus::Killed {
            signal: 15,
            exit_code: 143,
            timed_out: false,
        },
        None,
    );
    p.finish(ProcessStatus::Lost, Some("later".into()));
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter woke")
        .unwrap();
    let snapshot = p.snapshot();
    assert!(matches!(
        snapshot.status,
        ProcessStatus::Killed { signal: 15, .. }
    ));
    assert!(snapshot.error.is_none());
    assert!(snapshot.ended_at.is_some());
    // Input after the end is refused as not running.
    assert!(matches!(
        p.signal(15).await,
        Err(SandboxError::ProcessNotRunning(3))
    ));
}
