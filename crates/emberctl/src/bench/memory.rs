//! Host memory of idle sandboxes: the PSS of the measured sandboxes' own
//! VMM processes (their `vmm_pid`), per pack, the same way for every boot
//! path. A VMM whose `smaps_rollup` cannot be read fails the bench.

use std::time::Duration;

use super::daemon::{create_request, Daemon};
use super::procfs::pss_kib;
use super::report::Report;

/// How long idle sandboxes are left before their PSS is read, so that
/// the exec's transient memory is gone.
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// The name of the PSS figure of `label`'s idle `pack` sandboxes.
pub(super) fn pss_name(label: &str, pack: &str) -> String {
    format!("idle sandbox PSS: {label}, {pack}")
}

/// For each pack: creates `per_pack` sandboxes (each from a full pool when
/// `pool_size` is given), runs one exec in each, waits [`SETTLE`], records
/// each VMM's PSS with the sandbox's boot path, and deletes them.
pub(super) async fn idle_pss(
    daemon: &Daemon,
    report: &mut Report,
    label: &str,
    packs: &[String],
    per_pack: usize,
    pool_size: Option<usize>,
) -> anyhow::Result<()> {
    for pack in packs {
        eprintln!("bench: PSS of {per_pack} idle {pack} sandboxes ({label})");
        let mut created = Vec::new();
        let result = async {
            for _ in 0..per_pack {
                if let Some(size) = pool_size {
                    daemon.wait_for_pools(size).await?;
                }
                let sandbox = daemon.create(&create_request(pack)).await?;
                created.push(sandbox.clone());
                daemon.exec_42(&sandbox.id, pack).await?;
            }
            tokio::time::sleep(SETTLE).await;
            for sandbox in &created {
                let kib = pss_kib(sandbox.vmm_pid)?;
                report.add_mib(
                    &pss_name(label, pack),
                    kib as f64 / 1024.0,
                    &sandbox.boot_path,
                );
            }
            anyhow::Ok(())
        }
        .await;
        for sandbox in &created {
            daemon.client.delete_sandbox(&sandbox.id).await?;
        }
        result?;
    }
    Ok(())
}
