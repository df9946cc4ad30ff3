//! The results of `emberctl bench`: raw samples (each with the boot path of
//! the sandbox it was taken on), figures, notes and checks as they are
//! gathered, and the markdown tables they are printed as. Medians and p95s
//! are printed only where there are at least [`MIN_SAMPLES`] samples.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::stats::{median, percentile, MIN_SAMPLES};

/// One measurement and how the sandbox it was taken on was made
/// ("warm-pool", "snapshot-restore", "standby-restore", "cold-boot", or a
/// mix such as "warm-pool×2 snapshot-restore×6" for a sample of several).
#[derive(Debug, Clone, Serialize)]
pub(super) struct Sample {
    pub(super) value: f64,
    pub(super) boot_path: String,
}

/// A pass/fail verdict and what it was based on.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Check {
    pub(super) passed: bool,
    pub(super) result: String,
}

/// A ratio of two medians, printed when both exist.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Ratio {
    pub(super) label: String,
    pub(super) numerator: String,
    pub(super) denominator: String,
    /// The ratio of the two medians (null when either is missing).
    pub(super) value: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) provenance: BTreeMap<String, String>,
    /// Scenario → samples in milliseconds, in the order taken.
    pub(super) latencies_ms: BTreeMap<String, Vec<Sample>>,
    /// Memory figure → one sample per process (or per run), in MiB.
    pub(super) memory_mib: BTreeMap<String, Vec<Sample>>,
    /// Named single figures (rates, throughputs, slopes).
    pub(super) figures: BTreeMap<String, f64>,
    /// Sections that could not be measured, and why.
    pub(super) notes: BTreeMap<String, String>,
    pub(super) checks: BTreeMap<String, Check>,
    pub(super) ratios: Vec<Ratio>,
    /// The churn's footprint samples, raw.
    pub(super) churn: Vec<serde_json::Value>,
}

impl Report {
    pub(super) fn add(&mut self, name: &str, sample: Duration, boot_path: &str) {
        self.latencies_ms
            .entry(name.to_owned())
            .or_default()
            .push(Sample {
                value: sample.as_secs_f64() * 1000.0,
                boot_path: boot_path.to_owned(),
            });
    }

    pub(super) fn add_mib(&mut self, name: &str, mib: f64, boot_path: &str) {
        self.memory_mib
            .entry(name.to_owned())
            .or_default()
            .push(Sample {
                value: mib,
                boot_path: boot_path.to_owned(),
            });
    }

    pub(super) fn check(&mut self, name: &str, passed: bool, result: String) {
        self.checks
            .insert(name.to_owned(), Check { passed, result });
    }

    /// Registers a ratio of two figures' medians, computed at once.
    pub(super) fn ratio(&mut self, label: &str, numerator: &str, denominator: &str) {
        let value = self.median(numerator) / self.median(denominator);
        self.ratios.push(Ratio {
            label: label.to_owned(),
            numerator: numerator.to_owned(),
            denominator: denominator.to_owned(),
            value: value.is_finite().then_some(value),
        });
    }

    /// The median of a latency or memory figure, NaN when it has fewer
    /// than [`MIN_SAMPLES`] samples.
    pub(super) fn median(&self, name: &str) -> f64 {
        let samples = self
            .latencies_ms
            .get(name)
            .or_else(|| self.memory_mib.get(name))
            .map(|s| values(s))
            .unwrap_or_default();
        if samples.len() < MIN_SAMPLES {
            return f64::NAN;
        }
        median(&samples)
    }

    /// The checks that failed.
    pub(super) fn failures(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|(_, c)| !c.passed)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

fn values(samples: &[Sample]) -> Vec<f64> {
    samples.iter().map(|s| s.value).collect()
}

/// "warm-pool×3 snapshot-restore×2": how many samples took each path.
pub(super) fn path_mix<'a>(paths: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for path in paths {
        *counts.entry(path).or_default() += 1;
    }
    counts
        .iter()
        .map(|(path, n)| {
            if path.contains(' ') || path.contains('×') {
                // A sample of several creates: its own mix, n times.
                format!("({path})×{n}")
            } else {
                format!("{path}×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Median and p95 cells, or a dash under [`MIN_SAMPLES`] samples.
fn stat_cells(samples: &[f64]) -> (String, String) {
    if samples.len() < MIN_SAMPLES {
        return ("–".into(), "–".into());
    }
    (
        format!("{:.2}", median(samples)),
        format!("{:.2}", percentile(samples, 0.95)),
    )
}

pub(super) fn print_table(report: &Report) {
    println!("## emberd benchmark\n");
    for (key, value) in &report.provenance {
        println!("- {key}: {value}");
    }
    println!("\n| scenario | n | median ms | p95 ms | boot paths |\n|---|---:|---:|---:|---|");
    for (name, samples) in &report.latencies_ms {
        let (p50, p95) = stat_cells(&values(samples));
        let mix = path_mix(samples.iter().map(|s| s.boot_path.as_str()));
        println!("| {name} | {} | {p50} | {p95} | {mix} |", samples.len());
    }
    if !report.memory_mib.is_empty() {
        println!(
            "\n| memory | n | median MiB | min | max | boot paths |\n|---|---:|---:|---:|---:|---|"
        );
        for (name, samples) in &report.memory_mib {
            let v = values(samples);
            let (p50, _) = stat_cells(&v);
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mix = path_mix(samples.iter().map(|s| s.boot_path.as_str()));
            println!(
                "| {name} | {} | {p50} | {min:.1} | {max:.1} | {mix} |",
                v.len()
            );
        }
    }
    if !report.figures.is_empty() {
        println!("\n| figure | value |\n|---|---:|");
        for (name, value) in &report.figures {
            println!("| {name} | {value:.2} |");
        }
    }
    // A run of some sections only has some ratios.
    let ratios: Vec<_> = report
        .ratios
        .iter()
        .filter_map(|r| Some((r, r.value?)))
        .collect();
    if !ratios.is_empty() {
        println!("\n| ratio (medians, this run) | value |\n|---|---:|");
        for (ratio, value) in ratios {
            let digits = if value >= 100.0 { 0 } else { 2 };
            println!("| {} | {value:.digits$}× |", ratio.label);
        }
    }
    if !report.notes.is_empty() {
        println!("\n| not measured | why |\n|---|---|");
        for (name, why) in &report.notes {
            println!("| {name} | {why} |");
        }
    }
    if !report.checks.is_empty() {
        println!("\n| check | result |\n|---|---|");
        for (name, check) in &report.checks {
            let verdict = if check.passed { "pass" } else { "FAIL" };
            println!("| {name} | {verdict}: {} |", check.result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_median_needs_five_samples() {
        let mut report = Report::default();
        for ms in [1, 2, 3, 4] {
            report.add("x", Duration::from_millis(ms), "warm-pool");
        }
        assert!(report.median("x").is_nan());
        report.add("x", Duration::from_millis(5), "snapshot-restore");
        assert_eq!(report.median("x"), 3.0);
        assert_eq!(
            path_mix(
                report.latencies_ms["x"]
                    .iter()
                    .map(|s| s.boot_path.as_str())
            ),
            "snapshot-restore×1 warm-pool×4"
        );
        let several = path_mix([
            "warm-pool×2 snapshot-restore×1",
            "warm-pool×2 snapshot-restore×1",
        ]);
        assert_eq!(several, "(warm-pool×2 snapshot-restore×1)×2");
    }

    #[test]
    fn failed_checks_are_listed() {
        let mut report = Report::default();
        report.check("a", true, "ok".into());
        report.check("b", false, "grew".into());
        assert_eq!(report.failures(), ["b"]);
    }
}
