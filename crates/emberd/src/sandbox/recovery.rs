//! The work dir: one daemon at a time, and cleaning up after a crash.
//!
//! The work dir holds every sandbox's sockets, logs and disks, so nobody
//! but the daemon may reach into it: it must be a real directory (not a
//! symlink), owned by the daemon's uid, with no access for group or others
//! (a missing one is created with mode 0700); anything else is refused at
//! startup. A daemon holds an exclusive `flock` on `<work_dir>/daemon.lock`
//! for as long as it runs. At startup, any process whose command line names
//! a sandbox directory of this work dir (compared by canonical path) is a
//! VM a previous daemon left behind (`PR_SET_PDEATHSIG` normally kills
//! those; this covers everything else): it is killed, as is a VMM recorded
//! in a sandbox dir's `vmm.pid` (a jailed one, whose command line names no
//! sandbox dir), and every `sb_*`
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
    #[error("the work dir {0} is a symlink; give the directory it points to")]
    Symlink(PathBuf),
    #[error("the work dir {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("the work dir {path} belongs to uid {owner}, not to this daemon's uid {uid}")]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error("the work dir {path} has mode {mode:04o}; it must give group and others no access (chmod 700)")]
    Mode { path: PathBuf, mode: u32 },
    #[error("cannot inspect the work dir {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    /// Creates `work_dir` (mode 0700) if needed, checks that only this
    /// daemon's uid can reach into it, and locks it.
    pub fn acquire(work_dir: &Path) -> Result<Self, WorkDirError> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::symlink_metadata(work_dir) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(work_dir)
                    .map_err(|source| WorkDirError::Create {
                        path: work_dir.to_owned(),
                        source,
                    })?;
            }
            Err(source) => {
                return Err(WorkDirError::Inspect {
                    path: work_dir.to_owned(),
                    source,
                })
            }
        }
        check_private(work_dir)?;
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

/// Refuses a work dir that is a symlink, not a directory, owned by another
/// uid, or open to group or others. Reads the directory itself, never what
/// a symlink points to.
fn check_private(work_dir: &Path) -> Result<(), WorkDirError> {
    use std::os::unix::fs::MetadataExt;
    let path = work_dir.to_owned();
    let meta = std::fs::symlink_metadata(work_dir).map_err(|source| WorkDirError::Inspect {
        path: path.clone(),
        source,
    })?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(WorkDirError::Symlink(path));
    }
    if !kind.is_dir() {
        return Err(WorkDirError::NotADirectory(path));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(WorkDirError::Owner {
            path,
            owner: meta.uid(),
            uid,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(WorkDirError::Mode { path, mode });
    }
    Ok(())
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
    // `/run/emberd/`, `/run/./emberd` and `/run/emberd` are one work dir.
    let canonical = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_owned());
    let mut pids = processes_naming_sandboxes_of(&canonical);
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

/// Processes whose command line names a sandbox directory (`…/sb_…`) of
/// the work dir whose canonical path is `work_dir`.
fn processes_naming_sandboxes_of(work_dir: &Path) -> Vec<Pid> {
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
                .map(|cmdline| names_a_sandbox_of(&String::from_utf8_lossy(&cmdline), work_dir))
                .unwrap_or(false)
        })
        .filter_map(|pid| i32::try_from(pid).ok().map(Pid::from_raw))
        .collect()
}

/// True when `cmdline` names a path `<dir>/sb_…` whose `<dir>` is, once
/// canonical, `work_dir`. Paths may sit inside option strings
/// (`path=/run/emberd/sb_…/console.log,server=on`).
fn names_a_sandbox_of(cmdline: &str, work_dir: &Path) -> bool {
    const SEPARATORS: &[char] = &['\0', ',', '=', ' ', ':'];
    let mut from = 0;
    while let Some(found) = cmdline[from..].find("/sb_") {
        let at = from + found;
        let start = cmdline[..at].rfind(SEPARATORS).map_or(0, |i| i + 1);
        let dir = &cmdline[start..at];
        let dir = if dir.is_empty() { "/" } else { dir };
        let same = Path::new(dir) == work_dir
            || std::fs::canonicalize(dir).is_ok_and(|canonical| canonical == work_dir);
        if same {
            return true;
        }
        from = at + 1;
    }
    false
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
        let dir = private_dir();
        let first = WorkDirLock::acquire(dir.path()).unwrap();
        let second = WorkDirLock::acquire(dir.path());
        assert!(matches!(second, Err(WorkDirError::InUse(_))), "{second:?}");
        drop(first);
        WorkDirLock::acquire(dir.path()).unwrap();
    }

    /// A work dir as the daemon wants it: owned, 0700.
    fn private_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn sandbox_paths_are_matched_by_canonical_work_dir() {
        let dir = private_dir();
        let canonical = std::fs::canonicalize(dir.path()).unwrap();
        let shown = dir.path().display().to_string();
        for cmdline in [
            format!("qemu\0-chardev\0file,id=c,path={shown}/sb_0123456789ab/console.log\0"),
            format!("qemu\0{shown}//sb_0123456789ab/vm.sock\0"),
            format!("qemu\0{shown}/./sb_0123456789ab\0"),
        ] {
            assert!(names_a_sandbox_of(&cmdline, &canonical), "{cmdline}");
        }
        let other = private_dir();
        let elsewhere = format!("qemu\0{}/sb_0123456789ab\0", other.path().display());
        assert!(!names_a_sandbox_of(&elsewhere, &canonical));
        assert!(!names_a_sandbox_of("vim notes/sb_plan.txt", &canonical));
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
        let dir = private_dir();
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
        // Named with a trailing slash, the work dir still matches.
        let with_slash = PathBuf::from(format!("{}/", dir.path().display()));
        let cleared = clear_leftovers(&with_slash);
        assert_eq!(cleared.dirs, 1);
        assert!(cleared.processes >= 1, "{cleared:?}");
        assert!(!sandbox.exists());
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
