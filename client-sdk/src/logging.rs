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

/// Raises the soft limit on open files to the hard limit, as Go programs
/// do at start: the broker holds one descriptor per connection, the node
/// agent one per Workload API stream, and container runtimes often start
/// processes at a soft limit of 1024 with a far higher hard limit
/// (Kubernetes has no per-container setting). Returns the limit now in
/// force, or `None` when it could not be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit.rlim_cur)
}
