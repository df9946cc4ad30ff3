//! Daemon settings: command-line flags, environment variables and an
//! optional TOML file, all with the same names.
//!
//! Precedence: flag or `EMBERD_*` variable, then the config file, then the
//! built-in default. [`ServeArgs`] holds what the user gave; [`Settings`]
//! is the resolved result the daemon runs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::vmm::qemu::AccelChoice;

/// Which VM backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker where it is installed and hardware KVM works, else QEMU.
    Auto,
    Qemu,
    Firecracker,
}

/// Flags of `emberd serve`. Every field is optional so that the config file
/// can fill what the command line leaves out.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings, by the same names.
    #[arg(long, env = "EMBERD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to serve the HTTP API on [default: 127.0.0.1:7777].
    #[arg(long, env = "EMBERD_ADDR")]
    pub addr: Option<SocketAddr>,
    /// VM backend [default: auto].
    #[arg(long, env = "EMBERD_BACKEND", value_enum)]
    pub backend: Option<BackendChoice>,
    /// QEMU accelerator [default: auto: KVM only where hardware KVM works].
    #[arg(long, env = "EMBERD_ACCEL", value_enum)]
    pub accel: Option<AccelChoice>,
    /// vCPUs per sandbox [default: 1].
    #[arg(long, env = "EMBERD_VCPUS")]
    pub vcpus: Option<u32>,
    /// Guest memory per sandbox, MiB [default: 256].
    #[arg(long, env = "EMBERD_MEMORY_MIB")]
    pub memory_mib: Option<u32>,
    /// Size of each sandbox's writable layer, MiB [default: 256].
    #[arg(long, env = "EMBERD_OVERLAY_MIB")]
    pub overlay_mib: Option<u32>,
    /// Per-sandbox runtime files (sockets, console logs) [default: /run/emberd as root,
    /// else $XDG_RUNTIME_DIR/emberd or /tmp/emberd-<uid>].
    #[arg(long, env = "EMBERD_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Built guest images [default: ~/.local/share/emberd].
    #[arg(long, env = "EMBERD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bound on a sandbox's boot, e.g. "30s" or "30" [default: 30s].
    #[arg(long, env = "EMBERD_BOOT_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub boot_timeout: Option<Duration>,
    /// QEMU binary [default: qemu-system-x86_64 on PATH].
    #[arg(long, env = "EMBERD_QEMU_BIN")]
    pub qemu_bin: Option<PathBuf>,
    /// Firecracker binary [default: firecracker on PATH or in ~/.local/bin].
    #[arg(long, env = "EMBERD_FIRECRACKER_BIN")]
    pub firecracker_bin: Option<PathBuf>,
    /// Booted sandboxes kept ready per pack; 0 or -1 disables the pool [default: 2].
    #[arg(long, env = "EMBERD_POOL_SIZE", allow_negative_numbers = true)]
    pub pool_size: Option<i64>,
    /// Most guest memory all pools together may hold, MiB [default: 2048].
    #[arg(long, env = "EMBERD_POOL_MEMORY_MIB")]
    pub pool_memory_mib: Option<u64>,
    /// Restore sandboxes from per-pack template snapshots [default: true].
    #[arg(long, env = "EMBERD_SNAPSHOTS", num_args = 0..=1, default_missing_value = "true")]
    pub snapshots: Option<bool>,
    /// Build template snapshots lazily, after a pack's first cold boot,
    /// instead of at startup.
    #[arg(long, env = "EMBERD_SKIP_WARM", num_args = 0..=1, default_missing_value = "true")]
    pub skip_warm: Option<bool>,
    /// Bound on draining HTTP requests at shutdown [default: 10s].
    #[arg(long, env = "EMBERD_SHUTDOWN_TIMEOUT", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub shutdown_timeout: Option<Duration>,
}

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

/// The settings the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub addr: SocketAddr,
    pub backend: BackendChoice,
    pub accel: AccelChoice,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub overlay_mib: u32,
    pub work_dir: PathBuf,
    pub data_dir: PathBuf,
    pub boot_timeout: Duration,
    pub qemu_bin: Option<PathBuf>,
    pub firecracker_bin: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub pool_size: usize,
    pub pool_memory_mib: u64,
    pub snapshots: bool,
    pub skip_warm: bool,
}

impl ServeArgs {
    /// Fills unset fields from the config file (if any), then defaults.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => Self::read_file(path)?,
            None => ServeArgs::default(),
        };
        let merged = self.or(file);
        let settings = Settings {
            addr: merged
                .addr
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7777))),
            backend: merged.backend.unwrap_or(BackendChoice::Auto),
            accel: merged.accel.unwrap_or(AccelChoice::Auto),
            vcpus: merged.vcpus.unwrap_or(1),
            memory_mib: merged.memory_mib.unwrap_or(256),
            overlay_mib: merged.overlay_mib.unwrap_or(256),
            work_dir: merged.work_dir.unwrap_or_else(default_work_dir),
            data_dir: merged.data_dir.unwrap_or_else(default_data_dir),
            boot_timeout: merged.boot_timeout.unwrap_or(Duration::from_secs(30)),
            qemu_bin: merged.qemu_bin,
            firecracker_bin: merged.firecracker_bin,
            shutdown_timeout: merged.shutdown_timeout.unwrap_or(Duration::from_secs(10)),
            pool_size: match merged.pool_size.unwrap_or(2) {
                n if n <= 0 => 0,
                n => usize::try_from(n).unwrap_or(usize::MAX),
            },
            pool_memory_mib: merged.pool_memory_mib.unwrap_or(2048),
            snapshots: merged.snapshots.unwrap_or(true),
            skip_warm: merged.skip_warm.unwrap_or(false),
        };
        settings.check()?;
        Ok(settings)
    }

    fn read_file(path: &Path) -> Result<ServeArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            config: self.config,
            addr: self.addr.or(other.addr),
            backend: self.backend.or(other.backend),
            accel: self.accel.or(other.accel),
            vcpus: self.vcpus.or(other.vcpus),
            memory_mib: self.memory_mib.or(other.memory_mib),
            overlay_mib: self.overlay_mib.or(other.overlay_mib),
            work_dir: self.work_dir.or(other.work_dir),
            data_dir: self.data_dir.or(other.data_dir),
            boot_timeout: self.boot_timeout.or(other.boot_timeout),
            qemu_bin: self.qemu_bin.or(other.qemu_bin),
            firecracker_bin: self.firecracker_bin.or(other.firecracker_bin),
            shutdown_timeout: self.shutdown_timeout.or(other.shutdown_timeout),
            pool_size: self.pool_size.or(other.pool_size),
            pool_memory_mib: self.pool_memory_mib.or(other.pool_memory_mib),
            snapshots: self.snapshots.or(other.snapshots),
            skip_warm: self.skip_warm.or(other.skip_warm),
        }
    }
}

impl Settings {
    fn check(&self) -> Result<(), ConfigError> {
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

fn deserialize_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::Seconds(s)) => Ok(Some(Duration::from_secs(s))),
        Some(Raw::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("emberd.toml");
        std::fs::write(
            &file,
            "vcpus = 2\nmemory-mib = 512\nboot-timeout = \"45s\"\nbackend = \"qemu\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(file),
            memory_mib: Some(384),
            ..ServeArgs::default()
        };
        let settings = args.resolve().unwrap();
        assert_eq!(settings.vcpus, 2);
        assert_eq!(settings.memory_mib, 384);
        assert_eq!(settings.boot_timeout, Duration::from_secs(45));
        assert_eq!(settings.backend, BackendChoice::Qemu);
        assert_eq!(settings.addr, "127.0.0.1:7777".parse().unwrap());
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("emberd.toml");
        std::fs::write(&file, "vcpu = 2\n").unwrap();
        let err = ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn durations_accept_plain_seconds_and_units() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let err = ServeArgs {
            vcpus: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("vcpus"), "{err}");
    }
}
