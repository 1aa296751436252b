//! The soak and abuse suite (`--example soak`): each job starts the real
//! broker binary in a temporary directory, does one bounded thing to it,
//! prints what it measured next to the bound it must stay within, and
//! fails when a bound is broken.
//!
//! * [`steady`] — issuance load for a fixed time with the broker's RSS and
//!   open descriptors sampled every second;
//! * [`amplify`] — requests built to make the broker spend: an Attest
//!   claiming 20,000 JWT requests × 20,000 scopes, a 3.9 MB environment
//!   name, a 1 MB `jti`, bytes that are not protobuf;
//! * [`idle`] — 700 idle HTTP connections against a broker limited to 512
//!   descriptors, then `/healthz`, Attest and an admin call;
//! * [`fault`] — the store locked by another writer, then released.

pub mod amplify;
pub mod fault;
pub mod h2raw;
pub mod idle;
pub mod process;
pub mod steady;

use std::fmt::Display;
use std::time::Duration;

/// One measurement against its bound.
#[derive(Debug, Clone)]
struct Row {
    what: String,
    measured: String,
    bound: String,
    ok: bool,
}

/// What a job measured, printed as a table; any broken bound fails it.
#[derive(Debug, Clone, Default)]
pub struct Checks {
    rows: Vec<Row>,
}

impl Checks {
    /// Records `measured` for `what`, which must be within `bound`.
    pub fn check(&mut self, what: &str, measured: impl Display, bound: impl Display, ok: bool) {
        self.rows.push(Row {
            what: what.to_owned(),
            measured: measured.to_string(),
            bound: bound.to_string(),
            ok,
        });
    }

    /// Records a figure that has no bound.
    pub fn note(&mut self, what: &str, measured: impl Display) {
        self.check(what, measured, "-", true);
    }

    /// Whether every bound held.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.ok)
    }

    /// Prints the table under `title`.
    pub fn print(&self, title: &str) {
        println!("== {title}");
        let w = |f: fn(&Row) -> usize| self.rows.iter().map(f).max().unwrap_or(0);
        let (a, b, c) = (
            w(|r| r.what.len()),
            w(|r| r.measured.len()),
            w(|r| r.bound.len()),
        );
        for r in &self.rows {
            let verdict = if r.bound == "-" {
                ""
            } else if r.ok {
                "ok"
            } else {
                "BROKEN"
            };
            println!(
                "  {:a$}  {:>b$}  {:c$}  {verdict}",
                r.what, r.measured, r.bound
            );
        }
    }
}

/// A duration in milliseconds, for tables.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
