//! `emberctl bench`: the benchmark harness.
//!
//! Runs sections against daemons it starts itself (one per configuration,
//! each on a free port with its own work dir): the creation paths (cold
//! boot, snapshot restore, the pool full and in bursts, standby VMMs),
//! execs, interactive figures, a concurrency sweep, a churn with leak
//! checks, density, and restores by guest size. Prints markdown tables of
//! medians, p95s and ratios from this one run; `--json` writes every raw
//! sample with the boot path its sandbox took, and the provenance (commit,
//! CPU, kernel, backend, accel). Exits non-zero when a check fails (a
//! churn that leaked). What each figure measures is in
//! `docs/performance.md`.

mod churn;
mod concurrency;
mod daemon;
mod density;
mod exec;
mod interactive;
mod memory;
mod paths;
mod pool;
mod procfs;
mod report;
mod sizes;
mod standby;
mod stats;

use std::path::PathBuf;
use std::process::Command;

use emberd_client::Client;
use report::{print_table, Report};

/// The parts of the bench, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Cold boots (pool and snapshots off).
    Cold,
    /// Snapshot restores (pool off).
    Restore,
    /// The pool full and in bursts, and its sandboxes' PSS.
    Pool,
    /// `print(6*7)` split by clocks, workloads, node.
    Exec,
    /// Streams, processes, transfers.
    Interactive,
    /// N create+exec+delete cycles at once.
    Concurrency,
    /// Create/exec/delete back to back, with leak checks.
    Churn,
    /// N idle restored sandboxes at once.
    Density,
    /// Restores of guests of each `--sizes`.
    Sizes,
    /// Restores into VMM processes started ahead (`--standby-vmms`).
    Standby,
}

/// Flags of `emberctl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The emberd binary to start [default: `emberd` next to emberctl].
    #[arg(long)]
    pub emberd: Option<PathBuf>,
    /// Data dir with the built images [default: emberd's default].
    #[arg(long, env = "EMBERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Samples per latency scenario (at least 5).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Create/exec/delete cycles of the churn.
    #[arg(long, default_value_t = 1000)]
    pub churn: usize,
    /// Cycles between two footprints of the churn.
    #[arg(long, default_value_t = 100)]
    pub churn_every: usize,
    /// Idle sandboxes per pack whose PSS is read, for each boot path (at least 5).
    #[arg(long, default_value_t = 5)]
    pub pss_sandboxes: usize,
    /// Idle restored python sandboxes held at once for the density figure.
    #[arg(long, default_value_t = 32)]
    pub density: usize,
    /// Guest sizes (MiB) whose restore time and PSS are measured.
    #[arg(long, value_delimiter = ',', default_value = "256,1024,4096")]
    pub sizes: Vec<u32>,
    /// Ready VMs per pack in the pool's daemons.
    #[arg(long, default_value_t = 2)]
    pub pool_size: usize,
    /// Standby VMMs per pack in the standby section's daemon.
    #[arg(long, default_value_t = 2)]
    pub standby_vmms: usize,
    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub sections: Vec<Section>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Extra flags for every daemon (e.g. `--backend=qemu`).
    #[arg(long = "daemon-arg", allow_hyphen_values = true)]
    pub daemon_args: Vec<String>,
    /// Measure only the interactive figures (streams, processes, transfers).
    #[arg(long)]
    pub only_interactive: bool,
}

impl BenchArgs {
    /// Samples per figure: never fewer than a median needs.
    fn samples(&self) -> usize {
        self.samples.max(stats::MIN_SAMPLES)
    }

    fn runs(&self, section: Section) -> bool {
        self.sections.is_empty() || self.sections.contains(&section)
    }
}

/// Runs every section asked for, prints the tables, writes the JSON, and
/// fails when a check failed.
pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    if args.only_interactive {
        return interactive::run_alone(&args).await;
    }
    args.pss_sandboxes = args.pss_sandboxes.max(stats::MIN_SAMPLES);
    let mut report = Report::default();
    // What was measured before a failure is still printed and written.
    let measured = sections(&args, &mut report).await;
    ratios(&mut report);
    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("bench: wrote {}", path.display());
    }
    measured?;
    let failures = report.failures();
    anyhow::ensure!(
        failures.is_empty(),
        "checks failed: {}",
        failures.join("; ")
    );
    Ok(())
}

/// Runs the sections asked for, in order, until one fails.
async fn sections(args: &BenchArgs, report: &mut Report) -> anyhow::Result<()> {
    let samples = args.samples();
    if args.runs(Section::Cold) {
        paths::cold(args, report).await?;
    }
    if args.runs(Section::Restore) {
        paths::restore(args, report).await?;
    }
    let pool_sections = [
        Section::Pool,
        Section::Exec,
        Section::Interactive,
        Section::Concurrency,
    ];
    if pool_sections.iter().any(|s| args.runs(*s)) {
        let size = args.pool_size.to_string();
        let daemon = daemon::Daemon::start(args, &["--pool-size", &size, "--snapshots", "true"])?;
        provenance(report, &daemon.client).await?;
        daemon.wait_for_pools(args.pool_size).await?;
        if args.runs(Section::Pool) {
            pool::full(&daemon, report, samples, args.pool_size).await?;
            pool::burst(&daemon, report, samples, args.pool_size).await?;
            pool::pss(&daemon, report, args.pss_sandboxes, args.pool_size).await?;
        }
        if args.runs(Section::Exec) {
            daemon.wait_for_pools(args.pool_size).await?;
            exec::python(&daemon, report, samples).await?;
            daemon.wait_for_pools(args.pool_size).await?;
            exec::node(&daemon, report, samples.min(10)).await?;
        }
        if args.runs(Section::Interactive) {
            interactive::run(&daemon.client, report, samples).await?;
        }
        if args.runs(Section::Concurrency) {
            concurrency::sweep(&daemon, report, samples, args.pool_size).await?;
        }
    }
    if args.runs(Section::Churn) && args.churn > 0 {
        churn::run(args, report).await?;
    }
    if args.runs(Section::Density) && args.density > 0 {
        density::run(args, report).await?;
    }
    if args.runs(Section::Sizes) && !args.sizes.is_empty() {
        sizes::run(args, report).await?;
    }
    if args.runs(Section::Standby) {
        standby::run(args, report).await?;
    }
    Ok(())
}

/// The ratios of medians the tables print when both figures were measured.
fn ratios(report: &mut Report) {
    let pairs = [
        (
            "cold boot / snapshot restore (create)",
            paths::CREATE_COLD,
            paths::CREATE_RESTORE,
        ),
        (
            "cold boot / standby restore (create)",
            paths::CREATE_COLD,
            standby::CREATE,
        ),
        (
            "cold boot / pool full (create)",
            paths::CREATE_COLD,
            pool::CREATE_POOL_FULL,
        ),
        (
            "time to first result: pool full / steady print(6*7) API time",
            pool::FIRST_POOL_FULL,
            exec::API,
        ),
        (
            "time to first result: snapshot restore / steady print(6*7) API time",
            paths::FIRST_RESTORE,
            exec::API,
        ),
        (
            "time to first result: standby restore / steady print(6*7) API time",
            standby::FIRST,
            exec::API,
        ),
        (
            "bare python3 in guest / print(6*7) end to end",
            exec::BARE_PYTHON,
            exec::API,
        ),
        (
            "bare node in guest / console.log(6*7) end to end, 5 s after the last",
            exec::BARE_NODE,
            exec::NODE_PAUSED,
        ),
    ];
    for (label, numerator, denominator) in pairs {
        report.ratio(label, numerator, denominator);
    }
    let pss = |label: &str| memory::pss_name(label, "python");
    report.ratio(
        "idle python PSS: cold boot / snapshot restore",
        &pss("cold boot"),
        &pss("snapshot restore"),
    );
}

/// Notes where the run happened, from the first daemon a run starts.
async fn provenance(report: &mut Report, client: &Client) -> anyhow::Result<()> {
    if !report.provenance.is_empty() {
        return Ok(());
    }
    let info = client.info().await?;
    let p = &mut report.provenance;
    p.insert("backend".into(), info.backend.unwrap_or_default());
    p.insert("accel".into(), info.accel.unwrap_or_default());
    p.insert(
        "guest".into(),
        format!("{} vCPU, {} MiB", info.guest_vcpus, info.guest_ram_mib),
    );
    p.insert("emberd version".into(), info.version.unwrap_or_default());
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    p.insert("commit".into(), commit);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    p.insert("cpu".into(), format!("{model} ({cores} cores)"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    p.insert("host kernel".into(), kernel.trim().to_owned());
    Ok(())
}
