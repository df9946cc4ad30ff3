//! The results of `emberctl bench`: samples and figures as they are
//! gathered, and the markdown table they are printed as.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub(super) struct Report {
    pub(super) provenance: BTreeMap<String, String>,
    /// Scenario → samples in milliseconds.
    pub(super) latencies_ms: BTreeMap<String, Vec<f64>>,
    /// Named single figures.
    pub(super) figures: BTreeMap<String, f64>,
    pub(super) checks: BTreeMap<String, String>,
}

impl Report {
    pub(super) fn add(&mut self, name: &str, sample: Duration) {
        self.latencies_ms
            .entry(name.to_owned())
            .or_default()
            .push(sample.as_secs_f64() * 1000.0);
    }

    pub(super) fn median(&self, name: &str) -> f64 {
        percentile(
            self.latencies_ms.get(name).map_or(&[][..], Vec::as_slice),
            0.5,
        )
    }
}

pub(super) fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank]
}

pub(super) fn print_table(report: &Report) {
    println!("## emberd benchmark\n");
    for (key, value) in &report.provenance {
        println!("- {key}: {value}");
    }
    println!("\n| scenario | n | median ms | p95 ms |\n|---|---:|---:|---:|");
    for (name, samples) in &report.latencies_ms {
        println!(
            "| {name} | {} | {:.2} | {:.2} |",
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.95)
        );
    }
    println!("\n| figure | value |\n|---|---:|");
    for (name, value) in &report.figures {
        println!("| {name} | {value:.1} |");
    }
    let ratios = [
        (
            "cold boot / snapshot restore",
            "create: cold boot",
            "create: snapshot restore",
            1,
        ),
        (
            "cold boot / warm pool",
            "create: cold boot",
            "create: warm pool",
            0,
        ),
        (
            "bare python3 in guest / print(6*7) end to end",
            "bare python3 -c 'print(6*7)' inside the guest",
            "exec print(6*7): API time",
            2,
        ),
        (
            "bare node in guest / console.log(6*7) end to end, 5 s after the last",
            "bare node -e 'console.log(6*7)' inside the guest",
            "exec console.log(6*7) on node, 5 s after the last: API time",
            2,
        ),
    ];
    // A run of some scenarios only (`--only-interactive`) has no ratios.
    let ratios: Vec<_> = ratios
        .iter()
        .map(|(name, a, b, digits)| (name, report.median(a) / report.median(b), *digits))
        .filter(|(_, value, _)| value.is_finite())
        .collect();
    if !ratios.is_empty() {
        println!("\n| ratio (medians) | value |\n|---|---:|");
        for (name, value, digits) in ratios {
            println!("| {name} | {value:.digits$}× |");
        }
    }
    if !report.checks.is_empty() {
        println!("\n| check | result |\n|---|---|");
        for (name, result) in &report.checks {
            println!("| {name} | {result} |");
        }
    }
}
