//! Resolving the limit settings (per-sandbox maxima, admission, idle
//! timeout) into the manager's [`Limits`], including the defaults read from
//! the host (its CPUs and RAM). Checks them; decides nothing else.

use std::time::Duration;

use super::{ConfigError, Settings};
use crate::sandbox::Limits;

/// Default of `--max-memory-mib` and `--max-disk-mib` (at least the per-sandbox default).
const DEFAULT_MAX_SIZE_MIB: u32 = 2048;
/// The smallest `--process-log-bytes`.
const MIN_PROCESS_LOG_BYTES: usize = 4096;
/// Guest memory budget when the host's RAM cannot be read.
const FALLBACK_GUEST_MEMORY_MIB: u64 = 2048;

impl Settings {
    /// The limits the manager enforces, with every default resolved.
    pub fn limits(&self) -> Limits {
        let cpus = host_cpus();
        Limits {
            max_vcpus: self
                .max_vcpus
                .unwrap_or_else(|| u32::try_from(cpus).unwrap_or(u32::MAX).max(self.vcpus)),
            max_memory_mib: self
                .max_memory_mib
                .unwrap_or(DEFAULT_MAX_SIZE_MIB.max(self.memory_mib)),
            max_disk_mib: self
                .max_disk_mib
                .unwrap_or(DEFAULT_MAX_SIZE_MIB.max(self.overlay_mib)),
            max_ttl: self.max_ttl_s.map(Duration::from_secs),
            idle_timeout: (self.idle_timeout_s > 0)
                .then(|| Duration::from_secs(self.idle_timeout_s)),
            max_sandboxes: self.max_sandboxes,
            max_guest_memory_mib: self.max_guest_memory_mib.unwrap_or_else(|| {
                host_memory_mib().map_or(FALLBACK_GUEST_MEMORY_MIB, |mib| mib / 2)
            }),
            max_concurrent_boots: self.max_concurrent_boots.unwrap_or(cpus),
            processes: crate::sandbox::ProcessLimits {
                max_running: self.max_processes,
                log_bytes: self.process_log_bytes,
            },
            max_transfer_bytes: self.max_transfer_mib.saturating_mul(1024 * 1024),
        }
    }

    /// Maxima below the per-sandbox defaults, or zero limits, are errors.
    pub(super) fn check_limits(&self) -> Result<(), ConfigError> {
        let below = |name: &str, max: Option<u32>, default: u32, default_name: &str| match max {
            Some(max) if max < default => Err(ConfigError::Invalid(format!(
                "{name} ({max}) must be at least {default_name} ({default})"
            ))),
            _ => Ok(()),
        };
        below("max-vcpus", self.max_vcpus, self.vcpus, "vcpus")?;
        below(
            "max-memory-mib",
            self.max_memory_mib,
            self.memory_mib,
            "memory-mib",
        )?;
        below(
            "max-disk-mib",
            self.max_disk_mib,
            self.overlay_mib,
            "overlay-mib",
        )?;
        let zero = [
            ("max-ttl-s", self.max_ttl_s == Some(0)),
            ("max-sandboxes", self.max_sandboxes == 0),
            ("max-guest-memory-mib", self.max_guest_memory_mib == Some(0)),
            ("max-concurrent-boots", self.max_concurrent_boots == Some(0)),
            ("max-processes", self.max_processes == 0),
            ("max-transfer-mib", self.max_transfer_mib == 0),
        ];
        if self.process_log_bytes < MIN_PROCESS_LOG_BYTES {
            return Err(ConfigError::Invalid(format!(
                "process-log-bytes must be at least {MIN_PROCESS_LOG_BYTES}"
            )));
        }
        match zero.iter().find(|(_, is_zero)| *is_zero) {
            Some((name, _)) => Err(ConfigError::Invalid(format!("{name} must be positive"))),
            None => Ok(()),
        }
    }
}

/// The host's CPUs, at least 1.
fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The host's RAM (`MemTotal` of /proc/meminfo) in MiB.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    mem_total_mib(&meminfo)
}

fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServeArgs;

    #[test]
    fn defaults_come_from_the_host_and_the_per_sandbox_defaults() {
        let settings = Settings {
            memory_mib: 4096,
            ..Settings::default()
        };
        let limits = settings.limits();
        assert_eq!(limits.max_memory_mib, 4096);
        assert_eq!(limits.max_disk_mib, DEFAULT_MAX_SIZE_MIB);
        assert_eq!(limits.max_vcpus as usize, host_cpus());
        assert_eq!(limits.max_concurrent_boots, host_cpus());
        assert_eq!(limits.max_sandboxes, 64);
        assert_eq!(limits.max_ttl, None);
        assert_eq!(limits.idle_timeout, Some(Duration::from_secs(1800)));
        let half = host_memory_mib().unwrap() / 2;
        assert_eq!(limits.max_guest_memory_mib, half);
    }

    #[test]
    fn a_zero_idle_timeout_disables_it_and_set_values_win() {
        let settings = Settings {
            idle_timeout_s: 0,
            max_ttl_s: Some(60),
            max_guest_memory_mib: Some(1000),
            max_concurrent_boots: Some(3),
            ..Settings::default()
        };
        let limits = settings.limits();
        assert_eq!(limits.idle_timeout, None);
        assert_eq!(limits.max_ttl, Some(Duration::from_secs(60)));
        assert_eq!(limits.max_guest_memory_mib, 1000);
        assert_eq!(limits.max_concurrent_boots, 3);
    }

    #[test]
    fn maxima_below_the_defaults_and_zero_limits_are_refused() {
        let err = ServeArgs {
            vcpus: Some(2),
            max_vcpus: Some(1),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("max-vcpus"), "{err}");
        let err = ServeArgs {
            max_sandboxes: Some(0),
            ..ServeArgs::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("max-sandboxes"), "{err}");
    }

    #[test]
    fn mem_total_is_read_in_mib() {
        let meminfo = "MemTotal:       24683584 kB\nMemFree:        13966956 kB\n";
        assert_eq!(mem_total_mib(meminfo), Some(24105));
        assert_eq!(mem_total_mib("nothing"), None);
    }
}
