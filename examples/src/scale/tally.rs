//! What the node agents report: each renewal's kind and lag (how long after
//! its scheduled time the new credential was in hand), and each failure.
//! The reporter takes a window at a time; the windows add up to the run.

use std::sync::Mutex;
use std::time::Duration;

/// Which credential a renewal minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A JWT-SVID (`MintWorkloadJwt`).
    Jwt,
    /// An X.509-SVID (`MintWorkloadSvid`).
    X509,
}

/// Renewals and failures since the window began.
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// JWT-SVIDs minted.
    pub jwts: u64,
    /// X.509-SVIDs minted.
    pub svids: u64,
    /// Lag of every renewal, in microseconds.
    pub lags_us: Vec<u64>,
    /// Renewals whose credential had expired before the new one came
    /// (lag past the other half of its life).
    pub lapsed: u64,
    /// Failed calls.
    pub failures: u64,
    /// The first failure's message.
    pub first_failure: Option<String>,
}

impl Window {
    /// Credentials minted.
    pub fn credentials(&self) -> u64 {
        self.jwts + self.svids
    }

    /// Adds `other` to this window.
    pub fn absorb(&mut self, mut other: Window) {
        self.jwts += other.jwts;
        self.svids += other.svids;
        self.lags_us.append(&mut other.lags_us);
        self.lapsed += other.lapsed;
        self.failures += other.failures;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    /// Lag percentile `p` (0 to 1) of the window; sorts it first.
    pub fn lag(&mut self, p: f64) -> Option<Duration> {
        self.lags_us.sort_unstable();
        crate::report::percentile(&self.lags_us, p).map(Duration::from_micros)
    }
}

/// Shared by every node agent and the reporter.
#[derive(Debug, Default)]
pub struct Tally(Mutex<Window>);

impl Tally {
    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A renewal of `kind` done `lag` after its time; `lapsed` when the
    /// credential it replaced had expired by then.
    pub fn renewed(&self, kind: Kind, lag: Duration, lapsed: bool) {
        let mut w = self.window();
        match kind {
            Kind::Jwt => w.jwts += 1,
            Kind::X509 => w.svids += 1,
        }
        w.lags_us
            .push(u64::try_from(lag.as_micros()).unwrap_or(u64::MAX));
        w.lapsed += u64::from(lapsed);
    }

    /// A failed call.
    pub fn failed(&self, what: String) {
        let mut w = self.window();
        w.failures += 1;
        w.first_failure.get_or_insert(what);
    }

    /// What was reported since the last call, leaving an empty window.
    pub fn take(&self) -> Window {
        std::mem::take(&mut *self.window())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_add_up_and_keep_the_first_failure() {
        let tally = Tally::default();
        tally.renewed(Kind::Jwt, Duration::from_millis(3), false);
        tally.failed("first".into());
        let mut run = tally.take();
        tally.renewed(Kind::X509, Duration::from_millis(1), true);
        tally.renewed(Kind::Jwt, Duration::from_millis(2), false);
        tally.failed("second".into());
        run.absorb(tally.take());
        assert_eq!((run.jwts, run.svids, run.credentials()), (2, 1, 3));
        assert_eq!((run.lapsed, run.failures), (1, 2));
        assert_eq!(run.first_failure.as_deref(), Some("first"));
        assert_eq!(run.lag(0.5), Some(Duration::from_millis(2)));
        assert_eq!(run.lag(1.0), Some(Duration::from_millis(3)));
        assert_eq!(tally.take().credentials(), 0, "taking empties the window");
    }
}
