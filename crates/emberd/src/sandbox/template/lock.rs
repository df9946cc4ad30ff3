//! The data-dir lock for template builds: several daemons may share one
//! snapshot directory, and only one of them builds (and publishes, and
//! clears stale templates) at a time. An exclusive `flock` on
//! `<snapshots>/.build.lock`, released when the holder drops it or dies.

use std::fs::File;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

/// The lock file, beside the templates.
const BUILD_LOCK: &str = ".build.lock";
/// How often a waiting build tries the lock again.
const RETRY_EVERY: Duration = Duration::from_millis(100);

/// Held while this daemon builds a template.
pub(super) struct BuildLock {
    _flock: Flock<File>,
}

impl BuildLock {
    /// Waits until no other daemon builds in `root`, then takes the lock.
    /// Cancel it by dropping the future.
    pub(super) async fn acquire(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let path = root.join(BUILD_LOCK);
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(BuildLock { _flock: flock }),
                Err((_, nix::Error::EWOULDBLOCK)) => tokio::time::sleep(RETRY_EVERY).await,
                Err((_, e)) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_builder_waits_for_the_first() {
        let root = tempfile::tempdir().unwrap();
        let first = BuildLock::acquire(root.path()).await.unwrap();
        let second =
            tokio::time::timeout(Duration::from_millis(300), BuildLock::acquire(root.path())).await;
        assert!(second.is_err(), "two builders held the lock at once");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), BuildLock::acquire(root.path()))
            .await
            .expect("the lock was never released")
            .unwrap();
    }
}
