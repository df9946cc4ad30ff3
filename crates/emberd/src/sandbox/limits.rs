//! Per-sandbox limits: the operator's defaults and maxima, and a create's
//! request checked against them.
//!
//! Owns [`Limits`] (what the operator allows) and the one rule that turns
//! [`CreateParams`] into a sandbox's [`Terms`] (its shape, TTL and idle
//! timeout). Never touches a VM: a request it refuses costs nothing.

use std::time::Duration;

use super::error::SandboxError;
use super::model::{CreateParams, Shape};

/// Smallest guest memory a create may ask for: less does not boot.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Idle timeout of a sandbox when neither its create nor the operator names one.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Sandboxes (pooled VMs included) one daemon holds unless told otherwise.
pub const DEFAULT_MAX_SANDBOXES: usize = 64;
/// Largest file transfer unless the operator says otherwise, in MiB.
pub const DEFAULT_MAX_TRANSFER_MIB: u64 = 2048;

/// What the operator allows: per-sandbox maxima and defaults, and the
/// daemon-wide admission limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_vcpus: u32,
    pub max_memory_mib: u32,
    /// Largest writable layer, in MiB.
    pub max_disk_mib: u32,
    /// Longest TTL; also the TTL of a sandbox whose create names none.
    pub max_ttl: Option<Duration>,
    /// Idle timeout of a sandbox whose create names none; `None` disables.
    pub idle_timeout: Option<Duration>,
    /// Sandboxes (booting, running, exited) and pooled VMs together.
    pub max_sandboxes: usize,
    /// Guest memory of those sandboxes and pooled VMs together, in MiB.
    pub max_guest_memory_mib: u64,
    /// VMs booting at once; more wait for a turn.
    pub max_concurrent_boots: usize,
    /// Background processes: how many run per sandbox, how much output each keeps.
    pub processes: ProcessLimits,
    /// Largest file transfer (one upload or download of the files API), in bytes.
    pub max_transfer_bytes: u64,
}

/// Background processes' limits, per sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// Processes running at once in one sandbox; more starts get 429.
    pub max_running: usize,
    /// Output kept per process, in bytes (the oldest is dropped beyond it).
    pub log_bytes: usize,
}

/// Default of `--max-processes`.
pub const DEFAULT_MAX_PROCESSES: usize = 32;
/// Default of `--process-log-bytes`.
pub const DEFAULT_PROCESS_LOG_BYTES: usize = 8 * 1024 * 1024;

impl Default for ProcessLimits {
    fn default() -> Self {
        ProcessLimits {
            max_running: DEFAULT_MAX_PROCESSES,
            log_bytes: DEFAULT_PROCESS_LOG_BYTES,
        }
    }
}

impl Default for Limits {
    /// The daemon's fixed defaults; the ones it derives from the host (guest
    /// memory, concurrent boots) are left wide here and set by the config.
    fn default() -> Self {
        Limits {
            max_vcpus: 64,
            max_memory_mib: 65536,
            max_disk_mib: 65536,
            max_ttl: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_sandboxes: DEFAULT_MAX_SANDBOXES,
            max_guest_memory_mib: u64::MAX,
            max_concurrent_boots: 4,
            processes: ProcessLimits::default(),
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_MIB * 1024 * 1024,
        }
    }
}

/// What one sandbox runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Terms {
    pub shape: Shape,
    /// Deleted this long after its create.
    pub ttl: Option<Duration>,
    /// Deleted when no exec ran for this long.
    pub idle_timeout: Option<Duration>,
}

impl Limits {
    /// The terms of a create, or why it cannot have them. `default` is the
    /// shape of a create that names no size.
    pub(super) fn terms(
        &self,
        params: &CreateParams,
        default: Shape,
    ) -> Result<Terms, SandboxError> {
        let vcpus = sized("vcpus", params.vcpus, default.vcpus, 1, self.max_vcpus)?;
        let memory_mib = sized(
            "memory_mib",
            params.memory_mib,
            default.memory_mib,
            MIN_MEMORY_MIB,
            self.max_memory_mib,
        )?;
        let disk_mib = sized(
            "disk_mib",
            params.disk_mib,
            default.disk_mib,
            1,
            self.max_disk_mib,
        )?;
        let ttl = match params.ttl_s {
            None => self.max_ttl,
            Some(0) => return Err(SandboxError::Invalid("ttl_s must be at least 1".into())),
            Some(seconds) => {
                let ttl = Duration::from_secs(seconds);
                if let Some(max) = self.max_ttl.filter(|max| ttl > *max) {
                    return Err(SandboxError::OverLimit {
                        field: "ttl_s",
                        value: seconds,
                        max: max.as_secs(),
                    });
                }
                Some(ttl)
            }
        };
        let idle_timeout = match params.idle_timeout_s {
            None => self.idle_timeout,
            Some(0) => None,
            Some(seconds) => Some(Duration::from_secs(seconds)),
        };
        Ok(Terms {
            shape: Shape {
                vcpus,
                memory_mib,
                disk_mib,
            },
            ttl,
            idle_timeout,
        })
    }
}

/// One size of a create: the default when unnamed, else within `min..=max`.
fn sized(
    field: &'static str,
    asked: Option<u32>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, SandboxError> {
    match asked {
        None => Ok(default),
        Some(value) if value < min => Err(SandboxError::Invalid(format!(
            "{field} must be at least {min}"
        ))),
        Some(value) if value > max => Err(SandboxError::OverLimit {
            field,
            value: u64::from(value),
            max: u64::from(max),
        }),
        Some(value) => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Shape = Shape {
        vcpus: 1,
        memory_mib: 256,
        disk_mib: 256,
    };

    fn limits() -> Limits {
        Limits {
            max_vcpus: 4,
            max_memory_mib: 1024,
            max_disk_mib: 512,
            ..Limits::default()
        }
    }

    fn params(edit: impl FnOnce(&mut CreateParams)) -> CreateParams {
        let mut params = CreateParams::pack("python");
        edit(&mut params);
        params
    }

    #[test]
    fn an_empty_create_gets_the_defaults() {
        let terms = limits().terms(&params(|_| {}), DEFAULT).unwrap();
        assert_eq!(terms.shape, DEFAULT);
        assert_eq!(terms.ttl, None);
        assert_eq!(terms.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    }

    #[test]
    fn sizes_over_a_maximum_name_the_limit() {
        type Edit = fn(&mut CreateParams);
        let cases: [(Edit, &str, u64, u64); 3] = [
            (|p| p.vcpus = Some(5), "vcpus", 5, 4),
            (|p| p.memory_mib = Some(2048), "memory_mib", 2048, 1024),
            (|p| p.disk_mib = Some(513), "disk_mib", 513, 512),
        ];
        for (edit, name, asked, most) in cases {
            match limits().terms(&params(edit), DEFAULT) {
                Err(SandboxError::OverLimit { field, value, max }) => {
                    assert_eq!((field, value, max), (name, asked, most));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_sizes_are_invalid_and_a_zero_idle_timeout_disables_it() {
        for edit in [
            (|p: &mut CreateParams| p.vcpus = Some(0)) as fn(&mut CreateParams),
            |p| p.memory_mib = Some(0),
            |p| p.memory_mib = Some(MIN_MEMORY_MIB - 1),
            |p| p.disk_mib = Some(0),
            |p| p.ttl_s = Some(0),
        ] {
            let result = limits().terms(&params(edit), DEFAULT);
            assert!(
                matches!(result, Err(SandboxError::Invalid(_))),
                "{result:?}"
            );
        }
        let terms = limits()
            .terms(&params(|p| p.idle_timeout_s = Some(0)), DEFAULT)
            .unwrap();
        assert_eq!(terms.idle_timeout, None);
    }

    #[test]
    fn the_maximum_ttl_bounds_and_defaults_the_ttl() {
        let limits = Limits {
            max_ttl: Some(Duration::from_secs(600)),
            ..limits()
        };
        let terms = limits.terms(&params(|_| {}), DEFAULT).unwrap();
        assert_eq!(terms.ttl, Some(Duration::from_secs(600)));
        let terms = limits
            .terms(&params(|p| p.ttl_s = Some(60)), DEFAULT)
            .unwrap();
        assert_eq!(terms.ttl, Some(Duration::from_secs(60)));
        assert!(matches!(
            limits.terms(&params(|p| p.ttl_s = Some(601)), DEFAULT),
            Err(SandboxError::OverLimit {
                field: "ttl_s",
                value: 601,
                max: 600
            })
        ));
    }

    #[test]
    fn a_named_shape_within_the_maxima_is_taken() {
        let terms = limits()
            .terms(
                &params(|p| {
                    p.vcpus = Some(2);
                    p.memory_mib = Some(512);
                    p.disk_mib = Some(128);
                    p.idle_timeout_s = Some(5);
                }),
                DEFAULT,
            )
            .unwrap();
        assert_eq!(
            terms.shape,
            Shape {
                vcpus: 2,
                memory_mib: 512,
                disk_mib: 128
            }
        );
        assert_eq!(terms.idle_timeout, Some(Duration::from_secs(5)));
    }
}
