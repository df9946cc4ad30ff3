//! The pool's figures: creates that find the pool full (the best case),
//! creates in a burst larger than the pool (the refills cannot keep up, so
//! some miss it), and the idle PSS of sandboxes handed out by the pool.
//! Every sample names the boot path its sandbox actually took.

use std::time::{Duration, Instant};

use futures::future::join_all;

use super::daemon::{create_request, Created, Daemon};
use super::memory::idle_pss;
use super::report::Report;
use super::stats::MIN_SAMPLES;

pub(super) const CREATE_POOL_FULL: &str = "create: pool full";
pub(super) const CREATE_POOL_FULL_DAEMON: &str =
    "create: pool full, the daemon's own time (Server-Timing)";
pub(super) const FIRST_POOL_FULL: &str = "time to first result: pool full (create + first exec)";

/// Most bursts the miss figures may take to gather their samples.
const MAX_BURSTS: usize = 10;

pub(super) fn burst_names(burst: usize, path: &str) -> (String, String) {
    (
        format!("create: burst of {burst} at a full pool, {path}"),
        format!(
            "time to first result: burst of {burst} at a full pool, {path} (create + first exec)"
        ),
    )
}

/// Creates from a full pool, one at a time.
pub(super) async fn full(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
    pool_size: usize,
) -> anyhow::Result<()> {
    eprintln!("bench: pool full ({samples} creates)");
    for _ in 0..samples {
        daemon.wait_for_pools(pool_size).await?;
        let started = Instant::now();
        let sandbox = daemon.create(&create_request("python")).await?;
        daemon.exec_42(&sandbox.id, "python").await?;
        let first = started.elapsed();
        report.add(CREATE_POOL_FULL, sandbox.elapsed, &sandbox.boot_path);
        let server = sandbox
            .server_time
            .ok_or_else(|| anyhow::anyhow!("the daemon sent no Server-Timing on create"))?;
        report.add(CREATE_POOL_FULL_DAEMON, server, &sandbox.boot_path);
        report.add(FIRST_POOL_FULL, first, &sandbox.boot_path);
        daemon.client.delete_sandbox(&sandbox.id).await?;
    }
    Ok(())
}

/// Bursts of `pool_size + 3` concurrent creates (each followed by its first
/// exec) at a full pool, until every boot path seen has at least
/// `samples` samples (or [`MAX_BURSTS`] bursts).
pub(super) async fn burst(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
    pool_size: usize,
) -> anyhow::Result<()> {
    let size = pool_size + 3;
    eprintln!("bench: bursts of {size} creates at a full pool");
    let mut per_path: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..MAX_BURSTS {
        daemon.wait_for_pools(pool_size).await?;
        let started = Instant::now();
        let cycles = (0..size).map(|_| async move {
            let sandbox = daemon.create(&create_request("python")).await?;
            let result = daemon.exec_42(&sandbox.id, "python").await;
            let first = started.elapsed();
            anyhow::Ok((sandbox, first, result))
        });
        let results: Vec<anyhow::Result<(Created, Duration, anyhow::Result<()>)>> =
            join_all(cycles).await;
        let mut failure = None;
        for result in results {
            match result {
                Ok((sandbox, first, exec)) => {
                    daemon.client.delete_sandbox(&sandbox.id).await?;
                    if let Err(e) = exec {
                        failure.get_or_insert(e);
                        continue;
                    }
                    let (create_name, first_name) = burst_names(size, &sandbox.boot_path);
                    // The create's own time; the first result counts from the
                    // burst's start, as a client of the burst sees it.
                    report.add(&create_name, sandbox.elapsed, &sandbox.boot_path);
                    report.add(&first_name, first, &sandbox.boot_path);
                    *per_path.entry(sandbox.boot_path).or_default() += 1;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if per_path.values().all(|n| *n >= samples.max(MIN_SAMPLES)) {
            break;
        }
    }
    report.figures.insert(
        format!("burst of {size} at a full pool: creates that missed the pool (of all)"),
        {
            let all: usize = per_path.values().sum();
            let missed = all - per_path.get("warm-pool").copied().unwrap_or(0);
            missed as f64 / all.max(1) as f64
        },
    );
    Ok(())
}

/// The idle PSS of sandboxes handed out by a full pool, per pack.
pub(super) async fn pss(
    daemon: &Daemon,
    report: &mut Report,
    per_pack: usize,
    pool_size: usize,
) -> anyhow::Result<()> {
    let packs = daemon.client.info().await?.packs;
    idle_pss(
        daemon,
        report,
        "from the pool",
        &packs,
        per_pack,
        Some(pool_size),
    )
    .await
}
