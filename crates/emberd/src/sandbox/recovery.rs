//! The work dir: one daemon at a time, and cleaning up after a crash.
//!
//! A daemon holds an exclusive `flock` on `<work_dir>/daemon.lock` for as
//! long as it runs. At startup, any process whose command line names a
//! sandbox directory of this work dir is a VM a previous daemon left behind
//! (`PR_SET_PDEATHSIG` normally kills those; this covers everything else):
//! it is killed, as is a VMM recorded in a sandbox dir's `vmm.pid` (a
//! jailed one, whose command line names no sandbox dir), and every `sb_*`
//! directory is removed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::is_sandbox_id;

const LOCK_FILE: &str = "daemon.lock";

/// Errors taking the work dir.
#[derive(Debug, thiserror::Error)]
pub enum WorkDirError {
    #[error("cannot create the work dir {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another emberd is already using the work dir {0}")]
    InUse(PathBuf),
    #[error("cannot lock the work dir {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Held for the daemon's lifetime; dropping it releases the work dir.
#[derive(Debug)]
pub struct WorkDirLock {
    _flock: Flock<File>,
}

impl WorkDirLock {
    /// Creates `work_dir` (mode 0700) if needed and locks it.
    pub fn acquire(work_dir: &Path) -> Result<Self, WorkDirError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work_dir)
            .map_err(|source| WorkDirError::Create {
                path: work_dir.to_owned(),
                source,
            })?;
        let path = work_dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| WorkDirError::Create {
                path: path.clone(),
                source,
            })?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Ok(WorkDirLock { _flock: flock }),
            Err((_, nix::Error::EWOULDBLOCK)) => Err(WorkDirError::InUse(work_dir.to_owned())),
            Err((_, source)) => Err(WorkDirError::Lock { path, source }),
        }
    }
}

/// What [`clear_leftovers`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleared {
    pub processes: usize,
    pub dirs: usize,
}

/// Kills leftover VM processes of `work_dir` and removes leftover sandbox
/// directories. Call only while holding the [`WorkDirLock`].
pub fn clear_leftovers(work_dir: &Path) -> Cleared {
    let mut cleared = Cleared::default();
    let marker = format!("{}/sb_", work_dir.display());
    let mut pids = processes_mentioning(&marker);
    // VMMs whose command line does not name their sandbox (jailed ones).
    pids.extend(recorded_vmms(work_dir));
    for &pid in &pids {
        if kill(pid, Signal::SIGKILL).is_ok() {
            cleared.processes += 1;
        }
    }
    // Wait for them to go before removing the sockets they hold.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|pid| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Ok(entries) = std::fs::read_dir(work_dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if is_sandbox_id(&name.to_string_lossy())
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                cleared.dirs += 1;
            }
        }
    }
    cleared
}

fn recorded_vmms(work_dir: &Path) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| is_sandbox_id(&entry.file_name().to_string_lossy()))
        .filter_map(|entry| crate::vmm::pid_record::live(&entry.path()))
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

fn processes_mentioning(marker: &str) -> Vec<Pid> {
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_work_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = WorkDirLock::acquire(dir.path()).unwrap();
        let second = WorkDirLock::acquire(dir.path());
        assert!(matches!(second, Err(WorkDirError::InUse(_))), "{second:?}");
        drop(first);
        WorkDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_recorded_vmm_is_killed_though_its_command_line_names_no_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sb_0123456789ac");
        std::fs::create_dir(&sandbox).unwrap();
        // A stand-in jailed VMM: nothing of the work dir on its command line.
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        crate::vmm::pid_record::write(&sandbox, child.id()).unwrap();
        let cleared = clear_leftovers(dir.path());
        assert_eq!(
            cleared,
            Cleared {
                processes: 1,
                dirs: 1
            }
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn leftovers_are_killed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = dir.path().join("sb_0123456789ab");
        std::fs::create_dir(&sandbox).unwrap();
        let marker_arg = sandbox.join("console.log");
        // A stand-in VM: a process whose command line names the sandbox dir.
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import time; time.sleep(60)"])
            .arg(&marker_arg)
            .spawn()
            .unwrap();
        // spawn may return before the child has exec'd: wait for its command line.
        let cmdline = format!("/proc/{}/cmdline", child.id());
        let marker = marker_arg.display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !std::fs::read(&cmdline)
            .map(|c| String::from_utf8_lossy(&c).contains(&marker))
            .unwrap_or(false)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let cleared = clear_leftovers(dir.path());
        assert_eq!(cleared.dirs, 1);
        assert!(cleared.processes >= 1, "{cleared:?}");
        assert!(!sandbox.exists());
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
