//! One VMM process: launched to die with the daemon, reaped by one task,
//! stopped gracefully then by force, killed if dropped while running.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::watch;

use super::console::ConsoleRing;
use super::{VmExit, VmmError};

/// How long a VMM gets to exit on SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A running (or ended) VMM process.
pub struct VmProcess {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
}

impl VmProcess {
    /// Spawns `command` with stdin closed, stdout and stderr to `log`, and
    /// `PR_SET_PDEATHSIG(SIGKILL)`, and starts the task that reaps it.
    pub fn spawn(command: Command, log: &Path) -> Result<VmProcess, VmmError> {
        VmProcess::spawn_with_console(command, log, None)
    }

    /// [`VmProcess::spawn`], with stdout drained into `console` when given
    /// (for VMMs that write the guest console to stdout).
    pub fn spawn_with_console(
        mut command: Command,
        log: &Path,
        console: Option<&Arc<ConsoleRing>>,
    ) -> Result<VmProcess, VmmError> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let stdout = match console {
            Some(_) => Stdio::piped(),
            None => Stdio::from(log.try_clone()?),
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SAFETY: the closure only calls prctl(2) and getppid(2), both
        // async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(die_with_parent);
        }
        let mut child = command.spawn().map_err(VmmError::Launch)?;
        if let (Some(ring), Some(pipe)) = (console, child.stdout.take()) {
            ring.drain_from(pipe);
        }
        let pid = child
            .id()
            .ok_or_else(|| VmmError::ExitedEarly("the VMM exited at once".into()))?;
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
            let _ = exit_tx.send(Some(exit));
        });
        Ok(VmProcess { pid, exit: exit_rx })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How the process ended, if it has.
    pub fn exited(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; returns once reaped. Idempotent.
    pub async fn stop(&self) {
        let mut exit = self.exit.clone();
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
            let graceful = tokio::time::timeout(STOP_GRACE, exit.wait_for(Option::is_some)).await;
            if graceful.is_err() && self.exited().is_none() {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            }
        }
        let _ = exit.wait_for(Option::is_some).await;
    }

    /// Waits for the process to end.
    pub async fn wait(&self) -> Result<VmExit, VmmError> {
        let mut exit = self.exit.clone();
        let value = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| VmmError::Control(std::io::Error::other("VM watcher ended")))?;
        Ok(value.clone().unwrap_or(VmExit {
            code: None,
            signal: None,
        }))
    }
}

impl Drop for VmProcess {
    /// A VM dropped without a stop (an abandoned boot, say) is killed; the
    /// watcher task reaps it.
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// `pre_exec` hook: the VM dies with the daemon, even on SIGKILL.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The parent may have died between fork and prctl.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } == 1 {
        return Err(std::io::Error::other("daemon exited during launch"));
    }
    Ok(())
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
