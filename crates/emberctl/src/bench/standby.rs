//! Restores into VMM processes started ahead (`--standby-vmms`), measured
//! as their own path: a daemon with the pool off and standby VMMs on. A
//! daemon that does not know the flag is reported as "not available",
//! never measured as something else. Each sample records the boot path
//! the create took, so a create that found no standby VMM ready shows as
//! what it was.

use std::time::Duration;

use super::daemon::{serve_has_flag, Daemon};
use super::memory::idle_pss;
use super::paths::time_creates;
use super::report::Report;
use super::BenchArgs;

pub(super) const CREATE: &str = "create: standby restore";
pub(super) const FIRST: &str = "time to first result: standby restore (create + first exec)";
pub(super) const FLAG: &str = "--standby-vmms";

/// Time given to the daemon to start its standby VMMs again after a sample
/// took one (the daemon reports no count of ready standby VMMs).
const RESTART_PAUSE: Duration = Duration::from_secs(1);

pub(super) async fn run(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    if !serve_has_flag(args, FLAG)? {
        report.notes.insert(
            "standby restore".into(),
            format!("not available: this emberd has no `serve {FLAG}` flag"),
        );
        return Ok(());
    }
    let samples = args.samples();
    eprintln!("bench: standby restore ({samples} creates)");
    let count = args.standby_vmms.to_string();
    let daemon = Daemon::start(
        args,
        &["--pool-size", "0", "--snapshots", "true", FLAG, &count],
    )?;
    super::provenance(report, &daemon.client).await?;
    daemon.wait_for_template().await?;
    for _ in 0..samples {
        tokio::time::sleep(RESTART_PAUSE).await;
        time_creates(&daemon, report, 1, CREATE, FIRST).await?;
    }
    let packs = daemon.client.info().await?.packs;
    idle_pss(
        &daemon,
        report,
        "standby restore",
        &packs,
        args.pss_sandboxes,
        None,
    )
    .await
}
