//! Naming and finding Firecracker: the binary (given, on PATH, or in
//! `~/.local/bin`), its version, and the instance id it accepts.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::firecracker::MIN_VERSION;

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
