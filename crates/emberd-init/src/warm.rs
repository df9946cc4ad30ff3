//! What the two pre-started interpreters (the Python fork server and the
//! spare node) share: how one is set up, the line that hands it an exec, and
//! the child an exec gets from it. Knows nothing of execs beyond that line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

use crate::reaper::Exit;

/// A process a pre-started interpreter gives one exec: its pid, its end,
/// and the agent's ends of its stdio pipes.
pub struct WarmChild {
    pub pid: i32,
    pub exit: oneshot::Receiver<Exit>,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What a pre-started interpreter is told about its exec: one JSON line
/// `{"path", "cwd", "env"}` (the code file, working directory, environment).
pub fn request_line(
    path: &Path,
    cwd: &Path,
    env: &HashMap<String, String>,
) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "path": path,
        "cwd": cwd,
        "env": env,
    }))?;
    line.push(b'\n');
    Ok(line)
}

/// What a pre-started interpreter needs: the interpreter `name` from
/// `/usr/bin` or `/usr/local/bin`, and its `script` written to `dir/file_name`.
/// `None` (with a log line if the write failed) when either is missing.
pub fn interpreter_and_script(
    name: &str,
    dir: &Path,
    file_name: &str,
    script: &str,
) -> Option<(PathBuf, PathBuf)> {
    let interpreter = ["/usr/bin", "/usr/local/bin"]
        .into_iter()
        .map(|bin| Path::new(bin).join(name))
        .find(|p| p.is_file())?;
    let path = dir.join(file_name);
    if let Err(e) = std::fs::write(&path, script) {
        eprintln!("emberd-init: cannot write {}: {e}", path.display());
        return None;
    }
    Some((interpreter, path))
}
