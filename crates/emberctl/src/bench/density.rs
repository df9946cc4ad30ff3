//! Density: N idle restored python sandboxes at once in a daemon with the
//! pool off. Records the drop of the host's `MemAvailable` from before the
//! first create to after the last sandbox's exec (whole and per sandbox),
//! and each sandbox's own VMM PSS. Every sandbox must answer an exec; one
//! that does not fails the bench.

use super::daemon::{create_request, Created, Daemon};
use super::memory::SETTLE;
use super::procfs::{mem_available_kib, pss_kib};
use super::report::Report;
use super::BenchArgs;

pub(super) fn pss_name(n: usize) -> String {
    format!("density: PSS of each of {n} idle restored python sandboxes")
}

pub(super) async fn run(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let n = args.density;
    eprintln!("bench: density ({n} idle restored python sandboxes)");
    let memory_mib = 256u64;
    let most_memory = (memory_mib * (n as u64 + 2)).to_string();
    let most_sandboxes = (n + 2).to_string();
    let daemon = Daemon::start(
        args,
        &[
            "--pool-size",
            "0",
            "--snapshots",
            "true",
            "--max-sandboxes",
            &most_sandboxes,
            "--max-guest-memory-mib",
            &most_memory,
        ],
    )?;
    super::provenance(report, &daemon.client).await?;
    daemon.wait_for_template().await?;
    // The template's files read once before the figure starts.
    let warm = daemon.create(&create_request("python")).await?;
    daemon.client.delete_sandbox(&warm.id).await?;
    tokio::time::sleep(SETTLE).await;
    let before = mem_available_kib()?;
    let mut created: Vec<Created> = Vec::new();
    let result = async {
        for _ in 0..n {
            let sandbox = daemon.create(&create_request("python")).await?;
            created.push(sandbox);
        }
        for sandbox in &created {
            daemon.exec_42(&sandbox.id, "python").await?;
        }
        tokio::time::sleep(SETTLE).await;
        let after = mem_available_kib()?;
        // Signed: on a shared host others' work can free memory meanwhile.
        let drop_mib = (before as f64 - after as f64) / 1024.0;
        report.figures.insert(
            format!("density: host MemAvailable drop for {n} idle sandboxes (MiB)"),
            drop_mib,
        );
        report.figures.insert(
            format!("density: host MemAvailable drop per sandbox, of {n} (MiB)"),
            drop_mib / n.max(1) as f64,
        );
        let mut total_kib = 0;
        for sandbox in &created {
            let kib = pss_kib(sandbox.vmm_pid)?;
            total_kib += kib;
            report.add_mib(&pss_name(n), kib as f64 / 1024.0, &sandbox.boot_path);
        }
        report.figures.insert(
            format!("density: PSS of the {n} VMMs together (MiB)"),
            total_kib as f64 / 1024.0,
        );
        report.check(
            &format!("density: an exec in each of {n} idle sandboxes answers"),
            true,
            format!("{n} of {n} answered 42"),
        );
        anyhow::Ok(())
    }
    .await;
    for sandbox in &created {
        daemon.client.delete_sandbox(&sandbox.id).await?;
    }
    result
}
