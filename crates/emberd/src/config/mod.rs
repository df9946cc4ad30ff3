//! Daemon settings: command-line flags, environment variables and an
//! optional TOML file, all with the same names.
//!
//! Precedence: flag or `EMBERD_*` variable, then the config file, then the
//! built-in default. [`Settings`] is the one settings type: its `Default`
//! holds the defaults, its serde shape is the file's, and it is what the
//! daemon runs with. [`ServeArgs`] (in `args`) is the argument layer: clap
//! reads the flags and the variables into it, every field optional. figment
//! layers defaults, file and arguments. Nothing here decides anything from a
//! setting: it only resolves and checks them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::backend_choice::BackendChoice;
use crate::sandbox::ManagerConfig;
use crate::vmm::qemu::AccelChoice;

mod args;
mod limits;

pub use args::{McpArgs, ServeArgs};

/// Errors resolving settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Most standby VMMs per pack: each is a process with its own memory.
const MAX_STANDBY_VMMS: usize = 64;

/// The settings the daemon runs with, and the keys of the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    pub addr: SocketAddr,
    pub backend: BackendChoice,
    pub accel: AccelChoice,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub overlay_mib: u32,
    pub work_dir: PathBuf,
    pub data_dir: PathBuf,
    #[serde(with = "duration")]
    pub boot_timeout: Duration,
    pub qemu_bin: Option<PathBuf>,
    pub firecracker_bin: Option<PathBuf>,
    /// TCG's translation cache per QEMU process, MiB (no effect under KVM).
    pub tb_size_mib: u32,
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// Booted sandboxes kept ready per pack; 0 disables the pool.
    #[serde(with = "pool_size")]
    pub pool_size: usize,
    pub pool_memory_mib: u64,
    /// Most VMs per pack a pool grows to when creates find it empty;
    /// at most `pool_size` means a fixed size.
    pub pool_max: usize,
    /// Pool refills (boot and warm-up) in flight at once over all packs.
    pub pool_refills: usize,
    /// How long a refill waits after a hand-out.
    #[serde(with = "duration")]
    pub pool_refill_settle: Duration,
    /// A grown pool shrinks by one VM after this long without demand.
    #[serde(with = "duration")]
    pub pool_shrink_after: Duration,
    /// VMM processes kept started ahead per pack; 0 disables them.
    pub standby_vmms: usize,
    pub snapshots: bool,
    pub skip_warm: bool,
    // Firecracker's jailer (VMM confinement).
    /// The `jailer` binary; `None`: `jailer` on PATH.
    pub jailer: Option<PathBuf>,
    /// Run Firecracker without its jailer even where one is found.
    pub no_jailer: bool,
    /// Where jails are built; `None`: `<data dir>/jail`.
    pub jailer_chroot_base: Option<PathBuf>,
    // Per-sandbox limits, admission control and reaping (see `limits`).
    /// Most vCPUs a create may ask for; `None`: the host's CPUs.
    pub max_vcpus: Option<u32>,
    /// Most guest memory a create may ask for; `None`: 2048 MiB.
    pub max_memory_mib: Option<u32>,
    /// Largest writable layer a create may ask for; `None`: 2048 MiB.
    pub max_disk_mib: Option<u32>,
    /// Longest TTL, and the TTL of a create that names none; `None`: no TTL.
    pub max_ttl_s: Option<u64>,
    /// Idle timeout of a create that names none; 0 disables.
    pub idle_timeout_s: u64,
    /// Sandboxes and pooled VMs together.
    pub max_sandboxes: usize,
    /// Guest memory of sandboxes and pooled VMs together; `None`: half the host's RAM.
    pub max_guest_memory_mib: Option<u64>,
    /// VMs booting at once; `None`: the host's CPUs.
    pub max_concurrent_boots: Option<usize>,
    // The HTTP edge: who may call, and what one request may take.
    // (`EMBERD_TOKEN` is read by `serve` alone, so that no token is a setting.)
    pub token_file: Option<PathBuf>,
    pub allow_origin: Vec<String>,
    pub max_concurrent_requests: usize,
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    // VMM confinement.
    /// The unprivileged user VMMs run as when the daemon is root.
    pub vmm_user: String,
    // Background processes.
    /// Processes running at once per sandbox.
    pub max_processes: usize,
    /// Output kept per process, in bytes.
    pub process_log_bytes: usize,
    // The files API.
    /// Largest file transfer (one upload or download), in MiB.
    pub max_transfer_mib: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            addr: SocketAddr::from(([127, 0, 0, 1], 7777)),
            backend: BackendChoice::Auto,
            accel: AccelChoice::Auto,
            vcpus: 1,
            memory_mib: 256,
            overlay_mib: 256,
            work_dir: default_work_dir(),
            data_dir: default_data_dir(),
            boot_timeout: Duration::from_secs(30),
            qemu_bin: None,
            firecracker_bin: None,
            tb_size_mib: crate::vmm::qemu::TCG_TRANSLATION_CACHE_MIB,
            shutdown_timeout: Duration::from_secs(10),
            pool_size: 2,
            pool_memory_mib: 2048,
            pool_max: 4,
            pool_refills: 1,
            pool_refill_settle: Duration::from_millis(250),
            pool_shrink_after: Duration::from_secs(60),
            standby_vmms: 0,
            snapshots: true,
            skip_warm: false,
            jailer: None,
            no_jailer: false,
            jailer_chroot_base: None,
            max_vcpus: None,
            max_memory_mib: None,
            max_disk_mib: None,
            max_ttl_s: None,
            idle_timeout_s: 30 * 60,
            max_sandboxes: crate::sandbox::limits::DEFAULT_MAX_SANDBOXES,
            max_guest_memory_mib: None,
            max_concurrent_boots: None,
            token_file: None,
            allow_origin: Vec::new(),
            max_concurrent_requests: crate::api::DEFAULT_MAX_CONCURRENT_REQUESTS,
            header_read_timeout: crate::api::DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: crate::api::DEFAULT_BODY_READ_TIMEOUT,
            vmm_user: crate::vmm::vmm_user::DEFAULT_VMM_USER.to_owned(),
            max_processes: crate::sandbox::limits::DEFAULT_MAX_PROCESSES,
            process_log_bytes: crate::sandbox::limits::DEFAULT_PROCESS_LOG_BYTES,
            max_transfer_mib: crate::sandbox::limits::DEFAULT_MAX_TRANSFER_MIB,
        }
    }
}

impl ServeArgs {
    /// Layers the defaults, the config file (if any) and these arguments,
    /// then checks the result.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let mut layers = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            layers = layers.merge(Toml::string(&text));
        }
        let settings: Settings = layers
            .merge(Serialized::defaults(self))
            .extract()
            .map_err(|e| invalid(&e, self.config.as_deref()))?;
        settings.check()?;
        Ok(settings)
    }
}

/// Says which key is wrong, and in which file when it came from one.
fn invalid(error: &figment::Error, file: Option<&Path>) -> ConfigError {
    use figment::error::Kind;
    let one_of = |names: &[&str]| {
        let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
        quoted.join(", ")
    };
    let message = match &error.kind {
        Kind::UnknownField(key, expected) => {
            format!(
                "unknown field `{key}`, expected one of {}",
                one_of(expected)
            )
        }
        Kind::UnknownVariant(value, expected) => format!(
            "unknown value `{value}` for key `{}`, expected one of {}",
            error.path.join("."),
            one_of(expected)
        ),
        kind if error.path.is_empty() => kind.to_string(),
        kind => format!("{kind} for key `{}`", error.path.join(".")),
    };
    // Flags and defaults are typed before they get here, so an unknown
    // key, or a value with the file's provenance, is the file's.
    let from_file = matches!(error.kind, Kind::UnknownField(..))
        || error
            .metadata
            .as_ref()
            .is_some_and(|m| m.name.starts_with(Toml::NAME));
    match file {
        Some(path) if from_file => ConfigError::Parse {
            path: path.to_owned(),
            message,
        },
        _ => ConfigError::Invalid(message),
    }
}

impl Settings {
    /// What the sandbox manager needs of these settings.
    pub fn manager_config(&self) -> ManagerConfig {
        ManagerConfig {
            work_dir: self.work_dir.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            boot_timeout: self.boot_timeout,
            overlay_mib: self.overlay_mib,
            pool_size: self.pool_size,
            pool_memory_mib: self.pool_memory_mib,
            pool: crate::sandbox::PoolPolicy {
                max_size: self.pool_max,
                max_refills: self.pool_refills,
                refill_settle: self.pool_refill_settle,
                shrink_after: self.pool_shrink_after,
            },
            standby_vmms: self.standby_vmms,
            snapshot_dir: self.snapshots.then(|| self.data_dir.join("snapshots")),
            warm_templates_at_start: !self.skip_warm,
            limits: self.limits(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(1..=2048).contains(&self.tb_size_mib) {
            return Err(ConfigError::Invalid(
                "tb-size-mib must be between 1 and 2048".into(),
            ));
        }
        if self.standby_vmms > MAX_STANDBY_VMMS {
            return Err(ConfigError::Invalid(format!(
                "standby-vmms must be at most {MAX_STANDBY_VMMS}"
            )));
        }
        if !(1..=64).contains(&self.vcpus) {
            return Err(ConfigError::Invalid(
                "vcpus must be between 1 and 64".into(),
            ));
        }
        if !(64..=65536).contains(&self.memory_mib) {
            return Err(ConfigError::Invalid(
                "memory-mib must be between 64 and 65536".into(),
            ));
        }
        if self.overlay_mib == 0 {
            return Err(ConfigError::Invalid("overlay-mib must be positive".into()));
        }
        self.check_limits()?;
        self.check_http()?;
        if self.vmm_user.is_empty() {
            return Err(ConfigError::Invalid("vmm-user must not be empty".into()));
        }
        // Unix socket paths under the work dir must fit in sun_path (108 bytes).
        let longest = self.work_dir.join("sb_0123456789ab").join("agent.sock");
        if longest.as_os_str().len() >= 100 {
            return Err(ConfigError::Invalid(format!(
                "work dir {} is too long for Unix socket paths; pick a shorter one",
                self.work_dir.display()
            )));
        }
        Ok(())
    }
}

impl Settings {
    fn check_http(&self) -> Result<(), ConfigError> {
        if self.max_concurrent_requests == 0 {
            return Err(ConfigError::Invalid(
                "max-concurrent-requests must be positive".into(),
            ));
        }
        if self.header_read_timeout.is_zero() || self.body_read_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "header-read-timeout and body-read-timeout must be positive".into(),
            ));
        }
        for origin in &self.allow_origin {
            let rest = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty() && !host.trim_end_matches('/').contains(['/', '?', '#', ' '])
            });
            if !valid {
                return Err(ConfigError::Invalid(format!(
                    "allow-origin {origin:?} is not an origin like https://host[:port]"
                )));
            }
        }
        Ok(())
    }
}

/// `~/.local/share/emberd`.
pub fn default_data_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/emberd")
}

/// `/run/emberd` as root, else `$XDG_RUNTIME_DIR/emberd`, else `/tmp/emberd-<uid>`.
pub fn default_work_dir() -> PathBuf {
    let uid = nix::unistd::getuid();
    if uid.is_root() {
        return PathBuf::from("/run/emberd");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("emberd"),
        _ => PathBuf::from(format!("/tmp/emberd-{uid}")),
    }
}

/// "30" (seconds), "1500ms", "2m", "30s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Durations in the file: seconds (`30`) or text (`"1500ms"`, `"45s"`).
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// For the argument layer, whose `None`s are skipped.
    pub fn serialize_some<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serialize(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Pool size: 0 or any negative number (the documented -1) disables the pool.
mod pool_size {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &usize, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(*value as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        Ok(match i64::deserialize(deserializer)? {
            n if n <= 0 => 0,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
