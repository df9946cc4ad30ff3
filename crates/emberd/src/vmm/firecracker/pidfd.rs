//! A VMM the daemon did not spawn itself: the jailed Firecracker, started
//! by the jailer in a new PID namespace and left behind when the jailer
//! exits. Known by a pidfd, so that a signal can never reach a process
//! that took over its pid.
//!
//! Owns that pidfd, the task that notices the exit, and stop (signals
//! through the pidfd). Must never signal a raw pid. The process is not the
//! daemon's child: its exit status is not ours to read.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use rustix::process::Signal;

use crate::vmm::process::{open_pidfd, signal_pidfd, wait_for_exit};
use crate::vmm::{VmExit, VmmError};

/// A process watched through its pidfd.
pub struct PidfdProcess {
    pid: u32,
    fd: Arc<AsyncFd<OwnedFd>>,
    exit: watch::Receiver<Option<VmExit>>,
}

impl PidfdProcess {
    /// Opens `pid` and starts watching for its exit.
    pub fn open(pid: u32) -> Result<PidfdProcess, VmmError> {
        let owned = open_pidfd(pid)?;
        // SAFETY: `owned` is an open pidfd that the AsyncFd owns from here
        // on, so it stays the same open file for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|e| VmmError::Launch(std::io::Error::from(e)))?;
        let fd = Arc::new(fd);
        let (exit_tx, exit_rx) = watch::channel(None);
        let watched = fd.clone();
        tokio::spawn(async move {
            // A pidfd turns readable when its process exits.
            let _ = watched.readable().await;
            let _ = exit_tx.send(Some(VmExit {
                code: None,
                signal: None,
            }));
        });
        Ok(PidfdProcess {
            pid,
            fd,
            exit: exit_rx,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn exited(&self) -> Option<VmExit> {
        self.exit.borrow().clone()
    }

    fn signal(&self, signal: Signal) {
        signal_pidfd(self.fd.get_ref(), signal);
    }

    /// SIGKILL, and wait for the exit. (As the init of its PID namespace,
    /// Firecracker ignores SIGTERM, for which it sets no handler.) Idempotent.
    pub async fn stop(&self) {
        if self.exited().is_none() {
            self.signal(Signal::KILL);
        }
        let mut exit = self.exit.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), exit.wait_for(Option::is_some)).await;
    }

    pub async fn wait(&self) -> Result<VmExit, VmmError> {
        wait_for_exit(&self.exit).await
    }
}

impl Drop for PidfdProcess {
    /// A VMM dropped without a stop is killed.
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.signal(Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_is_stopped_and_its_exit_noticed_through_its_pidfd() {
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .unwrap();
        let process = PidfdProcess::open(child.id()).unwrap();
        assert!(process.exited().is_none());
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        tokio::time::timeout(Duration::from_secs(5), process.stop())
            .await
            .unwrap();
        assert!(process.exited().is_some());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(reaper.join().unwrap().signal(), Some(libc::SIGKILL));
    }
}
