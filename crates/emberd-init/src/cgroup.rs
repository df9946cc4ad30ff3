//! Per-exec cgroups in the guest (cgroup v2).
//!
//! Every exec's processes go into a group of their own under
//! `/sys/fs/cgroup/execs`, whose limits bound all execs together: memory
//! leaves a reserve for the agent and the kernel, the number of tasks is
//! capped, and for the CPU all execs weigh as one task of the root group. A group whose memory runs out is OOM-killed whole. When an exec
//! ends, its group is killed (`cgroup.kill`), which also reaches processes
//! that left the exec's process group or session. The agent itself stays in
//! the root group: this module must never put it under a limit.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const MOUNT_POINT: &str = "/sys/fs/cgroup";
const EXECS: &str = "/sys/fs/cgroup/execs";
/// Tasks (processes and threads) all execs may have together.
pub const EXEC_MAX_TASKS: u64 = 2048;
/// Memory kept out of the execs' reach beyond what is in use when the
/// agent starts (for the pre-started interpreters, the agent, the kernel's
/// own growth): at least this much...
const RESERVE_MIN_BYTES: u64 = 48 << 20;
/// ...or this fraction of the guest's memory, whichever is more.
const RESERVE_FRACTION: u64 = 8;
/// How long a killed group's removal waits for its last process.
const REMOVE_BOUND: Duration = Duration::from_secs(10);

/// Errors of setting up the execs' cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot mount cgroup2 on {MOUNT_POINT}")]
    Mount(#[source] nix::Error),
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The parent of every exec's group.
#[derive(Debug)]
pub struct Cgroups {
    next: AtomicU64,
}

/// One exec's group; killed and removed when dropped.
#[derive(Debug)]
pub struct ExecCgroup {
    dir: PathBuf,
    procs: File,
}

fn write(path: impl AsRef<Path>, value: &str) -> Result<(), CgroupError> {
    let path = path.as_ref();
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.display().to_string(),
        source,
    })
}

impl Cgroups {
    /// Mounts cgroup2, enables the memory and pids controllers and makes
    /// the execs' parent group with its limits.
    pub fn setup() -> Result<Cgroups, CgroupError> {
        use nix::mount::{mount, MsFlags};
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("cgroup2"),
            MOUNT_POINT,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(CgroupError::Mount)?;
        write(
            Path::new(MOUNT_POINT).join("cgroup.subtree_control"),
            "+memory +pids",
        )?;
        // All execs together weigh as much as one of the agent's threads:
        // a fork bomb's hundreds of runnable processes cannot starve it.
        // Optional: a kernel without the cpu controller still gets the rest.
        if let Err(e) = write(
            Path::new(MOUNT_POINT).join("cgroup.subtree_control"),
            "+cpu",
        ) {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            eprintln!(
                "emberd-init: execs share the CPU without weights ({e}: {})",
                cause.unwrap_or_default()
            );
        }
        std::fs::create_dir_all(EXECS).map_err(|source| CgroupError::Write {
            path: EXECS.into(),
            source,
        })?;
        // Under the memory still available, so that the execs' group runs
        // out (and is OOM-killed at once) before the guest as a whole does
        // (whose reclaim would thrash the agent's pages first).
        let total = meminfo_bytes("MemTotal:").unwrap_or(0);
        let available = meminfo_bytes("MemAvailable:").unwrap_or(0);
        let reserve = (total / RESERVE_FRACTION).max(RESERVE_MIN_BYTES);
        let limit = available.saturating_sub(reserve).max(RESERVE_MIN_BYTES);
        write(Path::new(EXECS).join("memory.max"), &limit.to_string())?;
        write(
            Path::new(EXECS).join("pids.max"),
            &EXEC_MAX_TASKS.to_string(),
        )?;
        write(
            Path::new(EXECS).join("cgroup.subtree_control"),
            "+memory +pids",
        )?;
        Ok(Cgroups {
            next: AtomicU64::new(0),
        })
    }

    /// A new, empty group for one exec.
    pub fn create(&self) -> std::io::Result<ExecCgroup> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(EXECS).join(format!("exec-{n}"));
        std::fs::create_dir(&dir)?;
        // Out of memory, the whole exec goes, not one of its processes.
        std::fs::write(dir.join("memory.oom.group"), "1")?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(ExecCgroup { dir, procs })
    }
}

impl ExecCgroup {
    /// `cgroup.procs`, open for writing: a child writes "0" to it to join.
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The path of `cgroup.procs`, for a child that opens it itself.
    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Moves the process `pid` (all its threads) into the group.
    pub fn add(&self, pid: i32) -> std::io::Result<()> {
        (&self.procs).write_all(pid.to_string().as_bytes())
    }

    /// SIGKILLs every process in the group.
    pub fn kill(&self) {
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
    }
}

impl Drop for ExecCgroup {
    fn drop(&mut self) {
        self.kill();
        let dir = std::mem::take(&mut self.dir);
        // The group can go once its last process has exited.
        let remove = async move {
            let deadline = tokio::time::Instant::now() + REMOVE_BOUND;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => return,
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        eprintln!("emberd-init: cannot remove {}: {e}", dir.display());
                        return;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(remove);
        }
    }
}

fn meminfo_bytes(field: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}
