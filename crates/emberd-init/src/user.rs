//! Who an exec's processes run as, and how a child becomes that user.
//!
//! Guest code runs as the unprivileged sandbox user (no supplementary
//! groups, a cap on its processes) unless the exec asks for root. The switch
//! happens in the child between fork and exec, in this order: join the
//! exec's cgroup, reset the OOM score the agent's own protection would
//! otherwise pass on, cap the user's processes, drop the supplementary
//! groups, set the gid, set the uid. At boot [`provision`] makes the user
//! exist in the guest's writable layer. Must never let a child run code
//! with root's groups or the agent's OOM protection.

use std::ffi::CStr;
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

use emberd_proto::boundary::{ROOT_USER, SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID, SANDBOX_USER};

/// Processes the sandbox user may have at once (`RLIMIT_NPROC`): enough for
/// a build with many workers, few enough that a fork bomb stops there.
pub const SANDBOX_MAX_PROCESSES: u64 = 512;

/// Who an exec runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum User {
    Sandbox,
    Root,
}

impl User {
    /// Parses `ExecStart.user`: empty means the sandbox user.
    pub fn from_wire(name: &str) -> Result<User, String> {
        match name {
            "" | SANDBOX_USER => Ok(User::Sandbox),
            ROOT_USER => Ok(User::Root),
            other => Err(format!(
                "user must be {SANDBOX_USER:?} or {ROOT_USER:?}, not {:?}",
                other.chars().take(64).collect::<String>()
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            User::Sandbox => SANDBOX_USER,
            User::Root => ROOT_USER,
        }
    }

    pub fn home(self) -> &'static str {
        match self {
            User::Sandbox => SANDBOX_HOME,
            User::Root => "/root",
        }
    }

    /// The uid and gid to switch to, `None` for root (nothing to drop).
    pub fn ids(self) -> Option<(u32, u32)> {
        match self {
            User::Sandbox => Some((SANDBOX_UID, SANDBOX_GID)),
            User::Root => None,
        }
    }

    /// `HOME`, `USER` and `LOGNAME` for this user.
    pub fn env(self) -> [(String, String); 3] {
        [
            ("HOME".into(), self.home().into()),
            ("USER".into(), self.name().into()),
            ("LOGNAME".into(), self.name().into()),
        ]
    }
}

const OOM_SCORE_ADJ: &CStr = c"/proc/self/oom_score_adj";

/// Gives the calling process the strongest protection from the OOM killer.
pub fn protect_from_oom() -> std::io::Result<()> {
    std::fs::write("/proc/self/oom_score_adj", "-1000")
}

/// Runs in the child between fork and exec: joins the cgroup whose
/// `cgroup.procs` is open as `cgroup_procs`, resets the OOM score and, for
/// the sandbox user, caps its processes and drops to it. Makes only
/// async-signal-safe calls (open, write, close, setrlimit, setgroups,
/// setgid, setuid), as `pre_exec` demands; `cgroup_procs` must stay open in
/// the parent until the child has been spawned.
pub fn become_user(user: User, cgroup_procs: Option<RawFd>) -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    if let Some(fd) = cgroup_procs {
        // SAFETY: writes one byte from a static string; "0" is the writer.
        if unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) } != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    // SAFETY: a static NUL-terminated path.
    let fd = unsafe { libc::open(OOM_SCORE_ADJ.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        // SAFETY: `fd` was just opened; one byte from a static string.
        let written = unsafe { libc::write(fd, c"0".as_ptr().cast(), 1) };
        // SAFETY: `fd` is ours and closed once.
        unsafe { libc::close(fd) };
        if written != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let Some((uid, gid)) = user.ids() else {
        return Ok(());
    };
    let limit = libc::rlimit {
        rlim_cur: SANDBOX_MAX_PROCESSES,
        rlim_max: SANDBOX_MAX_PROCESSES,
    };
    // SAFETY: `limit` lives across the call; the other calls take integers
    // only (setgroups with a count of 0 reads no list).
    unsafe {
        check(libc::setrlimit(libc::RLIMIT_NPROC, &limit))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    Ok(())
}

/// Makes the sandbox user exist: its lines in `/etc/passwd`, `/etc/group`
/// and `/etc/shadow` (unless the pack has them) and its home, in the
/// guest's writable layer, so that packs need no rebuild.
pub fn provision() -> std::io::Result<()> {
    let shell = if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    append_entry(
        "/etc/passwd",
        &format!(
            "{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_GID}:{SANDBOX_USER}:{SANDBOX_HOME}:{shell}"
        ),
        true,
    )?;
    append_entry(
        "/etc/group",
        &format!("{SANDBOX_USER}:x:{SANDBOX_GID}:"),
        true,
    )?;
    append_entry(
        "/etc/shadow",
        &format!("{SANDBOX_USER}:*:0:0:99999:7:::"),
        false,
    )?;
    std::fs::create_dir_all(SANDBOX_HOME)?;
    chown(SANDBOX_HOME, Some(SANDBOX_UID), Some(SANDBOX_GID))?;
    std::fs::set_permissions(SANDBOX_HOME, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Appends `line` to the account file at `path` unless an entry of the
/// sandbox user is there; creates the file only when `create` says so.
fn append_entry(path: &str, line: &str, create: bool) -> std::io::Result<()> {
    let current = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => String::new(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{SANDBOX_USER}:");
    if current.lines().any(|l| l.starts_with(&prefix)) {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    let separator = if current.is_empty() || current.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    writeln!(file, "{separator}{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_name_picks_the_user_and_unknown_names_are_refused() {
        assert_eq!(User::from_wire(""), Ok(User::Sandbox));
        assert_eq!(User::from_wire("sandbox"), Ok(User::Sandbox));
        assert_eq!(User::from_wire("root"), Ok(User::Root));
        assert!(User::from_wire("daemon").is_err());
        assert_eq!(User::Root.ids(), None);
        assert_eq!(User::Sandbox.ids(), Some((SANDBOX_UID, SANDBOX_GID)));
    }
}
