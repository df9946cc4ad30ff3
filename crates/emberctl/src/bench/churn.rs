//! The churn: create, exec and delete back to back in a daemon of its own,
//! started the moment the daemon answers (its pools still filling). Every
//! `every` cycles the churn pauses until the pools are full and stable and
//! takes a footprint: the daemon's child processes, the VMM processes, the
//! daemon's open descriptors, the directories in the work dir, and the
//! daemon's and the VMMs' memory. The run fails when processes, VMMs,
//! descriptors or directories grew between the first settled footprint
//! and the last, or when a memory slope is above its bound. The pauses are
//! left out of the cycle rate.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::daemon::{create_request, Daemon};
use super::procfs::{dir_count, fd_count, pss_kib, rss_kib};
use super::report::Report;
use super::stats::slope;
use super::BenchArgs;

/// Bound on the daemon's PSS slope over the churn, MiB per 100 cycles.
pub(super) const DAEMON_SLOPE_BOUND: f64 = 1.0;
/// Bound on the VMMs' total PSS slope (the pools' VMs at each settled
/// footprint), MiB per 100 cycles.
pub(super) const VMM_SLOPE_BOUND: f64 = 16.0;
/// Growth over the whole churn (slope × cycles) below which a slope is
/// noise, MiB: a short churn's two footprints a few MiB apart would
/// otherwise extrapolate to a steep slope.
pub(super) const DAEMON_NOISE_FLOOR: f64 = 4.0;
pub(super) const VMM_NOISE_FLOOR: f64 = 64.0;

/// What the daemon holds at one point of the churn.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Footprint {
    pub(super) cycle: usize,
    /// Taken with the pools full and stable and no sandbox (comparable).
    pub(super) settled: bool,
    /// Ready VMs in the pools, all packs.
    pub(super) pooled: usize,
    pub(super) processes: usize,
    pub(super) vmms: usize,
    pub(super) fds: usize,
    pub(super) dirs: usize,
    pub(super) daemon_rss_mib: f64,
    pub(super) daemon_pss_mib: f64,
    pub(super) vmm_pss_mib: f64,
}

/// The verdicts on a churn's footprints: (passed, what was seen) for
/// processes, fds and directories, and for memory.
pub(super) fn judge(footprints: &[Footprint]) -> ((bool, String), (bool, String)) {
    let settled: Vec<&Footprint> = footprints.iter().filter(|f| f.settled).collect();
    let (Some(first), Some(last)) = (settled.first(), settled.last()) else {
        return (
            (false, "no settled footprint to compare".into()),
            (false, "no settled footprint".into()),
        );
    };
    if settled.len() < 2 {
        return (
            (false, "one settled footprint: nothing to compare".into()),
            (false, "one settled footprint".into()),
        );
    }
    let counts = [
        ("processes", first.processes, last.processes),
        ("VMMs", first.vmms, last.vmms),
        ("daemon fds", first.fds, last.fds),
        ("work-dir directories", first.dirs, last.dirs),
    ];
    let grew: Vec<&str> = counts
        .iter()
        .filter(|(_, a, b)| b > a)
        .map(|(name, _, _)| *name)
        .collect();
    let seen = counts
        .iter()
        .map(|(name, a, b)| format!("{name} {a} → {b}"))
        .collect::<Vec<_>>()
        .join(", ");
    let pools = format!(
        "cycles {} → {}, pooled VMs {} → {}",
        first.cycle, last.cycle, first.pooled, last.pooled
    );
    let counts_verdict = if grew.is_empty() {
        (true, format!("{seen} ({pools}): no growth"))
    } else {
        (false, format!("{seen} ({pools}): {} GREW", grew.join(", ")))
    };
    let per_100 = |f: fn(&Footprint) -> f64| {
        let points: Vec<(f64, f64)> = settled
            .iter()
            .map(|s| (s.cycle as f64 / 100.0, f(s)))
            .collect();
        slope(&points)
    };
    let span = (last.cycle - first.cycle) as f64 / 100.0;
    let daemon = per_100(|f| f.daemon_pss_mib);
    let vmm = per_100(|f| f.vmm_pss_mib);
    // NaN (no slope) fails: both comparisons are false.
    let within = |slope: f64, bound: f64, floor: f64| slope <= bound || slope * span <= floor;
    let memory_ok = within(daemon, DAEMON_SLOPE_BOUND, DAEMON_NOISE_FLOOR)
        && within(vmm, VMM_SLOPE_BOUND, VMM_NOISE_FLOOR);
    let memory = format!(
        "daemon PSS {daemon:+.2} MiB per 100 cycles (bound {DAEMON_SLOPE_BOUND}, \
         unless under {DAEMON_NOISE_FLOOR} MiB over the run), \
         VMMs' PSS {vmm:+.2} MiB per 100 cycles (bound {VMM_SLOPE_BOUND}, \
         unless under {VMM_NOISE_FLOOR} MiB over the run), over {} settled footprints",
        settled.len()
    );
    (counts_verdict, (memory_ok, memory))
}

fn footprint(
    daemon: &Daemon,
    cycle: usize,
    settled: bool,
    pooled: usize,
) -> anyhow::Result<Footprint> {
    let pid = daemon.pid();
    let vmm_pids = daemon.process.vm_processes();
    let mut vmm_kib = 0;
    for vmm in &vmm_pids {
        vmm_kib += pss_kib(*vmm)?;
    }
    Ok(Footprint {
        cycle,
        settled,
        pooled,
        processes: daemon.process.children().len(),
        vmms: vmm_pids.len(),
        fds: fd_count(pid)?,
        dirs: dir_count(daemon.process.work_dir())?,
        daemon_rss_mib: rss_kib(pid)? as f64 / 1024.0,
        daemon_pss_mib: pss_kib(pid)? as f64 / 1024.0,
        vmm_pss_mib: vmm_kib as f64 / 1024.0,
    })
}

/// Waits until the pools are full and their count has not moved for a
/// second, with no sandbox left; returns the pools' count.
async fn settle(daemon: &Daemon, pool_size: usize) -> anyhow::Result<usize> {
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let pooled = daemon.wait_for_pools(pool_size).await?;
        let sandboxes = daemon.client.list_sandboxes().await?.len();
        if sandboxes == 0 && last == Some(pooled) {
            return Ok(pooled);
        }
        anyhow::ensure!(Instant::now() < deadline, "the pools never settled");
        last = (sandboxes == 0).then_some(pooled);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(super) async fn run(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let cycles = args.churn;
    let every = args.churn_every.clamp(1, cycles.max(2) / 2);
    let pool_size = args.pool_size;
    eprintln!("bench: churn of {cycles} cycles, a footprint every {every}");
    let size = pool_size.to_string();
    let daemon = Daemon::start(args, &["--pool-size", &size, "--snapshots", "true"])?;
    super::provenance(report, &daemon.client).await?;
    let first_pooled: usize = daemon
        .client
        .info()
        .await?
        .pool_ready
        .map_or(0, |p| p.values().sum());
    let mut footprints = vec![footprint(&daemon, 0, false, first_pooled)?];
    let mut churning = Duration::ZERO;
    let mut first_segment = Duration::ZERO;
    let mut segment_started = Instant::now();
    for cycle in 1..=cycles {
        let sandbox = daemon.create(&create_request("python")).await?;
        daemon.exec_42(&sandbox.id, "python").await?;
        daemon.client.delete_sandbox(&sandbox.id).await?;
        if cycle % every == 0 || cycle == cycles {
            let segment = segment_started.elapsed();
            if footprints.len() == 1 {
                first_segment = segment;
            }
            churning += segment;
            let pooled = settle(&daemon, pool_size).await?;
            footprints.push(footprint(&daemon, cycle, true, pooled)?);
            eprintln!("bench: churn cycle {cycle}: {:?}", footprints.last());
            segment_started = Instant::now();
        }
    }
    let first_cycles = every.min(cycles);
    report.figures.insert(
        format!("churn: cycles per minute, the first {first_cycles} (pools filling)"),
        first_cycles as f64 / first_segment.as_secs_f64() * 60.0,
    );
    if cycles > first_cycles {
        report.figures.insert(
            format!(
                "churn: cycles per minute, the other {} (each {every} from full pools)",
                cycles - first_cycles
            ),
            (cycles - first_cycles) as f64 / (churning - first_segment).as_secs_f64() * 60.0,
        );
    }
    report.figures.insert(
        format!("churn: cycles per minute, all {cycles}"),
        cycles as f64 / churning.as_secs_f64() * 60.0,
    );
    let ((counts_ok, counts), (memory_ok, memory)) = judge(&footprints);
    report.check(
        &format!("churn of {cycles} cycles: processes, VMMs, fds, directories"),
        counts_ok,
        counts,
    );
    report.check(
        &format!("churn of {cycles} cycles: memory slopes"),
        memory_ok,
        memory,
    );
    report.churn = footprints
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cycle: usize, fds: usize, daemon_pss_mib: f64) -> Footprint {
        Footprint {
            cycle,
            settled: true,
            pooled: 6,
            processes: 6,
            vmms: 6,
            fds,
            dirs: 7,
            daemon_rss_mib: 9.0,
            daemon_pss_mib,
            vmm_pss_mib: 900.0,
        }
    }

    #[test]
    fn no_growth_passes_and_a_drop_is_not_growth() {
        let footprints = [at(100, 50, 8.0), at(200, 48, 8.1), at(300, 49, 8.0)];
        let ((ok, seen), (memory_ok, _)) = judge(&footprints);
        assert!(ok, "{seen}");
        assert!(memory_ok);
    }

    #[test]
    fn one_more_descriptor_at_the_end_fails() {
        let footprints = [at(100, 50, 8.0), at(200, 50, 8.0), at(300, 51, 8.0)];
        let ((ok, seen), _) = judge(&footprints);
        assert!(!ok);
        assert!(seen.contains("daemon fds GREW"), "{seen}");
    }

    #[test]
    fn a_leaked_process_or_directory_fails() {
        let mut last = at(300, 50, 8.0);
        last.processes += 1;
        last.dirs += 2;
        let ((ok, seen), _) = judge(&[at(100, 50, 8.0), last]);
        assert!(!ok);
        assert!(
            seen.contains("processes, work-dir directories GREW"),
            "{seen}"
        );
    }

    #[test]
    fn an_unsettled_footprint_is_not_compared() {
        // The pools were still filling at cycle 0: fewer processes then.
        let mut start = at(0, 20, 7.0);
        start.settled = false;
        start.processes = 1;
        let ((ok, seen), _) = judge(&[start, at(100, 50, 8.0), at(200, 50, 8.0)]);
        assert!(ok, "{seen}");
        let ((ok, _), (memory_ok, _)) = judge(&[at(100, 50, 8.0)]);
        assert!(!ok && !memory_ok, "one footprint proves nothing");
    }

    #[test]
    fn memory_growing_faster_than_the_bound_fails() {
        let footprints = [at(100, 50, 8.0), at(600, 50, 18.0), at(1100, 50, 28.0)];
        let ((ok, _), (memory_ok, memory)) = judge(&footprints);
        assert!(ok);
        assert!(!memory_ok, "{memory}");
        assert!(memory.contains("+2.00 MiB per 100 cycles"), "{memory}");
    }

    #[test]
    fn a_steep_slope_over_a_short_churn_is_noise_under_the_floor() {
        // 1.6 MiB over 10 cycles: 16 MiB per 100, but under the floor in all.
        let footprints = [at(10, 50, 8.0), at(20, 50, 9.6)];
        let (_, (memory_ok, memory)) = judge(&footprints);
        assert!(memory_ok, "{memory}");
        let footprints = [at(10, 50, 8.0), at(20, 50, 14.0)];
        assert!(
            !judge(&footprints).1 .0,
            "6 MiB in 10 cycles is over the floor"
        );
    }
}
