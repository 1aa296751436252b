//! Figures for the benchmarks' tables.

/// Nearest-rank percentile `p` (0 to 1) of sorted values; `None` if there
/// are none.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}
