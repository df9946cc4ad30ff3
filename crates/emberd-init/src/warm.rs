//! What the two pre-started interpreters (the Python fork server and the
//! spare node) share: how one is set up, the request that hands it an exec, and
//! the child an exec gets from it. Knows nothing of execs beyond that request.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use tokio::sync::oneshot;

use crate::group::Group;
use crate::reaper::Exit;
use crate::user::{become_user, User};

/// A process a pre-started interpreter gives one exec: its pid, how its
/// group is signalled, its end, and the agent's ends of its stdio pipes.
pub struct WarmChild {
    pub pid: i32,
    pub group: Group,
    pub exit: oneshot::Receiver<Exit>,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What a pre-started interpreter is told about its exec, as one JSON line:
/// the code file, working directory and environment, and for the fork
/// server's child, the uid and gid to drop to (with its process cap) and the
/// `cgroup.procs` to join first (absent: stay as the server is).
#[derive(Debug, serde::Serialize)]
pub struct Request<'a> {
    pub path: &'a Path,
    pub cwd: &'a Path,
    pub env: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<(u32, u32)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_procs: Option<PathBuf>,
    /// `RLIMIT_NPROC` to set before dropping to `ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
}

impl Request<'_> {
    /// The request as the line the interpreter reads.
    pub fn line(&self) -> std::io::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }
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

/// Runs in a pre-started interpreter's process between fork and exec: in
/// the guest, as `user` (see [`become_user`]); then armed to die with the
/// agent (which matters for a host process), checked against the agent's pid
/// `parent` saved before the fork, since the agent may have died before the
/// signal was armed (the child then belongs to some other reaper). Makes
/// only async-signal-safe calls, as `pre_exec` demands.
pub fn prepare_interpreter(user: Option<User>, parent: libc::pid_t) -> std::io::Result<()> {
    if let Some(user) = user {
        become_user(user, None)?;
    }
    // After any change of user, which disarms the death signal.
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getppid(2) has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}
