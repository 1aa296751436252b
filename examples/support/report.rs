//! Figures for the printed tables.

use std::time::Duration;

pub use credbroker_examples::report::percentile;

/// A duration in milliseconds with three decimals, or `-` for none.
pub fn millis(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

/// How many CPUs this host offers (0 if unknown), for the tables' headings.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
