//! What the manager tells the metrics at a scrape.
//!
//! Gauges are read from the registry and the admission limits when asked,
//! never kept in step by hand; counters and histograms are recorded where
//! creates and execs finish (`manager.rs`, `exec_stream.rs`).

use crate::metrics::{Metrics, Snapshot};

use super::manager::Manager;
use super::model::BootPath;

/// The daemon's metrics, every boot path's and pack's series at zero.
pub(super) fn new_metrics(packs: &[String]) -> Metrics {
    let boot_paths = [
        BootPath::WarmPool,
        BootPath::SnapshotRestore,
        BootPath::StandbyRestore,
        BootPath::ColdBoot,
    ]
    .map(BootPath::as_str);
    Metrics::new(&boot_paths, packs)
}

impl Manager {
    /// The daemon's metrics as OpenMetrics text
    /// ([`crate::metrics::CONTENT_TYPE`]).
    pub fn metrics_text(&self) -> String {
        let (held_sandboxes, held_memory_mib) = self.held();
        let snapshot = Snapshot {
            sandboxes: self
                .list()
                .into_iter()
                .map(|s| (s.state.to_string(), s.pack))
                .collect(),
            pool_ready: self.info().pool_ready,
            pool_target: self.pool_targets(),
            held_sandboxes,
            held_memory_mib,
            reaped: self.reaped(),
            restores_given_up: self.restores_given_up(),
        };
        self.metrics.encode(&snapshot)
    }
}
