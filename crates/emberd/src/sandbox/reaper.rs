//! The reaper: one task that deletes sandboxes past their TTL or idle
//! timeout, logging each with its reason and counting them.
//!
//! A sandbox is claimed (no exec may start in it from then on) and removed
//! from the registry under the registry's lock, then torn down like a
//! delete. It never touches a sandbox that is not expired, and ends with
//! the daemon's shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::record::Sandbox;

/// How often the reaper looks; a sandbox outlives its term by at most this.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Every sandbox of the daemon, by id.
pub(super) type Registry = Arc<Mutex<HashMap<String, Arc<Sandbox>>>>;

/// Starts the reaper; it ends when `stop` is cancelled.
pub(super) fn spawn(
    registry: Registry,
    reaped: Arc<AtomicU64>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REAP_EVERY) => {}
            }
            reap_expired(&registry, &reaped).await;
        }
    })
}

/// Deletes every sandbox expired now.
async fn reap_expired(registry: &Registry, reaped: &AtomicU64) {
    let now = Instant::now();
    let expired: Vec<_> = {
        let mut sandboxes = registry.lock();
        let claimed: Vec<_> = sandboxes
            .iter()
            .filter_map(|(id, sandbox)| Some((id.clone(), sandbox.claim_expired(now)?)))
            .collect();
        claimed
            .into_iter()
            .filter_map(|(id, expiry)| Some((sandboxes.remove(&id)?, expiry)))
            .collect()
    };
    let teardowns = expired.into_iter().map(|(sandbox, expiry)| async move {
        sandbox.teardown().await;
        reaped.fetch_add(1, Ordering::SeqCst);
        tracing::info!(sandbox = %sandbox.id, reason = expiry.as_str(), "sandbox reaped");
    });
    futures::future::join_all(teardowns).await;
}
