//! The manager's background work: template builds, pool fillers and the
//! standby VMMs' fillers (started at once: they wait for a template).
//!
//! Template requests arrive on a queue (every pack at start-up when asked
//! to warm, else a pack whose cold boot found no template) and are built
//! one at a time. When templates are warmed at start-up, the pools start
//! filling only after that first pass, so that they fill by restoring.
//! Every task ends when the shutdown token is cancelled.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::launcher::Launcher;
use super::pool::Pools;
use super::pool_filler::fill_forever;
use super::standby::{keep_ready, Standbys};
use super::template;

/// The running background tasks of one manager.
pub(super) struct Background {
    pub token: CancellationToken,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Background {
    pub fn new() -> Self {
        Background {
            token: CancellationToken::new(),
            tasks: Arc::default(),
        }
    }

    /// Starts the template builder, the standby fillers and, in their
    /// turn, the pool fillers.
    pub fn start(
        &self,
        launcher: Arc<Launcher>,
        pools: Arc<Pools>,
        standbys: Arc<Standbys>,
        mut queue: UnboundedReceiver<String>,
    ) {
        let packs = launcher.manifest.pack_names();
        if standbys.enabled() && launcher.templates.is_some() {
            let mut tasks = self.tasks.lock();
            for pack in &packs {
                tasks.push(tokio::spawn(keep_ready(
                    launcher.clone(),
                    standbys.clone(),
                    pack.clone(),
                    self.token.clone(),
                )));
            }
        }
        let warm_first = launcher.templates.is_some() && launcher.config.warm_templates_at_start;
        if warm_first {
            for pack in &packs {
                launcher.request_template(pack);
            }
        }
        let fillers = PoolFillers {
            launcher: launcher.clone(),
            pools,
            stop: self.token.clone(),
            tasks: self.tasks.clone(),
        };
        let mut first_pass = if warm_first { packs.len() } else { 0 };
        if first_pass == 0 {
            fillers.start();
        }
        let stop = self.token.clone();
        let builder = tokio::spawn(async move {
            loop {
                // A shutdown wins over a queued build.
                let pack = tokio::select! {
                    biased;
                    () = stop.cancelled() => None,
                    pack = queue.recv() => pack,
                };
                let Some(pack) = pack else { return };
                template::build_logged(&launcher, &pack, &stop).await;
                standbys.wake_filler(&pack);
                if first_pass > 0 {
                    first_pass -= 1;
                    if first_pass == 0 {
                        fillers.start();
                    }
                }
            }
        });
        self.tasks.lock().push(builder);
    }

    /// Cancels every task and waits for them to end.
    pub async fn stop(&self) {
        self.token.cancel();
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        futures::future::join_all(tasks).await;
    }
}

/// What it takes to start one filler per pack.
struct PoolFillers {
    launcher: Arc<Launcher>,
    pools: Arc<Pools>,
    stop: CancellationToken,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl PoolFillers {
    fn start(&self) {
        if !self.pools.enabled() || self.stop.is_cancelled() {
            return;
        }
        let mut tasks = self.tasks.lock();
        for pack in self.launcher.manifest.pack_names() {
            tasks.push(tokio::spawn(fill_forever(
                self.launcher.clone(),
                self.pools.clone(),
                pack,
                self.stop.clone(),
            )));
        }
    }
}
