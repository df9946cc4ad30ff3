//! The filler of one pack's pool: boots VMs until the pool reaches its
//! target, warms each one up before it counts as ready, and keeps the ready
//! ones' health fresh.
//!
//! A refill waits for the last hand-out to settle (at most the policy's
//! `refill_settle` per refill, so that steady demand delays refills but
//! never stops them), then takes a pool slot, room under the admission
//! limits, a boot turn and a refill turn, all at once or not at all. The
//! boot turn goes back when the VM is booted; the refill turn once it is
//! warm (or discarded), and every filler is woken then. A VM whose warm-up
//! fails is stopped, never pooled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::SandboxError;
use super::launcher::{Booted, Launcher};
use super::pool::Pools;
use super::warmup::warm_up;

/// Wait after a failed pool boot or warm-up before trying again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How often a filler re-checks its pool and the ready VMs' health.
const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps the pool of `pack` at its target until `stop` is cancelled.
pub(super) async fn fill_forever(
    launcher: Arc<Launcher>,
    pools: Arc<Pools>,
    pack: String,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        if pools.below_target(&pack) {
            if let Some(left) = pools.settle_left() {
                tokio::select! {
                    () = tokio::time::sleep(left) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
        if let Some(turn) = pools.reserve_to_boot(&pack) {
            let booted = launcher.boot_in_new_dir(&pack, &stop).await;
            drop(turn.boot);
            let warmed = match booted {
                Ok(booted) => warm(&launcher, &pack, booted, &stop).await,
                Err(e) => Err(e),
            };
            drop(turn.refill);
            pools.wake_all();
            match warmed {
                Ok(booted) if stop.is_cancelled() => {
                    pools.settle(&pack, None);
                    booted.discard().await;
                    return;
                }
                Ok(booted) => {
                    tracing::debug!(pack = %pack, sandbox = %booted.id, "pool refilled");
                    pools.settle(&pack, Some((booted, turn.reservation)));
                }
                Err(_) if stop.is_cancelled() => {
                    pools.settle(&pack, None);
                    return;
                }
                Err(e) => {
                    pools.settle(&pack, None);
                    tracing::warn!(pack = %pack, error = %crate::error_chain::render(&e), "pool boot failed; retrying later");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
            continue;
        }
        if let Some(extra) = pools.shrink_if_idle(&pack) {
            tracing::debug!(pack = %pack, sandbox = %extra.booted.id, "pooled VM stopped: the pool shrank");
            extra.booted.discard().await;
            continue;
        }
        let wake = async {
            if let Some(notify) = pools.wake.get(&pack) {
                notify.notified().await;
            }
        };
        // Re-check now and then, so a missed wake-up costs little, and keep
        // the ready VMs' health fresh for hand-out.
        tokio::select! {
            () = wake => {}
            () = tokio::time::sleep(RECHECK_EVERY) => pools.check_health(&pack).await,
            () = stop.cancelled() => return,
        }
    }
}

/// Runs the pack's warm-up in a freshly booted VM; stops the VM when it
/// fails or the daemon shuts down meanwhile.
async fn warm(
    launcher: &Launcher,
    pack: &str,
    booted: Booted,
    stop: &CancellationToken,
) -> Result<Booted, SandboxError> {
    let artefact = match launcher.pack(pack) {
        Ok(artefact) => artefact,
        Err(e) => {
            booted.discard().await;
            return Err(e);
        }
    };
    let result = tokio::select! {
        result = warm_up(&booted.guest.agent, artefact) => result,
        () = stop.cancelled() => Err(SandboxError::ShuttingDown),
    };
    match result {
        Ok(()) => Ok(booted),
        Err(e) => {
            booted.discard().await;
            Err(e)
        }
    }
}
