//! Restore time and PSS by guest size. Templates are kept for the default
//! shape only (a create of another shape cold-boots), so each size gets a
//! daemon of its own whose default memory is that size, pool off; its
//! template is built and restored once before the timing starts. The
//! first `--pss-sandboxes` sandboxes are held and their PSS read at the end.

use std::time::Instant;

use super::daemon::{create_request, Created, Daemon};
use super::memory::SETTLE;
use super::paths::CREATE_COLD;
use super::procfs::pss_kib;
use super::report::Report;
use super::BenchArgs;

pub(super) fn create_name(mib: u32) -> String {
    format!("create: snapshot restore, {mib} MiB guest")
}

pub(super) fn first_name(mib: u32) -> String {
    format!("time to first result: snapshot restore, {mib} MiB guest (create + first exec)")
}

pub(super) fn pss_name(mib: u32) -> String {
    format!("idle sandbox PSS: snapshot restore, {mib} MiB guest, python")
}

pub(super) async fn run(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let samples = args.samples();
    for &mib in &args.sizes {
        eprintln!("bench: {mib} MiB guests ({samples} restores)");
        let size = mib.to_string();
        let held = args.pss_sandboxes;
        let most = (u64::from(mib) * (held as u64 + 2)).to_string();
        let daemon = Daemon::start(
            args,
            &[
                "--pool-size",
                "0",
                "--snapshots",
                "true",
                "--memory-mib",
                &size,
                "--max-memory-mib",
                &size,
                "--max-guest-memory-mib",
                &most,
            ],
        )?;
        super::provenance(report, &daemon.client).await?;
        daemon.wait_for_template().await?;
        let warm = daemon.create(&create_request("python")).await?;
        daemon.client.delete_sandbox(&warm.id).await?;
        // The first `held` sandboxes stay until their PSS is read; the
        // others are deleted after their sample.
        let mut created: Vec<Created> = Vec::new();
        let result = async {
            for _ in 0..samples {
                let started = Instant::now();
                let sandbox = daemon.create(&create_request("python")).await?;
                let exec = daemon.exec_42(&sandbox.id, "python").await;
                let first = started.elapsed();
                if created.len() < held {
                    created.push(sandbox.clone());
                } else {
                    daemon.client.delete_sandbox(&sandbox.id).await?;
                }
                exec?;
                report.add(&create_name(mib), sandbox.elapsed, &sandbox.boot_path);
                report.add(&first_name(mib), first, &sandbox.boot_path);
            }
            tokio::time::sleep(SETTLE).await;
            for sandbox in &created {
                let kib = pss_kib(sandbox.vmm_pid)?;
                report.add_mib(&pss_name(mib), kib as f64 / 1024.0, &sandbox.boot_path);
            }
            anyhow::Ok(())
        }
        .await;
        for sandbox in &created {
            daemon.client.delete_sandbox(&sandbox.id).await?;
        }
        result?;
        report.ratio(
            &format!("cold boot (default shape) / snapshot restore of a {mib} MiB guest"),
            CREATE_COLD,
            &create_name(mib),
        );
    }
    if let (Some(&smallest), Some(&largest)) = (args.sizes.first(), args.sizes.last()) {
        if smallest != largest {
            report.ratio(
                &format!("snapshot restore: {largest} MiB guest / {smallest} MiB guest"),
                &create_name(largest),
                &create_name(smallest),
            );
        }
    }
    Ok(())
}
