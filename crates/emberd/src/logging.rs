//! Log output: the subscriber every `emberd` command installs, as text for a
//! terminal or as one JSON object a line for a log collector.
//!
//! Owns the format and the filter (`EMBERD_LOG`, default `info`); must never
//! decide what is logged. Spans carry the context (the HTTP request, the
//! sandbox id), so every line inside one names its sandbox in both formats.

use clap::ValueEnum;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, spans as `name{field=value}:` prefixes.
    #[default]
    Text,
    /// One JSON object a line, with the current span and the span list.
    Json,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBERD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
