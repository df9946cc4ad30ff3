//! The one owner of `waitpid(-1)`.
//!
//! The agent is a subreaper (PID 1 in the guest, `PR_SET_CHILD_SUBREAPER` on
//! a host), so every orphan ends up as its child. One task reaps them all on
//! SIGCHLD. A caller that wants an exit status spawns through
//! [`Reaper::spawn`], which registers the waiter while holding the same lock
//! the reaper takes around `waitpid`: a child can never be reaped before
//! its waiter exists. Statuses of unregistered children (orphans) are
//! dropped.
//!
//! A pid is only signalled while it is registered and unreaped
//! ([`Reaper::signal_group`]), under that same lock: once reaped, its number
//! may belong to someone else. For the same reason the group of a child
//! spawned with [`Reaper::spawn_group`] is killed when the child has exited
//! but before it is reaped (the zombie still holds the group's id).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

struct Waiter {
    tx: oneshot::Sender<Exit>,
    /// The child leads a process group that dies with it.
    group: bool,
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, Waiter>,
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

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        self.waiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Spawns `command` and returns the child with a receiver for its exit.
    pub fn spawn(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        self.register(command, false)
    }

    /// Spawns `command` as the leader of a new process group; whatever is
    /// left in the group is killed when the leader exits.
    pub fn spawn_group(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        self.register(command.process_group(0), true)
    }

    /// Spawns `command`, which makes itself the leader of a new session
    /// (and so of a new process group) in a `pre_exec`; whatever is left in
    /// the group is killed when the leader exits, as with [`Self::spawn_group`].
    pub fn spawn_session(
        &self,
        command: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        self.register(command, true)
    }

    fn register(
        &self,
        command: &mut Command,
        group: bool,
    ) -> std::io::Result<(Child, oneshot::Receiver<Exit>)> {
        let mut waiters = self.lock();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        waiters
            .by_pid
            .insert(child.id() as i32, Waiter { tx, group });
        Ok((child, rx))
    }

    /// Sends `signal` to the process group led by `pid`, if `pid` is still a
    /// registered, unreaped child. Returns whether it was sent.
    pub fn signal_group(&self, pid: i32, signal: Signal) -> bool {
        let waiters = self.lock();
        waiters.by_pid.contains_key(&pid) && killpg(Pid::from_raw(pid), signal).is_ok()
    }

    fn reap_all(&self) {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let mut waiters = self.lock();
            // Look at the next exited child without reaping it, so that its
            // group can still be killed by number.
            let pid = match waitid(Id::All, peek) {
                Ok(WaitStatus::Exited(pid, _)) | Ok(WaitStatus::Signaled(pid, _, _)) => pid,
                _ => return,
            };
            if waiters.by_pid.get(&pid.as_raw()).is_some_and(|w| w.group) {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            let exit = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => Exit::Signal(signal as i32),
                _ => return,
            };
            if let Some(waiter) = waiters.by_pid.remove(&pid.as_raw()) {
                let _ = waiter.tx.send(exit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_a_registered_unreaped_leader_is_signalled() {
        let reaper = Reaper::start().unwrap();
        let (child, exit) = reaper.spawn_group(Command::new("sleep").arg("30")).unwrap();
        assert!(reaper.signal_group(child.id() as i32, Signal::SIGKILL));
        assert_eq!(exit.await.unwrap(), Exit::Signal(libc::SIGKILL));
        // Reaped: its number may be someone else's now.
        assert!(!reaper.signal_group(child.id() as i32, Signal::SIGKILL));

        let (child, exit) = reaper.spawn_group(&mut Command::new("true")).unwrap();
        assert_eq!(exit.await.unwrap(), Exit::Code(0));
        assert!(!reaper.signal_group(child.id() as i32, Signal::SIGTERM));
    }
}
