//! Naming and finding Firecracker: the binary (given, on PATH, or in
//! `~/.local/bin`), its version and what that version may be trusted
//! with, and the instance id it accepts.

use std::path::{Path, PathBuf};

use super::FirecrackerSetupError;
use crate::host_tools::find_in_path;

pub(super) fn find_binary(given: Option<&Path>) -> Result<PathBuf, FirecrackerSetupError> {
    let mut looked = Vec::new();
    if let Some(given) = given {
        if let Some(found) = find_in_path(given) {
            return Ok(found);
        }
        looked.push(given.display().to_string());
    } else {
        if let Some(found) = find_in_path(Path::new("firecracker")) {
            return Ok(found);
        }
        looked.push("PATH".into());
        if let Some(home) = std::env::var_os("HOME") {
            let local = PathBuf::from(home).join(".local/bin/firecracker");
            if local.is_file() {
                return Ok(local);
            }
            looked.push(local.display().to_string());
        }
    }
    Err(FirecrackerSetupError::NotFound {
        looked: looked.join(", "),
    })
}

/// Firecracker's `--id`: it accepts only ASCII letters, digits and `-`
/// (1 to 64 of them) and aborts otherwise, so `sb_…` becomes `sb-…`.
pub fn instance_id(sandbox_id: &str) -> String {
    let id: String = sandbox_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    if id.is_empty() {
        "emberd".into()
    } else {
        id
    }
}

/// "Firecracker v1.15.1" → (1, 15).
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let version = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// "Firecracker v1.15.1" → (1, 15, 1); a missing patch level is 0.
pub fn parse_release(text: &str) -> Option<(u32, u32, u32)> {
    let version = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = version.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// The oldest release whose snapshots emberd takes and restores: earlier
/// ones jump a restored guest's monotonic clock on host kernels 5.16 and
/// later (firecracker#5809) and log soft lockups (#5494).
pub const SNAPSHOT_MIN_RELEASE: (u32, u32, u32) = (1, 15, 1);
/// A release whose restored VMs have a broken vsock (firecracker#5969).
pub const BROKEN_RESTORE_RELEASE: (u32, u32, u32) = (1, 16, 0);

/// Why the Firecracker that reports `reported` must not take or restore
/// snapshots, if it must not.
pub fn snapshots_refused(reported: &str) -> Option<String> {
    let show = |(a, b, c): (u32, u32, u32)| format!("{a}.{b}.{c}");
    match parse_release(reported) {
        Some(v) if v < SNAPSHOT_MIN_RELEASE => Some(format!(
            "Firecracker v{} jumps a restored guest's monotonic clock (firecracker#5809) and logs soft lockups (#5494): snapshots need v{} or later; templates are off",
            show(v),
            show(SNAPSHOT_MIN_RELEASE)
        )),
        Some(v) if v == BROKEN_RESTORE_RELEASE => Some(format!(
            "Firecracker v{} restores VMs with a broken vsock (firecracker#5969): templates are off; use v{} or a fixed later release",
            show(v),
            show(SNAPSHOT_MIN_RELEASE)
        )),
        Some(_) => None,
        None => Some(format!(
            "cannot tell the Firecracker release from {reported:?}: templates are off"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::firecracker::MIN_VERSION;

    #[test]
    fn snapshots_need_1_15_1_and_restores_refuse_1_16_0() {
        assert_eq!(parse_release("Firecracker v1.15.1"), Some((1, 15, 1)));
        assert_eq!(parse_release("Firecracker v1.16.0-dev"), Some((1, 16, 0)));
        assert!(snapshots_refused("Firecracker v1.15.1").is_none());
        assert!(snapshots_refused("Firecracker v1.16.1").is_none());
        assert!(snapshots_refused("Firecracker v2.0.0").is_none());
        let old = snapshots_refused("Firecracker v1.15.0").unwrap();
        assert!(old.contains("#5809") && old.contains("1.15.1"), "{old}");
        assert!(snapshots_refused("Firecracker v1.12.3").is_some());
        let broken = snapshots_refused("Firecracker v1.16.0").unwrap();
        assert!(broken.contains("#5969"), "{broken}");
        assert!(snapshots_refused("garbage").is_some());
    }

    #[test]
    fn versions_are_parsed_and_compared() {
        assert_eq!(parse_version("Firecracker v1.15.1"), Some((1, 15)));
        assert_eq!(parse_version("Firecracker v1.9.0"), Some((1, 9)));
        assert!(parse_version("Firecracker v1.9.0").unwrap() < MIN_VERSION);
        assert!(parse_version("Firecracker v1.10.0").unwrap() >= MIN_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn instance_ids_are_what_firecracker_accepts() {
        assert_eq!(instance_id("sb_a1b2c3d4e5f6"), "sb-a1b2c3d4e5f6");
        assert_eq!(instance_id(""), "emberd");
        assert_eq!(instance_id(&"x".repeat(100)).len(), 64);
    }
}
