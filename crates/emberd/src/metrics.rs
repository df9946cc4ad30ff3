//! The daemon's Prometheus metrics (see `docs/metrics.md`).
//!
//! Owns the registry: counters and histograms the manager records as
//! creates and execs finish, and gauges set from a [`Snapshot`] of the
//! manager's state at each scrape. Knows nothing of sandboxes or HTTP: it
//! takes plain values, so that the manager can hold it without an import
//! circle and the API only asks the manager for the text.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s text (OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BootPathLabel {
    boot_path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PackLabel {
    pack: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    pack: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
    pack: String,
}

/// The manager's state at one scrape, as plain values.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `(state, pack)` of every sandbox.
    pub sandboxes: Vec<(String, String)>,
    /// Ready VMs per pack, when pools are on.
    pub pool_ready: Option<BTreeMap<String, usize>>,
    /// The size each pack's pool is kept at now (it adapts to demand).
    pub pool_target: Option<BTreeMap<String, usize>>,
    /// Sandboxes (pooled VMs included) holding admission slots.
    pub held_sandboxes: usize,
    /// Guest memory they hold, in MiB.
    pub held_memory_mib: u64,
    /// Sandboxes reaped since start.
    pub reaped: u64,
    /// Packs whose template restores were given up since start.
    pub restores_given_up: u64,
}

fn latency_histogram() -> Histogram {
    // 10 ms to about 80 s: pool hand-outs and short execs up to cold
    // boots under TCG and long execs.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// One daemon's metrics.
pub struct Metrics {
    registry: Registry,
    creates: Family<BootPathLabel, Counter>,
    create_seconds: Family<BootPathLabel, Histogram>,
    exec_seconds: Histogram,
    boot_failures: Family<PackLabel, Counter>,
    restore_failures: Family<PackLabel, Counter>,
    template_builds: Family<BuildLabels, Counter>,
    sandboxes: Family<StateLabels, Gauge>,
    pool_ready: Family<PackLabel, Gauge>,
    pool_target: Family<PackLabel, Gauge>,
    pool_misses: Family<PackLabel, Counter>,
    held_sandboxes: Gauge,
    committed_memory: Gauge,
    reaped: Counter,
    restores_given_up: Counter,
    /// One scrape at a time: gauges are cleared and set, then encoded.
    scrape: Mutex<()>,
}

impl Metrics {
    /// Metrics whose series for each of `boot_paths` and `packs` start at
    /// zero, so that they are scraped (and rated) before their first event.
    pub fn new(boot_paths: &[&str], packs: &[String]) -> Self {
        let mut registry = Registry::with_prefix("emberd");
        let creates = Family::<BootPathLabel, Counter>::default();
        registry.register(
            "creates",
            "Sandboxes created, by how their VM came to be",
            creates.clone(),
        );
        let create_seconds = Family::<BootPathLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register_with_unit(
            "create_duration",
            "Time from a create's start to its sandbox answering, by boot path",
            Unit::Seconds,
            create_seconds.clone(),
        );
        let exec_seconds = latency_histogram();
        registry.register_with_unit(
            "exec_duration",
            "Time of execs that ran to an outcome (unary and streamed)",
            Unit::Seconds,
            exec_seconds.clone(),
        );
        let boot_failures = Family::<PackLabel, Counter>::default();
        registry.register(
            "boot_failures",
            "Creates whose VM failed to boot or restore (after any cold-boot fallback)",
            boot_failures.clone(),
        );
        let restore_failures = Family::<PackLabel, Counter>::default();
        registry.register(
            "restore_failures",
            "Restores from a pack's template that failed (the create fell back to a cold boot)",
            restore_failures.clone(),
        );
        let template_builds = Family::<BuildLabels, Counter>::default();
        registry.register(
            "template_builds",
            "Template snapshot builds that ended, by pack and result (ok or failed)",
            template_builds.clone(),
        );
        let restores_given_up = Counter::default();
        registry.register(
            "restores_given_up",
            "Packs whose template restores were given up (the VMM refused an intact template)",
            restores_given_up.clone(),
        );
        let sandboxes = Family::<StateLabels, Gauge>::default();
        registry.register(
            "sandboxes",
            "Sandboxes now, by state and pack",
            sandboxes.clone(),
        );
        let pool_ready = Family::<PackLabel, Gauge>::default();
        registry.register(
            "pool_ready",
            "Booted VMs ready in the warm pool, by pack",
            pool_ready.clone(),
        );
        let pool_target = Family::<PackLabel, Gauge>::default();
        registry.register(
            "pool_target",
            "The size each pack's warm pool is kept at now (it grows on misses, shrinks when idle)",
            pool_target.clone(),
        );
        let pool_misses = Family::<PackLabel, Counter>::default();
        registry.register(
            "pool_misses",
            "Creates of the default shape that found no ready VM in the pack's pool",
            pool_misses.clone(),
        );
        let held_sandboxes = Gauge::default();
        registry.register(
            "held_sandboxes",
            "Sandboxes and pooled VMs holding an admission slot",
            held_sandboxes.clone(),
        );
        let committed_memory = Gauge::default();
        registry.register_with_unit(
            "guest_memory_committed",
            "Guest memory held against the admission limit (sandboxes and pooled VMs)",
            Unit::Bytes,
            committed_memory.clone(),
        );
        let reaped = Counter::default();
        registry.register(
            "reaped",
            "Sandboxes deleted for their TTL or idle timeout",
            reaped.clone(),
        );
        for boot_path in boot_paths {
            let label = BootPathLabel {
                boot_path: (*boot_path).to_owned(),
            };
            creates.get_or_create_owned(&label);
            create_seconds.get_or_create_owned(&label);
        }
        for pack in packs {
            let label = PackLabel { pack: pack.clone() };
            boot_failures.get_or_create_owned(&label);
            restore_failures.get_or_create_owned(&label);
            pool_misses.get_or_create_owned(&label);
            for result in ["ok", "failed"] {
                template_builds.get_or_create_owned(&BuildLabels {
                    pack: pack.clone(),
                    result: result.to_owned(),
                });
            }
        }
        Metrics {
            registry,
            creates,
            create_seconds,
            exec_seconds,
            boot_failures,
            restore_failures,
            template_builds,
            sandboxes,
            pool_ready,
            pool_target,
            pool_misses,
            held_sandboxes,
            committed_memory,
            reaped,
            restores_given_up,
            scrape: Mutex::new(()),
        }
    }

    /// A create finished: its sandbox answers.
    pub fn record_create(&self, boot_path: &str, elapsed: Duration) {
        let label = BootPathLabel {
            boot_path: boot_path.to_owned(),
        };
        self.creates.get_or_create(&label).inc();
        self.create_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    /// A create's VM failed to come up.
    pub fn record_boot_failure(&self, pack: &str) {
        self.boot_failures
            .get_or_create(&PackLabel {
                pack: pack.to_owned(),
            })
            .inc();
    }

    /// A create of `pack` found its pool empty (or only unusable VMs in it).
    pub fn record_pool_miss(&self, pack: &str) {
        self.pool_misses
            .get_or_create(&PackLabel {
                pack: pack.to_owned(),
            })
            .inc();
    }

    /// A restore from `pack`'s template failed; a cold boot follows.
    pub fn record_restore_failure(&self, pack: &str) {
        self.restore_failures
            .get_or_create(&PackLabel {
                pack: pack.to_owned(),
            })
            .inc();
    }

    /// A template build of `pack` ended.
    pub fn record_template_build(&self, pack: &str, ok: bool) {
        self.template_builds
            .get_or_create(&BuildLabels {
                pack: pack.to_owned(),
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// An exec ran to an outcome.
    pub fn record_exec(&self, elapsed: Duration) {
        self.exec_seconds.observe(elapsed.as_secs_f64());
    }

    /// The registry as OpenMetrics text, its gauges set from `snapshot`.
    pub fn encode(&self, snapshot: &Snapshot) -> String {
        let _one = self.scrape.lock();
        self.sandboxes.clear();
        for (state, pack) in &snapshot.sandboxes {
            self.sandboxes
                .get_or_create(&StateLabels {
                    state: state.clone(),
                    pack: pack.clone(),
                })
                .inc();
        }
        self.pool_ready.clear();
        for (pack, ready) in snapshot.pool_ready.iter().flatten() {
            self.pool_ready
                .get_or_create(&PackLabel { pack: pack.clone() })
                .set(saturating_i64(*ready as u64));
        }
        self.pool_target.clear();
        for (pack, target) in snapshot.pool_target.iter().flatten() {
            self.pool_target
                .get_or_create(&PackLabel { pack: pack.clone() })
                .set(saturating_i64(*target as u64));
        }
        self.held_sandboxes
            .set(saturating_i64(snapshot.held_sandboxes as u64));
        self.committed_memory.set(saturating_i64(
            snapshot.held_memory_mib.saturating_mul(1 << 20),
        ));
        catch_up(&self.reaped, snapshot.reaped);
        catch_up(&self.restores_given_up, snapshot.restores_given_up);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry).and_then(|()| encode_eof(&mut text));
        text
    }
}

/// Raises a counter kept elsewhere to `total` (counters only go up).
fn catch_up(counter: &Counter<u64, AtomicU64>, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_recorded_values_and_scrape_time_gauges() {
        let metrics = Metrics::new(&["warm-pool", "cold-boot"], &["python".into()]);
        metrics.record_create("warm-pool", Duration::from_millis(30));
        metrics.record_exec(Duration::from_millis(5));
        metrics.record_boot_failure("python");
        metrics.record_restore_failure("python");
        metrics.record_pool_miss("python");
        metrics.record_template_build("python", true);
        let snapshot = Snapshot {
            sandboxes: vec![
                ("running".into(), "python".into()),
                ("running".into(), "python".into()),
            ],
            pool_ready: Some(BTreeMap::from([("python".into(), 2)])),
            pool_target: Some(BTreeMap::from([("python".into(), 3)])),
            held_sandboxes: 4,
            held_memory_mib: 512,
            reaped: 3,
            restores_given_up: 1,
        };
        let text = metrics.encode(&snapshot);
        for line in [
            "emberd_creates_total{boot_path=\"warm-pool\"} 1",
            "emberd_creates_total{boot_path=\"cold-boot\"} 0",
            "emberd_create_duration_seconds_count{boot_path=\"warm-pool\"} 1",
            "emberd_exec_duration_seconds_count 1",
            "emberd_boot_failures_total{pack=\"python\"} 1",
            "emberd_restore_failures_total{pack=\"python\"} 1",
            "emberd_template_builds_total{pack=\"python\",result=\"ok\"} 1",
            "emberd_template_builds_total{pack=\"python\",result=\"failed\"} 0",
            "emberd_sandboxes{state=\"running\",pack=\"python\"} 2",
            "emberd_pool_ready{pack=\"python\"} 2",
            "emberd_pool_target{pack=\"python\"} 3",
            "emberd_pool_misses_total{pack=\"python\"} 1",
            "emberd_held_sandboxes 4",
            "emberd_guest_memory_committed_bytes 536870912",
            "emberd_reaped_total 3",
            "emberd_restores_given_up_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        // A sandbox gone since the last scrape leaves no stale series, and
        // counters kept by the manager are not counted twice.
        let text = metrics.encode(&Snapshot {
            reaped: 3,
            ..Snapshot::default()
        });
        assert!(!text.contains("emberd_sandboxes{"), "{text}");
        assert!(text.lines().any(|l| l == "emberd_reaped_total 3"), "{text}");
    }
}
