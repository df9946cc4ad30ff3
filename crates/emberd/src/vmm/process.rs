//! One VMM process: launched to die with the daemon, reaped by one task,
//! stopped gracefully then by force, killed if dropped while running.
//!
//! Owns spawning (stdio, log file, inherited descriptors, joining a cgroup
//! before exec) and signalling. Signals go through a pidfd opened right
//! after the spawn, never through a pid that may have been reaped and
//! reused by another process.
//!
//! Dying with the daemon takes two tethers: `PR_SET_PDEATHSIG(SIGKILL)`,
//! which the kernel clears when the VMM changes its credentials (QEMU's
//! `-runas`), and a terminal: each VMM leads its own session whose
//! controlling terminal is a pty the daemon alone holds the master of. When
//! the daemon dies, however it dies, the master closes and the kernel hangs
//! the terminal up, sending the VMM SIGHUP whatever its uid.

use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt, PtyMaster};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::process::Command;
use tokio::sync::watch;

use super::cgroup::VmmCgroup;
use super::console::ConsoleRing;
use super::{VmExit, VmmError};

/// How long a VMM gets to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running (or ended) VMM process.
pub struct VmProcess {
    pid: u32,
    pidfd: OwnedFd,
    /// The master of the VMM's controlling terminal: closing it (the
    /// daemon's death closes it) hangs the VMM up.
    tether: Option<PtyMaster>,
    exit: watch::Receiver<Option<VmExit>>,
}

/// What a VMM gets besides its command line.
#[derive(Default)]
pub struct SpawnOptions<'a> {
    /// Drain stdout into this ring instead of the log.
    pub console: Option<&'a Arc<ConsoleRing>>,
    /// Descriptors the VMM inherits under their own numbers (the daemon's
    /// copies stay close-on-exec; only the child's are cleared).
    pub inherit: Vec<RawFd>,
    /// The cgroup the VMM joins before exec; removed once it is reaped.
    pub cgroup: Option<VmmCgroup>,
    /// The process is a launcher that starts the VMM and exits (Firecracker's
    /// jailer): it gets no tether, because a session leader that exits hangs
    /// up the VMM it leaves behind. Such VMMs are found again through their
    /// `vmm.pid` record.
    pub launcher_only: bool,
}

impl VmProcess {
    /// Spawns `command` with stdin closed, stdout and stderr to `log`, and
    /// `PR_SET_PDEATHSIG(SIGKILL)`, and starts the task that reaps it.
    pub fn spawn(command: Command, log: &Path) -> Result<VmProcess, VmmError> {
        VmProcess::spawn_with(command, log, SpawnOptions::default())
    }

    /// [`VmProcess::spawn`], with stdout drained into `console` when given
    /// (for VMMs that write the guest console to stdout).
    pub fn spawn_with_console(
        command: Command,
        log: &Path,
        console: Option<&Arc<ConsoleRing>>,
    ) -> Result<VmProcess, VmmError> {
        VmProcess::spawn_with(
            command,
            log,
            SpawnOptions {
                console,
                ..SpawnOptions::default()
            },
        )
    }

    /// [`VmProcess::spawn`] with `options`. `log` is opened (created 0600)
    /// without following a symlink.
    pub fn spawn_with(
        mut command: Command,
        log: &Path,
        options: SpawnOptions<'_>,
    ) -> Result<VmProcess, VmmError> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(log)?;
        let stdout = match options.console {
            Some(_) => Stdio::piped(),
            None => Stdio::from(log.try_clone()?),
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let (tether, terminal) = if options.launcher_only {
            (None, None)
        } else {
            let (master, slave) = tether()?;
            (Some(master), Some(slave))
        };
        let child_setup = ChildSetup {
            parent: std::process::id() as libc::pid_t,
            terminal: terminal.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
            cgroup_procs: options.cgroup.as_ref().and_then(VmmCgroup::procs_fd),
            inherit: options.inherit,
        };
        // SAFETY: the closure only makes async-signal-safe system calls
        // (prctl, getppid, write, fcntl) on values prepared before the fork,
        // and allocates nothing.
        unsafe {
            command.pre_exec(move || child_setup.run());
        }
        let mut child = command.spawn().map_err(VmmError::Launch)?;
        drop(terminal);
        if let (Some(ring), Some(pipe)) = (options.console, child.stdout.take()) {
            ring.drain_from(pipe);
        }
        let pid = child
            .id()
            .ok_or_else(|| VmmError::ExitedEarly("the VMM exited at once".into()))?;
        // Nothing reaps the child before the watcher below starts, so the
        // pid still names it (at worst as a zombie).
        let pidfd = open_pidfd(pid)?;
        let cgroup = options.cgroup;
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let exit = match child.wait().await {
                Ok(status) => VmExit {
                    code: status.code(),
                    signal: status.signal(),
                },
                Err(_) => VmExit {
                    code: None,
                    signal: None,
                },
            };
            if let Some(cgroup) = cgroup {
                if let Err(e) = cgroup.remove().await {
                    tracing::warn!(error = %crate::error_chain::render(&e), "a VMM's cgroup outlived it");
                }
            }
            let _ = exit_tx.send(Some(exit));
        });
        Ok(VmProcess {
            pid,
            pidfd,
            tether,
            exit: exit_rx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended, if it has.
    pub fn exited(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// Sends `signal` to this process, never to a later holder of its pid.
    fn signal(&self, signal: Signal) {
        signal_pidfd(&self.pidfd, signal);
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns once reaped. Idempotent.
    pub async fn stop(&self) {
        let mut exit = self.exit.clone();
        if self.exited().is_none() {
            self.signal(Signal::TERM);
            let graceful = tokio::time::timeout(STOP_GRACE, exit.wait_for(Option::is_some)).await;
            if graceful.is_err() && self.exited().is_none() {
                self.signal(Signal::KILL);
            }
        }
        let _ = exit.wait_for(Option::is_some).await;
    }

    /// Waits for the process to end.
    pub async fn wait(&self) -> Result<VmExit, VmmError> {
        wait_for_exit(&self.exit).await
    }
}

/// Waits until the watcher behind `exit` reports the process's end.
pub async fn wait_for_exit(exit: &watch::Receiver<Option<VmExit>>) -> Result<VmExit, VmmError> {
    let mut exit = exit.clone();
    let value = exit
        .wait_for(Option::is_some)
        .await
        .map_err(|_| VmmError::Control(std::io::Error::other("VM watcher ended")))?;
    Ok(value.clone().unwrap_or(VmExit {
        code: None,
        signal: None,
    }))
}

/// Opens a pidfd on `pid`, which must still name the process meant (a
/// child not yet reaped, or a process known by other means).
pub fn open_pidfd(pid: u32) -> Result<OwnedFd, VmmError> {
    let launch = |e: std::io::Error| VmmError::Launch(e);
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| launch(std::io::Error::other("the VMM has no pid")))?;
    pidfd_open(pid, PidfdFlags::empty()).map_err(|e| launch(std::io::Error::from(e)))
}

/// Sends `signal` through `pidfd`: to that process, never to a later holder of its pid.
pub fn signal_pidfd(pidfd: &impl std::os::fd::AsFd, signal: Signal) {
    let _ = pidfd_send_signal(pidfd, signal);
}

impl Drop for VmProcess {
    /// A VM dropped without a stop (an abandoned boot, say) is killed; the
    /// watcher task reaps it.
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::KILL);
        }
        // The hang-up is the last word, should the kill not have landed.
        drop(self.tether.take());
    }
}

/// A pty whose master only the daemon holds (both ends close-on-exec, so
/// no other child inherits either), and its slave, for the child to make
/// its controlling terminal.
fn tether() -> Result<(PtyMaster, std::fs::File), VmmError> {
    let launch = |e: nix::Error| VmmError::Launch(std::io::Error::from(e));
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(launch)?;
    grantpt(&master).map_err(launch)?;
    unlockpt(&master).map_err(launch)?;
    let name = ptsname_r(&master).map_err(launch)?;
    let slave = std::fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(name)?;
    Ok((master, slave))
}

/// What the child does between fork and exec, prepared before the fork.
struct ChildSetup {
    /// The daemon's pid, read before the fork.
    parent: libc::pid_t,
    /// The slave of the tether pty, if the child gets one.
    terminal: Option<RawFd>,
    cgroup_procs: Option<RawFd>,
    inherit: Vec<RawFd>,
}

impl ChildSetup {
    /// The VM dies with the daemon, even on SIGKILL; joins its cgroup;
    /// keeps the inherited descriptors open across exec.
    fn run(&self) -> std::io::Result<()> {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
        let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The daemon may have died between fork and prctl: the child was
        // then re-parented (to init, or to a subreaper), so compare with
        // the pid saved before the fork rather than with 1.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != self.parent {
            return Err(std::io::Error::other("daemon exited during launch"));
        }
        if let Some(terminal) = self.terminal {
            // A session of its own, with the tether as controlling terminal.
            // SAFETY: setsid has no preconditions.
            if unsafe { libc::setsid() } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: TIOCSCTTY on the pty slave the parent opened takes an int.
            if unsafe { libc::ioctl(terminal, libc::TIOCSCTTY, 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(fd) = self.cgroup_procs {
            // SAFETY: writes one byte from a static buffer to an fd the
            // parent opened and keeps open until the child is reaped.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for &fd in &self.inherit {
            // SAFETY: F_SETFD on an fd of the child's own table; clears
            // close-on-exec there only.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The first line `binary --version` prints.
pub fn version_line(binary: &Path) -> std::io::Result<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or("unknown")
        .trim()
        .to_owned())
}

/// "status 1", "signal 9".
pub fn describe_exit(exit: &VmExit) -> String {
    match (exit.code, exit.signal) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => "unknown status".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsRawFd;

    use super::*;

    /// bash rather than sh: dash's redirections take one-digit descriptors only.
    fn sh(script: &str) -> Command {
        let mut command = Command::new("/bin/bash");
        command.args(["-c", script]);
        command
    }

    #[tokio::test]
    async fn stop_terminates_through_the_pidfd_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let process = VmProcess::spawn(sh("exec sleep 60"), &dir.path().join("log")).unwrap();
        assert!(process.exited().is_none());
        process.stop().await;
        let exit = process.exited().expect("reaped");
        assert_eq!(exit.signal, Some(libc::SIGTERM), "{exit:?}");
        // The pid is gone; a second stop signals nothing and returns.
        process.stop().await;
    }

    #[tokio::test]
    async fn closing_the_tether_hangs_the_vmm_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = VmProcess::spawn(sh("exec sleep 60"), &dir.path().join("log")).unwrap();
        // What the daemon's death does to its descriptors, whatever uid
        // the VMM has switched to by then.
        drop(process.tether.take());
        let exit = tokio::time::timeout(Duration::from_secs(10), process.wait())
            .await
            .expect("the VMM outlived its tether")
            .unwrap();
        assert_eq!(exit.signal, Some(libc::SIGHUP), "{exit:?}");
    }

    #[tokio::test]
    async fn only_the_named_descriptors_are_inherited() {
        let dir = tempfile::tempdir().unwrap();
        let (mut shared_read, shared_write) = std::io::pipe().unwrap();
        let (mut private_read, private_write) = std::io::pipe().unwrap();
        let fd = shared_write.as_raw_fd();
        let private = private_write.as_raw_fd();
        let script = format!(
            "echo shared >&{fd}; if [ -e /proc/$$/fd/{private} ]; then echo leaked; else echo closed; fi"
        );
        let process = VmProcess::spawn_with(
            sh(&script),
            &dir.path().join("log"),
            SpawnOptions {
                inherit: vec![fd],
                ..SpawnOptions::default()
            },
        )
        .unwrap();
        let exit = process.wait().await.unwrap();
        assert_eq!(exit.code, Some(0));
        drop((shared_write, private_write));
        let mut text = String::new();
        shared_read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "shared\n");
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(
            log, "closed\n",
            "a close-on-exec descriptor leaked into the VMM"
        );
        text.clear();
        private_read.read_to_string(&mut text).unwrap();
        assert_eq!(text, "");
    }

    #[tokio::test]
    async fn the_vmm_joins_its_cgroup_before_exec_and_the_group_goes_when_reaped() {
        use crate::vmm::cgroup::{VmmCgroups, VmmLimits};
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(root.path().join("cgroup.subtree_control"), "").unwrap();
        let cgroups = VmmCgroups::setup_at(root.path(), "0::/\n", 1).unwrap();
        let limits = VmmLimits {
            vcpus: 1,
            memory_mib: 64,
            translation_cache_mib: 0,
        };
        let group = cgroups.create("sb_000000000002", limits).unwrap();
        let dir = group.path().to_owned();
        let log = root.path().join("log");
        // The fake group's files are plain ones: the child's "0" lands in
        // cgroup.procs; the test clears the files once it has seen that,
        // as the kernel would with the group's last process.
        let process = VmProcess::spawn_with(
            sh("exec sleep 60"),
            &log,
            SpawnOptions {
                cgroup: Some(group),
                ..SpawnOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "0"
        );
        for file in ["cpu.max", "memory.max", "pids.max", "cgroup.procs"] {
            std::fs::remove_file(dir.join(file)).unwrap();
        }
        process.stop().await;
        assert!(!dir.exists(), "the group outlived its VMM");
    }

    #[test]
    fn the_log_is_never_opened_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("qemu.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let err = VmProcess::spawn(sh("true"), &link).err().expect("refused");
        assert!(
            matches!(&err, VmmError::Io(e) if e.raw_os_error() == Some(libc::ELOOP)),
            "{err}"
        );
    }

    #[test]
    fn the_log_is_private_to_the_daemon() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let log = dir.path().join("qemu.log");
            let process = VmProcess::spawn(sh("true"), &log).unwrap();
            process.wait().await.unwrap();
            let mode = std::fs::metadata(&log).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        });
    }
}
