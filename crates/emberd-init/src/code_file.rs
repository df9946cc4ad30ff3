//! Code files of interpreter execs: written by the agent, readable by the
//! exec's user alone, removed when the exec ends or fails to start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_CODE_FILE: AtomicU64 = AtomicU64::new(0);

/// Removes the code file when the launch fails.
pub struct CodeFile(pub Option<PathBuf>);

impl Drop for CodeFile {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            let _ = std::fs::remove_file(file);
        }
    }
}

impl CodeFile {
    /// Hands the file over to the exec, which removes it when it ends.
    pub fn take(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

/// Writes the code file, readable by its exec's user alone (`owner`, else
/// the agent's): a concurrent exec of another user cannot read it.
pub fn write_code_file(
    dir: &Path,
    code: &[u8],
    suffix: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<PathBuf> {
    let suffix: String = suffix
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .take(16)
        .collect();
    let n = NEXT_CODE_FILE.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("emberd-exec-{}-{n}{suffix}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let written = owner
        .map_or(Ok(()), |(uid, gid)| {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
        })
        .and_then(|()| file.write_all(code));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}
