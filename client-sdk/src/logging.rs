//! Log output for `credbroker serve` and `credbroker-agent`: people read
//! text, log pipelines read JSON (`--log-format json`).
//!
//! In JSON every event is one line, an object with `timestamp` (RFC 3339,
//! UTC), `level`, `target`, `message` and the event's fields at the top
//! level. Audit events (target `credbroker::audit`) carry `action`,
//! `decision`, and when known `identity`, `env`, `actor`, `evidence`,
//! `peer`, then per decision `credential`, `serial`, `jti`, `audiences`,
//! `expires_at`, `reason` or `detail`.

use std::cell::RefCell;
use std::io::Write;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
        .with_writer(Stderr);
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

thread_local! {
    /// Lines held by [`batched`] on this thread, written when it ends.
    static BATCH: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f`, writing the log lines it emits on this thread to stderr
/// together when it returns: one `write` for a batch of lines instead of
/// one each. `f` must not wait (no `.await` inside): the lines are held
/// per thread. Lines emitted on other threads meanwhile are written as
/// usual, so they may come first.
pub fn batched<R>(f: impl FnOnce() -> R) -> R {
    /// Writes what was held even when `f` panics.
    struct Flush;
    impl Drop for Flush {
        fn drop(&mut self) {
            if let Some(lines) = BATCH.with(|b| b.borrow_mut().take())
                && !lines.is_empty()
            {
                let _ = std::io::stderr().write_all(&lines);
            }
        }
    }
    let nested = BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let nested = b.is_some();
        b.get_or_insert_with(Vec::new);
        nested
    });
    if nested {
        return f();
    }
    let _flush = Flush;
    f()
}

/// stderr, or the batch of [`batched`] when one is open on this thread.
struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let held = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(lines) => {
                lines.extend_from_slice(buf);
                true
            }
            None => false,
        });
        if held {
            Ok(buf.len())
        } else {
            std::io::stderr().write(buf)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Option<Vec<u8>> {
        BATCH.with(|b| b.borrow().clone())
    }

    #[test]
    fn a_batch_holds_its_lines_until_it_ends_even_nested_or_panicking() {
        batched(|| {
            Stderr.write_all(b"one\n").unwrap();
            batched(|| Stderr.write_all(b"two\n").unwrap());
            assert_eq!(
                held().as_deref(),
                Some(&b"one\ntwo\n"[..]),
                "nested: one batch"
            );
        });
        assert_eq!(held(), None, "written at the end");
        let panicked = std::panic::catch_unwind(|| {
            batched(|| {
                Stderr.write_all(b"three\n").unwrap();
                panic!("while logging");
            })
        });
        assert!(panicked.is_err());
        assert_eq!(held(), None, "a panic does not leave the thread batching");
    }
}
