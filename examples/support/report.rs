//! Figures for the printed tables.

use std::time::Duration;

/// Nearest-rank percentile `p` (0 to 1) of sorted values; `None` if there
/// are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A duration in milliseconds with three decimals, or `-` for none.
pub fn millis(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3))
}

/// How many CPUs this host offers (0 if unknown), for the tables' headings.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
