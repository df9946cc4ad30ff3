//! A daemon started for one configuration of `emberctl bench` (on
//! `emberd-harness`, stopped with SIGTERM on drop), and the calls every
//! section times the same way: a create whose boot path and VMM pid are
//! read afterwards, untimed, from the sandbox's info.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use emberd_api::{CreateSandboxRequest, ExecRequest, InfoResponse};
use emberd_client::Client;

use super::BenchArgs;

pub(super) struct Daemon {
    pub(super) process: emberd_harness::Daemon,
    pub(super) client: Client,
}

/// A sandbox the bench created, and how.
#[derive(Debug, Clone)]
pub(super) struct Created {
    pub(super) id: String,
    pub(super) boot_path: String,
    pub(super) vmm_pid: u32,
    /// The client's time for `POST /sandboxes`.
    pub(super) elapsed: Duration,
    /// The daemon's time for it (`Server-Timing`).
    pub(super) server_time: Option<Duration>,
}

/// The emberd binary the bench starts.
pub(super) fn emberd_binary(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    match &args.emberd {
        Some(path) => Ok(path.clone()),
        None => std::env::current_exe()?
            .parent()
            .map(|dir| dir.join("emberd"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate emberd; pass --emberd")),
    }
}

/// Whether `emberd serve` knows `flag` (from its `--help`).
pub(super) fn serve_has_flag(args: &BenchArgs, flag: &str) -> anyhow::Result<bool> {
    let binary = emberd_binary(args)?;
    let output = std::process::Command::new(&binary)
        .args(["serve", "--help"])
        .output()
        .with_context(|| format!("cannot run {} serve --help", binary.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} serve --help failed",
        binary.display()
    );
    let help = String::from_utf8_lossy(&output.stdout);
    Ok(help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|word| word == flag))
}

impl Daemon {
    pub(super) fn start(args: &BenchArgs, extra: &[&str]) -> anyhow::Result<Daemon> {
        let mut builder = emberd_harness::Daemon::builder(emberd_binary(args)?)
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

    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub(super) async fn wait_for(
        &self,
        what: &str,
        check: impl Fn(&InfoResponse) -> bool,
    ) -> anyhow::Result<InfoResponse> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let info = self.client.info().await?;
            if check(&info) {
                return Ok(info);
            }
            anyhow::ensure!(Instant::now() < deadline, "daemon never reached: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the template of the default pack is usable.
    pub(super) async fn wait_for_template(&self) -> anyhow::Result<()> {
        self.wait_for("a usable template", |info| {
            info.boot_path == "snapshot-restore" || info.boot_path == "standby-restore"
        })
        .await
        .map(drop)
    }

    /// Waits until every pack's pool holds at least `size` VMs; returns how
    /// many they hold together.
    pub(super) async fn wait_for_pools(&self, size: usize) -> anyhow::Result<usize> {
        let info = self
            .wait_for("full pools", |info| pools_full(info, size))
            .await?;
        Ok(info.pool_ready.map_or(0, |p| p.values().sum()))
    }

    /// `POST /sandboxes` timed, then (untimed) the sandbox's boot path and
    /// VMM pid from its info.
    pub(super) async fn create(&self, request: &CreateSandboxRequest) -> anyhow::Result<Created> {
        let started = Instant::now();
        let timed = self.client.create_sandbox_timed(request).await?;
        let elapsed = started.elapsed();
        let info = self.client.get_sandbox(&timed.value).await?;
        Ok(Created {
            boot_path: info
                .boot_path
                .context("the sandbox's info has no boot_path")?,
            vmm_pid: info.vmm_pid.context("the sandbox's info has no vmm_pid")?,
            id: timed.value,
            elapsed,
            server_time: timed.server_time,
        })
    }

    /// Runs `code` of `pack` and checks that it printed 42.
    pub(super) async fn exec_42(&self, id: &str, pack: &str) -> anyhow::Result<()> {
        let response = self.client.exec(id, &hello(pack)).await?;
        anyhow::ensure!(
            response.stdout == "42\n" && response.exit_code == 0,
            "the {pack} exec in {id} answered {response:?}"
        );
        Ok(())
    }
}

/// Every pack has a pool of at least `size` ready VMs.
pub(super) fn pools_full(info: &InfoResponse, size: usize) -> bool {
    info.pool_ready
        .as_ref()
        .is_some_and(|p| !p.is_empty() && p.values().all(|n| *n >= size))
}

/// A create of the default shape for `pack`.
pub(super) fn create_request(pack: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        language_pack: Some(pack.to_owned()),
        ..CreateSandboxRequest::default()
    }
}

/// The program that prints 42 in `pack`'s language.
pub(super) fn hello(pack: &str) -> ExecRequest {
    let code = match pack {
        "node" => "console.log(6*7)",
        "shell" => "echo $((6*7))",
        _ => "print(6*7)",
    };
    ExecRequest {
        // Node starts in seconds under TCG, and much later on a loaded host:
        // this exec proves the sandbox answers, not how fast.
        timeout_ms: Some(EXEC_42_TIMEOUT_MS),
        ..code_request(code)
    }
}

/// Bound of the execs that check a sandbox answers.
const EXEC_42_TIMEOUT_MS: u64 = 180_000;

pub(super) fn code_request(code: &str) -> ExecRequest {
    ExecRequest {
        code: code.to_owned(),
        ..ExecRequest::default()
    }
}
