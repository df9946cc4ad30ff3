//! The creation paths without a pool: cold boot (pool and snapshots off)
//! and snapshot restore (pool off). Each sample is a create and the first
//! exec in the new sandbox, timed from just before the create; then the
//! idle sandboxes' PSS per pack.

use std::time::Instant;

use super::daemon::{create_request, Daemon};
use super::memory::idle_pss;
use super::procfs::rss_kib;
use super::report::Report;
use super::{provenance, BenchArgs};

pub(super) const CREATE_COLD: &str = "create: cold boot";
pub(super) const CREATE_RESTORE: &str = "create: snapshot restore";
pub(super) const FIRST_COLD: &str = "time to first result: cold boot (create + first exec)";
pub(super) const FIRST_RESTORE: &str =
    "time to first result: snapshot restore (create + first exec)";

/// Times `samples` creates (each followed by its first `print(6*7)` and a
/// delete) and records them under `create_name` and `first_name`.
pub(super) async fn time_creates(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
    create_name: &str,
    first_name: &str,
) -> anyhow::Result<()> {
    for _ in 0..samples {
        let started = Instant::now();
        let sandbox = daemon.create(&create_request("python")).await?;
        daemon.exec_42(&sandbox.id, "python").await?;
        let first = started.elapsed();
        report.add(create_name, sandbox.elapsed, &sandbox.boot_path);
        report.add(first_name, first, &sandbox.boot_path);
        let started = Instant::now();
        daemon.client.delete_sandbox(&sandbox.id).await?;
        report.add(
            &format!("delete: a {} sandbox", sandbox.boot_path),
            started.elapsed(),
            &sandbox.boot_path,
        );
    }
    Ok(())
}

pub(super) async fn cold(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let samples = args.samples();
    eprintln!("bench: cold boot ({samples} creates)");
    let daemon = Daemon::start(args, &["--pool-size", "0", "--snapshots", "false"])?;
    provenance(report, &daemon.client).await?;
    report.figures.insert(
        "daemon RSS idle (MiB)".into(),
        rss_kib(daemon.pid())? as f64 / 1024.0,
    );
    time_creates(&daemon, report, samples, CREATE_COLD, FIRST_COLD).await?;
    let packs = daemon.client.info().await?.packs;
    idle_pss(
        &daemon,
        report,
        "cold boot",
        &packs,
        args.pss_sandboxes,
        None,
    )
    .await
}

pub(super) async fn restore(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let samples = args.samples();
    eprintln!("bench: snapshot restore ({samples} creates)");
    let daemon = Daemon::start(args, &["--pool-size", "0", "--snapshots", "true"])?;
    provenance(report, &daemon.client).await?;
    daemon.wait_for_template().await?;
    let packs = daemon.client.info().await?.packs;
    for pack in &packs {
        // Every pack's template built before the timing starts.
        let sandbox = daemon.create(&create_request(pack)).await?;
        daemon.client.delete_sandbox(&sandbox.id).await?;
    }
    time_creates(&daemon, report, samples, CREATE_RESTORE, FIRST_RESTORE).await?;
    idle_pss(
        &daemon,
        report,
        "snapshot restore",
        &packs,
        args.pss_sandboxes,
        None,
    )
    .await
}
