//! The argument layer of the settings: the flags of `emberd serve` (and
//! `emberd doctor`) and their `EMBERD_*` variables, as clap reads them.
//! Nothing here resolves or checks a setting; [`super`] does.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use serde::Serialize;

use super::{duration, parse_duration};
use crate::backend_choice::BackendChoice;
use crate::vmm::qemu::AccelChoice;

/// Flags of `emberd serve` (and `emberd doctor`). Every field is optional so
/// that the config file and the defaults can fill what is left out.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings, by the same names.
    #[arg(long, env = "EMBERD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve the HTTP API on [default: 127.0.0.1:7777].
    #[arg(long, env = "EMBERD_ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// VM backend [default: auto].
    #[arg(long, env = "EMBERD_BACKEND", value_parser = backend_parser())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendChoice>,
    /// QEMU accelerator [default: auto: KVM only where hardware KVM works].
    #[arg(long, env = "EMBERD_ACCEL", value_parser = accel_parser())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<AccelChoice>,
    /// vCPUs per sandbox [default: 1].
    #[arg(long, env = "EMBERD_VCPUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// Guest memory per sandbox, MiB [default: 256].
    #[arg(long, env = "EMBERD_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Size of each sandbox's writable layer, MiB [default: 256].
    #[arg(long, env = "EMBERD_OVERLAY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay_mib: Option<u32>,
    /// Per-sandbox runtime files (sockets, console logs) [default: /run/emberd as root,
    /// else $XDG_RUNTIME_DIR/emberd or /tmp/emberd-<uid>].
    #[arg(long, env = "EMBERD_WORK_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// Built guest images [default: ~/.local/share/emberd].
    #[arg(long, env = "EMBERD_DATA_DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Bound on a sandbox's boot, e.g. "30s" or "30" [default: 30s].
    #[arg(long, env = "EMBERD_BOOT_TIMEOUT", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub boot_timeout: Option<Duration>,
    /// QEMU binary [default: qemu-system-x86_64 on PATH].
    #[arg(long, env = "EMBERD_QEMU_BIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_bin: Option<PathBuf>,
    /// Firecracker binary [default: firecracker on PATH or in ~/.local/bin].
    #[arg(long, env = "EMBERD_FIRECRACKER_BIN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firecracker_bin: Option<PathBuf>,
    /// TCG's translation cache per QEMU process, MiB; no effect under KVM
    /// [default: 64].
    #[arg(long, env = "EMBERD_TB_SIZE_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tb_size_mib: Option<u32>,
    /// Booted sandboxes kept ready per pack; 0 or -1 disables the pool [default: 2].
    #[arg(long, env = "EMBERD_POOL_SIZE", allow_negative_numbers = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<i64>,
    /// Most guest memory all pools together may hold, MiB [default: 2048].
    #[arg(long, env = "EMBERD_POOL_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_memory_mib: Option<u64>,
    /// Most VMs per pack a pool grows to when creates find it empty; it
    /// shrinks back to --pool-size when idle [default: 4].
    #[arg(long, env = "EMBERD_POOL_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_max: Option<usize>,
    /// Pool refills (boot and warm-up) in flight at once over all packs;
    /// 0 for no bound beyond --max-concurrent-boots [default: 1].
    #[arg(long, env = "EMBERD_POOL_REFILLS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_refills: Option<usize>,
    /// How long a refill waits after a hand-out, so that the sandbox just
    /// handed out runs its first exec alone [default: 250ms].
    #[arg(long, env = "EMBERD_POOL_REFILL_SETTLE", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub pool_refill_settle: Option<Duration>,
    /// A pool grown past --pool-size shrinks by one VM after this long
    /// without a hand-out or a miss [default: 60s].
    #[arg(long, env = "EMBERD_POOL_SHRINK_AFTER", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub pool_shrink_after: Option<Duration>,
    /// VMM processes kept started ahead per pack, waiting for the pack's
    /// template (a create that misses the pool restores into one); 0
    /// disables them [default: 0].
    #[arg(long, env = "EMBERD_STANDBY_VMMS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_vmms: Option<usize>,
    /// Restore sandboxes from per-pack template snapshots [default: true].
    #[arg(long, env = "EMBERD_SNAPSHOTS", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<bool>,
    /// Build template snapshots lazily, after a pack's first cold boot,
    /// instead of at startup.
    #[arg(long, env = "EMBERD_SKIP_WARM", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_warm: Option<bool>,
    // Per-sandbox limits, admission control and reaping.
    /// Most vCPUs a create may ask for [default: the host's CPUs, at least --vcpus].
    #[arg(long, env = "EMBERD_MAX_VCPUS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u32>,
    /// Most guest memory a create may ask for, MiB [default: 2048, at least --memory-mib].
    #[arg(long, env = "EMBERD_MAX_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory_mib: Option<u32>,
    /// Largest writable layer a create may ask for, MiB [default: 2048, at least --overlay-mib].
    #[arg(long, env = "EMBERD_MAX_DISK_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_disk_mib: Option<u32>,
    /// Longest TTL a create may ask for, seconds; also the TTL of a create
    /// that names none [default: none].
    #[arg(long, env = "EMBERD_MAX_TTL_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ttl_s: Option<u64>,
    /// Idle timeout of a create that names none, seconds; 0 disables [default: 1800].
    #[arg(long, env = "EMBERD_IDLE_TIMEOUT_S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Most sandboxes, pooled VMs included [default: 64].
    #[arg(long, env = "EMBERD_MAX_SANDBOXES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_sandboxes: Option<usize>,
    /// Most guest memory of all sandboxes and pooled VMs, MiB [default: half the host's RAM].
    #[arg(long, env = "EMBERD_MAX_GUEST_MEMORY_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_guest_memory_mib: Option<u64>,
    /// Most VMs booting at once; more creates wait for a turn [default: the host's CPUs].
    #[arg(long, env = "EMBERD_MAX_CONCURRENT_BOOTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_boots: Option<usize>,
    /// Bound on draining HTTP requests at shutdown [default: 10s].
    #[arg(long, env = "EMBERD_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub shutdown_timeout: Option<Duration>,
    // Firecracker's jailer (VMM confinement).
    /// Firecracker's jailer, used by default when found and the daemon is root
    /// [default: jailer on PATH].
    #[arg(long, env = "EMBERD_JAILER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jailer: Option<PathBuf>,
    /// Run Firecracker without its jailer even where one is found.
    #[arg(long, env = "EMBERD_NO_JAILER", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_jailer: Option<bool>,
    /// Where the jailer builds each VM's chroot; keep it on the data dir's
    /// filesystem so files are hard-linked, not copied [default: <data dir>/jail].
    #[arg(long, env = "EMBERD_JAILER_CHROOT_BASE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jailer_chroot_base: Option<PathBuf>,
    // The HTTP edge: who may call, and what one request may take.
    /// File of bearer tokens, one a line (`#` comments); must not be
    /// world-readable. Needed on any address but loopback (or `EMBERD_TOKEN`).
    #[arg(long, env = "EMBERD_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A browser Origin allowed to call, e.g. https://dash.example; repeatable
    /// (comma-separated in the variable) [default: none].
    #[arg(long, env = "EMBERD_ALLOW_ORIGIN", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Requests served at once; more are answered 429 [default: 64].
    #[arg(long, env = "EMBERD_MAX_CONCURRENT_REQUESTS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<usize>,
    /// Bound on receiving a request's headers, and on an idle keep-alive
    /// connection [default: 10s].
    #[arg(long, env = "EMBERD_HEADER_READ_TIMEOUT", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub header_read_timeout: Option<Duration>,
    /// Bound on receiving a request's body [default: 60s].
    #[arg(long, env = "EMBERD_BODY_READ_TIMEOUT", value_parser = parse_duration)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "duration::serialize_some"
    )]
    pub body_read_timeout: Option<Duration>,
    // VMM confinement.
    /// Unprivileged user the VMMs run as when the daemon runs as root
    /// (created by `make setup`) [default: emberd-vmm].
    #[arg(long, env = "EMBERD_VMM_USER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmm_user: Option<String>,
    // Background processes (see docs/processes.md).
    /// Most background processes running at once per sandbox; more starts get 429 [default: 32].
    #[arg(long, env = "EMBERD_MAX_PROCESSES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<usize>,
    /// Output kept per background process, bytes; older output is dropped [default: 8388608].
    #[arg(long, env = "EMBERD_PROCESS_LOG_BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_log_bytes: Option<usize>,
    // The files API.
    /// Largest file transfer (one upload or download of the files API), MiB;
    /// more is answered 413 [default: 2048].
    #[arg(long, env = "EMBERD_MAX_TRANSFER_MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_transfer_mib: Option<u64>,
}

/// Flags of `emberd mcp`: which daemon the stdio MCP server is a client of.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct McpArgs {
    /// Address of the daemon, host:port or an http:// URL [default: 127.0.0.1:7777].
    #[arg(long, env = "EMBERD_ADDR")]
    pub addr: Option<String>,
    /// Bearer token for a daemon that wants one.
    #[arg(long, env = "EMBERD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl McpArgs {
    /// The daemon's address, the default when none is given.
    pub fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or("127.0.0.1:7777")
    }
}

/// `--backend`: the choice's names, with `auto` explained in `--help`.
fn backend_parser() -> impl TypedValueParser<Value = BackendChoice> {
    PossibleValuesParser::new(BackendChoice::ALL.map(|choice| {
        match choice {
            BackendChoice::Auto => PossibleValue::new(choice.as_str())
                .help("Firecracker where it is installed and hardware KVM works, else QEMU"),
            _ => PossibleValue::new(choice.as_str()),
        }
    }))
    .try_map(|name| name.parse::<BackendChoice>())
}

/// `--accel`: the choice's names, with `auto` explained in `--help`.
fn accel_parser() -> impl TypedValueParser<Value = AccelChoice> {
    PossibleValuesParser::new(AccelChoice::ALL.map(|choice| match choice {
        AccelChoice::Auto => {
            PossibleValue::new(choice.as_str()).help("KVM where hardware KVM works, TCG elsewhere")
        }
        _ => PossibleValue::new(choice.as_str()),
    }))
    .try_map(|name| name.parse::<AccelChoice>())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use clap::Parser;

    use super::*;
    use crate::config::tests::write_file;

    /// `emberd serve` as clap parses it.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn an_environment_variable_wins_over_the_file_and_a_flag_over_both() {
        let (_dir, file) = write_file("pool-size = 4\nvcpus = 2\n");
        let argv = |extra: &'static [&'static str]| {
            let mut argv = vec![
                OsStr::new("emberd"),
                OsStr::new("--config"),
                file.as_os_str(),
            ];
            argv.extend(extra.iter().map(OsStr::new));
            argv
        };
        // The only test that sets this variable; nextest runs each test in
        // its own process.
        std::env::set_var("EMBERD_POOL_SIZE", "0");
        let from_env = Serve::try_parse_from(argv(&[]));
        let from_flag = Serve::try_parse_from(argv(&["--pool-size", "3"]));
        std::env::remove_var("EMBERD_POOL_SIZE");

        let settings = from_env.unwrap().args.resolve().unwrap();
        assert_eq!(settings.pool_size, 0);
        assert_eq!(settings.vcpus, 2);
        let settings = from_flag.unwrap().args.resolve().unwrap();
        assert_eq!(settings.pool_size, 3);
    }

    #[test]
    fn flags_parse_the_documented_syntax() {
        let parsed = Serve::try_parse_from([
            "emberd",
            "--backend",
            "qemu",
            "--accel",
            "tcg",
            "--pool-size",
            "-1",
            "--boot-timeout",
            "1500ms",
            "--skip-warm",
            "--vmm-user",
            "nobody",
        ])
        .unwrap();
        let settings = parsed.args.resolve().unwrap();
        assert_eq!(settings.backend, BackendChoice::Qemu);
        assert_eq!(settings.accel, AccelChoice::Tcg);
        assert_eq!(settings.pool_size, 0);
        assert_eq!(settings.boot_timeout, Duration::from_millis(1500));
        assert!(settings.skip_warm);
        assert_eq!(settings.vmm_user, "nobody");
        assert!(Serve::try_parse_from(["emberd", "--backend", "kvm"]).is_err());
    }

    #[test]
    fn the_jailer_flags_parse_and_default_to_jailing() {
        let settings = Serve::try_parse_from(["emberd"])
            .unwrap()
            .args
            .resolve()
            .unwrap();
        assert_eq!((settings.jailer, settings.no_jailer), (None, false));
        assert_eq!(settings.jailer_chroot_base, None);
        let parsed = Serve::try_parse_from([
            "emberd",
            "--jailer",
            "/opt/fc/jailer",
            "--no-jailer",
            "--jailer-chroot-base",
            "/srv/jails",
        ])
        .unwrap();
        let settings = parsed.args.resolve().unwrap();
        assert_eq!(settings.jailer, Some(PathBuf::from("/opt/fc/jailer")));
        assert!(settings.no_jailer);
        assert_eq!(
            settings.jailer_chroot_base,
            Some(PathBuf::from("/srv/jails"))
        );
    }

    #[test]
    fn http_edge_flags_parse_and_origins_repeat() {
        let parsed = Serve::try_parse_from([
            "emberd",
            "--token-file",
            "/etc/emberd/tokens",
            "--allow-origin",
            "https://a.example",
            "--allow-origin",
            "http://localhost:3000",
            "--max-concurrent-requests",
            "16",
            "--header-read-timeout",
            "3s",
            "--body-read-timeout",
            "20",
        ])
        .unwrap();
        let settings = parsed.args.resolve().unwrap();
        assert_eq!(
            settings.token_file,
            Some(PathBuf::from("/etc/emberd/tokens"))
        );
        assert_eq!(
            settings.allow_origin,
            ["https://a.example", "http://localhost:3000"]
        );
        assert_eq!(settings.max_concurrent_requests, 16);
        assert_eq!(settings.header_read_timeout, Duration::from_secs(3));
        assert_eq!(settings.body_read_timeout, Duration::from_secs(20));
    }

    #[test]
    fn mcp_flags_name_the_daemon_and_default_to_loopback() {
        #[derive(Parser)]
        struct Mcp {
            #[command(flatten)]
            args: McpArgs,
        }
        let defaults = Mcp::try_parse_from(["emberd"]).unwrap().args;
        if std::env::var_os("EMBERD_ADDR").is_none() {
            assert_eq!(defaults.addr(), "127.0.0.1:7777");
        }
        let parsed =
            Mcp::try_parse_from(["emberd", "--addr", "10.0.0.2:9000", "--token", "s3cret"])
                .unwrap()
                .args;
        assert_eq!(parsed.addr(), "10.0.0.2:9000");
        assert_eq!(parsed.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_transfer_limit_is_a_flag_with_a_default_and_must_be_positive() {
        let defaults = Serve::try_parse_from(["emberd"])
            .unwrap()
            .args
            .resolve()
            .unwrap();
        assert_eq!(defaults.max_transfer_mib, 2048);
        assert_eq!(defaults.limits().max_transfer_bytes, 2048 << 20);
        let parsed = Serve::try_parse_from(["emberd", "--max-transfer-mib", "64"]).unwrap();
        let settings = parsed.args.resolve().unwrap();
        assert_eq!(settings.limits().max_transfer_bytes, 64 << 20);
        let zero = Serve::try_parse_from(["emberd", "--max-transfer-mib", "0"]).unwrap();
        assert!(zero.args.resolve().is_err());
    }
}
