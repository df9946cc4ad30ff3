//! Running the host programs the build needs (apt, dpkg, mmdebstrap,
//! mksquashfs, decompressors), and naming the Debian package of a missing
//! one.
//!
//! Owns no knowledge of what the programs build; callers give the command.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::host_tools::find_in_path;

/// Errors running a host program.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool} is not installed: install the Debian package {package} (or run `make setup`)")]
    Missing { tool: String, package: String },
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

/// Fails with the package to install when `tool` is not on PATH.
pub fn require(tool: &str, package: &str) -> Result<(), ToolError> {
    if find_in_path(Path::new(tool)).is_none() {
        return Err(ToolError::Missing {
            tool: tool.into(),
            package: package.into(),
        });
    }
    Ok(())
}

/// Runs `command` to completion and returns its stdout; a failure carries
/// the last lines of its stderr.
pub fn run(command: &mut Command) -> Result<Vec<u8>, ToolError> {
    let text = format!("{command:?}").replace('"', "");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            program: PathBuf::from(command.get_program()),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(ToolError::Failed {
            command: text.chars().take(200).collect(),
            status: output.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let err = require("no-such-tool-here", "some-package").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no-such-tool-here is not installed: install the Debian package some-package (or run `make setup`)"
        );
        require("sh", "dash").unwrap();
    }

    #[test]
    fn a_failed_command_reports_its_stderr_tail() {
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo out"])).unwrap(),
            b"out\n"
        );
        let err = run(Command::new("sh").args(["-c", "echo one >&2; echo two >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.ends_with("one | two"), "{err}");
    }
}
