//! Rule `issuance_spike`: an identity issued far more in one window than
//! its own trailing baseline (an exponentially weighted mean of past
//! windows, so one quiet or busy window moves it only a little).

use super::tracked::Tracked;
use crate::model::IdentityKey;

/// Weight of the newest window in the baseline.
const ALPHA: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
struct Rate {
    window_start: i64,
    count: u32,
    baseline: f64,
    flagged: bool,
}

/// Issuance per identity.
#[derive(Debug)]
pub struct IssuanceSpike {
    rates: Tracked<IdentityKey, Rate>,
    window: i64,
    factor: f64,
    min: u32,
}

impl IssuanceSpike {
    /// Flags a window above `factor` × baseline and at least `min`.
    pub fn new(window: i64, factor: f64, min: u32, cap: usize) -> Self {
        Self {
            rates: Tracked::new(cap),
            window: window.max(1),
            factor,
            min,
        }
    }

    /// `key` was issued a credential at `now`.
    pub fn issued(&self, key: &IdentityKey, now: i64) -> Option<String> {
        if self.factor <= 0.0 {
            return None;
        }
        let fresh = || Rate {
            window_start: now,
            count: 0,
            baseline: 0.0,
            flagged: false,
        };
        // Idle for 1000 windows: its baseline has decayed to nothing.
        let idle = self.window.saturating_mul(1000);
        self.rates
            .with(key, now, idle, fresh, |r| {
                let elapsed = (now - r.window_start) / self.window;
                if elapsed > 0 {
                    // The window that ended, then the empty ones after it.
                    r.baseline = r.baseline * (1.0 - ALPHA) + f64::from(r.count) * ALPHA;
                    let empty = i32::try_from((elapsed - 1).min(1000)).unwrap_or(1000);
                    r.baseline *= (1.0 - ALPHA).powi(empty);
                    r.window_start += elapsed * self.window;
                    r.count = 0;
                    r.flagged = false;
                }
                r.count = r.count.saturating_add(1);
                let limit = (r.baseline * self.factor).max(f64::from(self.min));
                if !r.flagged && f64::from(r.count) > limit {
                    r.flagged = true;
                    return Some(format!(
                        "{} credentials issued within {}s, over {limit:.0} ({}× the trailing \
                         baseline of {:.1} per window, at least {})",
                        r.count, self.window, self.factor, r.baseline, self.min
                    ));
                }
                None
            })
            .flatten()
    }
}
