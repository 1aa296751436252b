//! Log output for `credbroker serve` and `credbroker-agent`: people read
//! text, log pipelines read JSON (`--log-format json`).
//!
//! In JSON every event is one line, an object with `timestamp` (RFC 3339,
//! UTC), `level`, `target`, `message` and the event's fields at the top
//! level. Audit events (target `credbroker::audit`) carry `action`,
//! `decision`, and when known `identity`, `env`, `actor`, `evidence`,
//! `peer`, then per decision `credential`, `serial`, `jti`, `audiences`,
//! `expires_at`, `reason` or `detail`.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber writing to stderr, filtered by
/// `CREDBROKER_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("CREDBROKER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
