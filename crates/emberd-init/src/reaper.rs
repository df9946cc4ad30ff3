//! The one owner of `waitpid(-1)`.
//!
//! The agent is a subreaper (PID 1 in the guest, `PR_SET_CHILD_SUBREAPER` on
//! a host), so every orphan ends up as its child. One task reaps them all on
//! SIGCHLD. A caller that wants an exit status spawns through
//! [`Reaper::spawn`], which registers the waiter while holding the same lock
//! the reaper takes around `waitpid`: a child can never be reaped before
//! its waiter exists. Statuses of unregistered children (orphans) are
//! dropped.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<Exit>>,
}

/// Shared handle to the reaper.
#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<Waiters>>,
}

impl Reaper {
    /// Makes this process a subreaper and starts the reaping task.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let reaper = Reaper {
            waiters: Arc::new(Mutex::new(Waiters::default())),
        };
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Spawns `command` and returns the child with a receiver for its exit.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.waiters.lock().expect("reaper lock");
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters.by_pid.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    fn reap_all(&self) {
        loop {
            let mut waiters = self.waiters.lock().expect("reaper lock");
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Exit::Signal(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(tx) = waiters.by_pid.remove(&pid.as_raw()) {
                let _ = tx.send(exit);
            }
        }
    }
}
