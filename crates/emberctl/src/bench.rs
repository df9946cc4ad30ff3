//! `emberctl bench`: the benchmark harness.
//!
//! Runs scenarios against daemons it starts itself (one per configuration:
//! cold boot with pool and snapshots off, restore with the pool off, and the
//! default with pools), each on a free port with its own work dir, and
//! prints a markdown table of medians, p95s and ratios. `--json` writes the
//! raw samples with provenance (commit, CPU, kernel, backend, accel).
//! The interactive figures (streams, processes, transfers) are in
//! `bench/interactive.rs`.

mod interactive;
mod report;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emberd_api::{ExecRequest, ExecResponse};
use emberd_client::Client;
use report::{print_table, Report};

/// Flags of `emberctl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The emberd binary to start [default: `emberd` next to emberctl].
    #[arg(long)]
    pub emberd: Option<PathBuf>,
    /// Data dir with the built images [default: emberd's default].
    #[arg(long, env = "EMBERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Samples per latency scenario.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Create/exec/delete cycles of the churn scenario.
    #[arg(long, default_value_t = 200)]
    pub churn: usize,
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

/// A daemon started for one configuration (on `emberd-harness`), stopped
/// with SIGTERM on drop.
struct Daemon {
    process: emberd_harness::Daemon,
    client: Client,
}

impl Daemon {
    fn start(args: &BenchArgs, extra: &[&str]) -> anyhow::Result<Daemon> {
        let emberd = match &args.emberd {
            Some(path) => path.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(|dir| dir.join("emberd"))
                .ok_or_else(|| anyhow::anyhow!("cannot locate emberd; pass --emberd"))?,
        };
        let mut builder = emberd_harness::Daemon::builder(emberd)
            .args(extra)
            .args(&args.daemon_args)
            .env("EMBERD_LOG", "warn")
            .ready_within(Duration::from_secs(30))
            // Time for the daemon to stop its VMs and remove their directories.
            .stop_grace(Duration::from_secs(30));
        if let Some(data_dir) = &args.data_dir {
            builder = builder.data_dir(data_dir);
        }
        let process = builder.start()?;
        let client = process
            .client()?
            .with_request_timeout(Duration::from_secs(300));
        Ok(Daemon { process, client })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&emberd_api::InfoResponse) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if check(&self.client.info().await?) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "daemon never reached: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_pools(&self) -> anyhow::Result<()> {
        self.wait_for("full pools", |info| {
            info.pool_ready
                .as_ref()
                .is_some_and(|p| !p.is_empty() && p.values().all(|n| *n >= 2))
        })
        .await
    }

    /// Children of the daemon (VMs), fds, work-dir entries and the
    /// daemon's RSS in MiB.
    fn footprint(&self) -> (usize, usize, usize, u64) {
        let children = self.process.children().len();
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0);
        let entries = std::fs::read_dir(self.process.work_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        (children, fds, entries, rss_kib(self.pid()) / 1024)
    }

    /// PSS of the daemon's children (the VMMs), in KiB, and how many there are.
    fn vm_pss_kib(&self) -> (u64, usize) {
        let pids = self.process.children();
        let total = pids.iter().map(|pid| pss_kib(*pid)).sum();
        (total, pids.len())
    }
}

/// How far the daemon's RSS may move over a churn before it counts as growth.
const RSS_SLACK_MIB: u64 = 8;

fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn code(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.to_owned(),
        ..ExecRequest::default()
    }
}

/// Runs `code`, which times something inside the guest and prints seconds.
async fn seconds_printed(client: &Client, id: &str, code_text: &str) -> anyhow::Result<Duration> {
    let response = client.exec(id, &code(code_text)).await?;
    let seconds: f64 = response
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("the timing code printed {:?}", response.stdout))?;
    Ok(Duration::from_secs_f64(seconds.max(0.0)))
}

async fn timed_exec(
    client: &Client,
    id: &str,
    request: &ExecRequest,
) -> anyhow::Result<(Duration, ExecResponse)> {
    let started = Instant::now();
    let response = client.exec(id, request).await?;
    Ok((started.elapsed(), response))
}

/// Runs every scenario and prints the table.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.only_interactive {
        return interactive::run_alone(&args).await;
    }
    let mut report = Report::default();
    let samples = args.samples.max(1);

    // Cold boot: no pool, no snapshots.
    {
        eprintln!("bench: cold boot ({samples} creates)");
        let daemon = Daemon::start(&args, &["--pool-size", "0", "--snapshots", "false"])?;
        provenance(&mut report, &daemon.client).await?;
        for _ in 0..samples {
            let started = Instant::now();
            let id = daemon.client.create_sandbox(Some("python")).await?;
            report.add("create: cold boot", started.elapsed());
            let started = Instant::now();
            daemon.client.delete_sandbox(&id).await?;
            report.add("delete", started.elapsed());
        }
        report.figures.insert(
            "daemon RSS idle (MiB)".into(),
            rss_kib(daemon.pid()) as f64 / 1024.0,
        );
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(daemon.client.create_sandbox(Some("python")).await?);
        }
        for id in &ids {
            daemon.client.exec(id, &code("print(6*7)")).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        report.figures.insert(
            "daemon RSS with 8 sandboxes (MiB)".into(),
            rss_kib(daemon.pid()) as f64 / 1024.0,
        );
        let (pss, count) = daemon.vm_pss_kib();
        report.figures.insert(
            "host memory per sandbox, cold-booted, PSS (MiB)".into(),
            pss as f64 / 1024.0 / count.max(1) as f64,
        );
        for id in &ids {
            daemon.client.delete_sandbox(id).await?;
        }
    }

    // Restore: snapshots on, no pool.
    {
        eprintln!("bench: snapshot restore ({samples} creates)");
        let daemon = Daemon::start(&args, &["--pool-size", "0", "--snapshots", "true"])?;
        daemon
            .wait_for("templates", |info| info.boot_path == "snapshot-restore")
            .await?;
        let mut ids = Vec::new();
        for _ in 0..samples {
            let started = Instant::now();
            let id = daemon.client.create_sandbox(Some("python")).await?;
            report.add("create: snapshot restore", started.elapsed());
            let (elapsed, _) = timed_exec(&daemon.client, &id, &code("print(6*7)")).await?;
            report.add("time to first result: restore + first exec", elapsed);
            ids.push(id);
            if ids.len() == 8 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (pss, count) = daemon.vm_pss_kib();
                report.figures.insert(
                    "host memory per sandbox, restored, PSS (MiB)".into(),
                    pss as f64 / 1024.0 / count.max(1) as f64,
                );
            }
            if ids.len() >= 8 {
                daemon.client.delete_sandbox(&ids.remove(0)).await?;
            }
        }
        for id in ids {
            daemon.client.delete_sandbox(&id).await?;
        }
    }

    // Pools (the default configuration): creates, execs, workloads, churn.
    {
        eprintln!("bench: warm pool, execs, workloads, churn");
        let daemon = Daemon::start(&args, &["--pool-size", "2", "--snapshots", "true"])?;
        daemon.wait_for_pools().await?;
        for _ in 0..samples {
            daemon.wait_for_pools().await?;
            let started = Instant::now();
            let id = daemon.client.create_sandbox(Some("python")).await?;
            report.add("create: warm pool", started.elapsed());
            let (elapsed, _) = timed_exec(&daemon.client, &id, &code("print(6*7)")).await?;
            report.add(
                "time to first result: pool + first exec",
                elapsed + report_last(&report, "create: warm pool"),
            );
            daemon.client.delete_sandbox(&id).await?;
        }
        daemon.wait_for_pools().await?;
        let id = daemon.client.create_sandbox(Some("python")).await?;
        for _ in 0..samples {
            let (elapsed, response) = timed_exec(&daemon.client, &id, &code("print(6*7)")).await?;
            anyhow::ensure!(
                response.stdout == "42\n",
                "print(6*7) printed {:?}",
                response.stdout
            );
            report.add("exec print(6*7): API time", elapsed);
            let agent = Duration::from_micros(response.duration_us.unwrap_or(0));
            report.add("exec print(6*7): agent time (in the guest)", agent);
            let vm = response
                .vm_duration_us
                .map(Duration::from_micros)
                .context("the daemon reported no vm_duration_us")?;
            report.add(
                "exec print(6*7): VM time (at the daemon's end of the channel)",
                vm,
            );
            report.add(
                "exec print(6*7): daemon overhead (API time - VM time)",
                elapsed.saturating_sub(vm),
            );
            report.add(
                "exec print(6*7): channel inside the VM (VM time - agent time)",
                vm.saturating_sub(agent),
            );
            report.add(
                "exec print(6*7): API time - agent time",
                elapsed.saturating_sub(agent),
            );
        }
        let bare = "import subprocess, time\nt = time.perf_counter()\nsubprocess.run(['python3', '-c', 'print(6*7)'], stdout=subprocess.DEVNULL)\nprint(time.perf_counter() - t)";
        for _ in 0..samples {
            let seconds = seconds_printed(&daemon.client, &id, bare).await?;
            report.add("bare python3 -c 'print(6*7)' inside the guest", seconds);
        }
        let workloads: Vec<(&str, ExecRequest)> = vec![
            ("workload: imports (json, re, decimal, collections)", code("import json, re, decimal, collections, datetime\nprint(len(json.dumps({'a': 1})))")),
            ("workload: 64 KiB of code", code(&format!("x = '{}'\nprint(len(x))", "a".repeat(64 * 1024)))),
            ("workload: 1 MiB of output", code("import sys\nsys.stdout.write('x' * (1 << 20))")),
            (
                "workload: 64 KiB of stdin",
                ExecRequest {
                    code: "import sys\nprint(len(sys.stdin.read()))".into(),
                    stdin: Some("y".repeat(64 * 1024)),
                    timeout_ms: None,
                    user: None,
                },
            ),
            ("workload: exit 3", code("raise SystemExit(3)")),
        ];
        for (name, request) in &workloads {
            for _ in 0..samples.min(10) {
                let (elapsed, _) = timed_exec(&daemon.client, &id, request).await?;
                report.add(name, elapsed);
            }
        }
        for _ in 0..3 {
            let request = ExecRequest {
                code: "import time\ntime.sleep(10)".into(),
                stdin: None,
                timeout_ms: Some(1000),
                user: None,
            };
            let (elapsed, response) = timed_exec(&daemon.client, &id, &request).await?;
            anyhow::ensure!(response.exit_code == -1, "the timeout did not fire");
            report.add("workload: 1 s timeout", elapsed);
            report.add(
                "timeout overshoot",
                elapsed.saturating_sub(Duration::from_secs(1)),
            );
        }
        daemon.client.delete_sandbox(&id).await?;

        // Node: the spare node against a bare `node -e` in the same guest. A
        // spare is started when the exec before ends, and node takes seconds
        // to start under TCG: back-to-back execs mostly find it still
        // starting, execs with a pause (an agent's turn) find it ready.
        daemon.wait_for_pools().await?;
        let id = daemon.client.create_sandbox(Some("node")).await?;
        let node_samples = samples.min(10);
        for pause in [Duration::from_secs(5), Duration::ZERO] {
            for _ in 0..node_samples {
                tokio::time::sleep(pause).await;
                let (elapsed, response) =
                    timed_exec(&daemon.client, &id, &code("console.log(6*7)")).await?;
                anyhow::ensure!(
                    response.stdout == "42\n",
                    "console.log(6*7) printed {:?}",
                    response.stdout
                );
                let name = if pause.is_zero() {
                    "exec console.log(6*7) on node, back to back: API time"
                } else {
                    "exec console.log(6*7) on node, 5 s after the last: API time"
                };
                report.add(name, elapsed);
            }
        }
        let bare = "const { spawnSync } = require('child_process');\nconst t = process.hrtime.bigint();\nspawnSync('node', ['-e', 'console.log(6*7)']);\nconsole.log(Number(process.hrtime.bigint() - t) / 1e9)";
        for _ in 0..node_samples {
            let seconds = seconds_printed(&daemon.client, &id, bare).await?;
            report.add("bare node -e 'console.log(6*7)' inside the guest", seconds);
        }
        daemon.client.delete_sandbox(&id).await?;

        interactive::run(&daemon.client, &mut report, samples).await?;

        // Concurrency sweep: N sandboxes from the pool, one exec each at once.
        for n in [1usize, 2, 4, 8] {
            daemon.wait_for_pools().await?;
            let started = Instant::now();
            let cycles = (0..n).map(|_| {
                let client = daemon.client.clone();
                async move {
                    let id = client.create_sandbox(Some("python")).await?;
                    client.exec(&id, &code("print(6*7)")).await?;
                    client.delete_sandbox(&id).await?;
                    anyhow::Ok(())
                }
            });
            for result in futures::future::join_all(cycles).await {
                result?;
            }
            report.add(
                &format!("concurrency {n}: create+exec+delete, wall"),
                started.elapsed(),
            );
        }

        // Churn: cycles back to back; processes, fds and directories must not grow.
        daemon.wait_for_pools().await?;
        let before = daemon.footprint();
        let started = Instant::now();
        for _ in 0..args.churn {
            let id = daemon.client.create_sandbox(Some("python")).await?;
            daemon.client.exec(&id, &code("print(6*7)")).await?;
            daemon.client.delete_sandbox(&id).await?;
        }
        let churn_time = started.elapsed();
        daemon.wait_for_pools().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = daemon.footprint();
        report.figures.insert(
            "churn: cycles per minute".into(),
            args.churn as f64 / churn_time.as_secs_f64() * 60.0,
        );
        report.checks.insert(
            format!(
                "churn of {} cycles: VMM processes / daemon fds / work-dir entries / daemon RSS MiB",
                args.churn
            ),
            format!(
                "{} → {}, {} → {}, {} → {}, {} → {}: {}",
                before.0,
                after.0,
                before.1,
                after.1,
                before.2,
                after.2,
                before.3,
                after.3,
                // Allocator slack is not a leak: RSS may wander a few MiB.
                if after.0 <= before.0
                    && after.1 <= before.1
                    && after.2 <= before.2
                    && after.3 <= before.3 + RSS_SLACK_MIB
                {
                    "no growth"
                } else {
                    "GREW"
                }
            ),
        );
        let (pss, count) = daemon.vm_pss_kib();
        report.figures.insert(
            "host memory per pooled idle sandbox, PSS (MiB)".into(),
            pss as f64 / 1024.0 / count.max(1) as f64,
        );
    }

    print_table(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn report_last(report: &Report, name: &str) -> Duration {
    report
        .latencies_ms
        .get(name)
        .and_then(|v| v.last())
        .map_or(Duration::ZERO, |ms| Duration::from_secs_f64(ms / 1000.0))
}

async fn provenance(report: &mut Report, client: &Client) -> anyhow::Result<()> {
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
