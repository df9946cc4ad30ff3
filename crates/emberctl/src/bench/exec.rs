//! Exec figures in one sandbox from the pool: how `print(6*7)` splits
//! between the client, the daemon, the channel into the VM and the agent
//! (four clocks), a bare interpreter in the guest for reference, workloads,
//! and node's spare interpreter.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use emberd_api::ExecRequest;
use emberd_client::Client;

use super::daemon::{code_request, create_request, hello, Daemon};
use super::report::Report;

pub(super) const API: &str = "exec print(6*7): API time (client, request to parsed answer)";
pub(super) const DAEMON: &str = "exec print(6*7): daemon's time (Server-Timing)";
pub(super) const DAEMON_OWN: &str = "exec print(6*7): daemon's own share (Server-Timing - VM time)";
pub(super) const CLIENT_SHARE: &str =
    "exec print(6*7): client's share (API time - Server-Timing: HTTP, JSON, loopback)";
pub(super) const VM: &str = "exec print(6*7): VM time (at the daemon's end of the channel)";
pub(super) const AGENT: &str = "exec print(6*7): agent time (in the guest)";
pub(super) const CHANNEL: &str = "exec print(6*7): channel inside the VM (VM time - agent time)";
pub(super) const BARE_PYTHON: &str = "bare python3 -c 'print(6*7)' inside the guest";
pub(super) const BARE_NODE: &str = "bare node -e 'console.log(6*7)' inside the guest";
pub(super) const NODE_PAUSED: &str = "exec console.log(6*7) on node, 5 s after the last: API time";
pub(super) const NODE_BACK_TO_BACK: &str = "exec console.log(6*7) on node, back to back: API time";

/// Runs `code`, which times something inside the guest and prints seconds.
async fn seconds_printed(client: &Client, id: &str, code_text: &str) -> anyhow::Result<Duration> {
    let response = client.exec(id, &code_request(code_text)).await?;
    let seconds: f64 = response
        .stdout
        .trim()
        .parse()
        .with_context(|| format!("the timing code printed {:?}", response.stdout))?;
    Ok(Duration::from_secs_f64(seconds.max(0.0)))
}

/// The python figures, in one sandbox from the pool.
pub(super) async fn python(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
) -> anyhow::Result<()> {
    eprintln!("bench: exec print(6*7) ({samples} samples), workloads");
    let sandbox = daemon.create(&create_request("python")).await?;
    let result = python_in(
        &daemon.client,
        &sandbox.id,
        &sandbox.boot_path,
        report,
        samples,
    )
    .await;
    daemon.client.delete_sandbox(&sandbox.id).await?;
    result
}

async fn python_in(
    client: &Client,
    id: &str,
    path: &str,
    report: &mut Report,
    samples: usize,
) -> anyhow::Result<()> {
    // The sandbox's first exec is not steady state (see "time to first result").
    client.exec(id, &code_request("print(6*7)")).await?;
    for _ in 0..samples {
        let started = Instant::now();
        let timed = client.exec_timed(id, &code_request("print(6*7)")).await?;
        let api = started.elapsed();
        let response = timed.value;
        anyhow::ensure!(
            response.stdout == "42\n",
            "print(6*7) printed {:?}",
            response.stdout
        );
        let daemon = timed
            .server_time
            .context("the daemon sent no Server-Timing on exec")?;
        let vm = response
            .vm_duration_us
            .map(Duration::from_micros)
            .context("the daemon reported no vm_duration_us")?;
        let agent = response
            .duration_us
            .map(Duration::from_micros)
            .context("the daemon reported no duration_us")?;
        report.add(API, api, path);
        report.add(DAEMON, daemon, path);
        report.add(DAEMON_OWN, daemon.saturating_sub(vm), path);
        report.add(CLIENT_SHARE, api.saturating_sub(daemon), path);
        report.add(VM, vm, path);
        report.add(AGENT, agent, path);
        report.add(CHANNEL, vm.saturating_sub(agent), path);
    }
    let bare = "import subprocess, time\nt = time.perf_counter()\nsubprocess.run(['python3', '-c', 'print(6*7)'], stdout=subprocess.DEVNULL)\nprint(time.perf_counter() - t)";
    for _ in 0..samples {
        report.add(BARE_PYTHON, seconds_printed(client, id, bare).await?, path);
    }
    let workloads: Vec<(&str, ExecRequest)> = vec![
        (
            "workload: imports (json, re, decimal, collections)",
            code_request(
                "import json, re, decimal, collections, datetime\nprint(len(json.dumps({'a': 1})))",
            ),
        ),
        (
            "workload: 64 KiB of code",
            code_request(&format!("x = '{}'\nprint(len(x))", "a".repeat(64 * 1024))),
        ),
        (
            "workload: 1 MiB of output",
            code_request("import sys\nsys.stdout.write('x' * (1 << 20))"),
        ),
        (
            "workload: 64 KiB of stdin",
            ExecRequest {
                code: "import sys\nprint(len(sys.stdin.read()))".into(),
                stdin: Some("y".repeat(64 * 1024)),
                ..ExecRequest::default()
            },
        ),
        ("workload: exit 3", code_request("raise SystemExit(3)")),
    ];
    for (name, request) in &workloads {
        for _ in 0..samples.min(10) {
            let started = Instant::now();
            client.exec(id, request).await?;
            report.add(name, started.elapsed(), path);
        }
    }
    let request = ExecRequest {
        code: "import time\ntime.sleep(10)".into(),
        timeout_ms: Some(1000),
        ..ExecRequest::default()
    };
    for _ in 0..super::stats::MIN_SAMPLES {
        let started = Instant::now();
        let response = client.exec(id, &request).await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(response.exit_code == -1, "the timeout did not fire");
        report.add("workload: 1 s timeout", elapsed, path);
        report.add(
            "timeout overshoot",
            elapsed.saturating_sub(Duration::from_secs(1)),
            path,
        );
    }
    Ok(())
}

/// The spare node against a bare `node -e` in the same guest. A spare is
/// started when the exec before ends, and node takes seconds to start under
/// TCG: back-to-back execs mostly find it still starting, execs with a pause
/// (an agent's turn) find it ready.
pub(super) async fn node(
    daemon: &Daemon,
    report: &mut Report,
    samples: usize,
) -> anyhow::Result<()> {
    eprintln!("bench: node ({samples} samples per figure)");
    let sandbox = daemon.create(&create_request("node")).await?;
    let (client, id, path) = (
        &daemon.client,
        sandbox.id.as_str(),
        sandbox.boot_path.as_str(),
    );
    let result = async {
        for pause in [Duration::from_secs(5), Duration::ZERO] {
            for _ in 0..samples {
                tokio::time::sleep(pause).await;
                let started = Instant::now();
                let response = client.exec(id, &hello("node")).await?;
                let elapsed = started.elapsed();
                anyhow::ensure!(
                    response.stdout == "42\n",
                    "console.log(6*7) answered {response:?}"
                );
                let name = if pause.is_zero() {
                    NODE_BACK_TO_BACK
                } else {
                    NODE_PAUSED
                };
                report.add(name, elapsed, path);
            }
        }
        let bare = "const { spawnSync } = require('child_process');\nconst t = process.hrtime.bigint();\nspawnSync('node', ['-e', 'console.log(6*7)']);\nconsole.log(Number(process.hrtime.bigint() - t) / 1e9)";
        for _ in 0..samples {
            report.add(BARE_NODE, seconds_printed(client, id, bare).await?, path);
        }
        anyhow::Ok(())
    }
    .await;
    daemon.client.delete_sandbox(id).await?;
    result
}
