//! Token-bucket rate limits per key (a peer address, an identity): `rate`
//! requests per second sustained, bursts of twice that. The limiter's own
//! memory is bounded: at most `max_keys` buckets are tracked; when full,
//! buckets that have refilled (idle keys, indistinguishable from new ones)
//! are dropped, and if none has, newcomers share one overflow bucket rather
//! than growing the map.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[rate_limits]`: requests per second, each with bursts of twice the
/// rate; 0 turns a limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Attest calls per peer IP address.
    pub attest_per_second_per_peer: u32,
    /// Signing calls (FetchJwt, RenewX509, MintWorkloadSvid,
    /// MintWorkloadJwt) per peer IP address.
    pub sign_per_second_per_peer: u32,
    /// Credentials signed per identity (Attest and the signing calls).
    pub sign_per_second_per_identity: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        // SPIRE allows 1 attestation/s per address, which suits one node
        // agent per host; sidecars and SDKs share addresses here.
        Self {
            attest_per_second_per_peer: 20,
            sign_per_second_per_peer: 1000,
            sign_per_second_per_identity: 0,
        }
    }
}

/// How often a full limiter may sweep for idle buckets (a sweep walks
/// every bucket, so it must not run on every request).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills up to `burst` for the time since `at`, then takes one token
    /// if there is one; otherwise says how long until there is.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + elapsed * rate >= burst
    }
}

#[derive(Debug)]
struct Buckets<K> {
    map: HashMap<K, Bucket>,
    overflow: Bucket,
    last_sweep: Instant,
}

/// A token bucket per key.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    max_keys: usize,
    inner: Mutex<Buckets<K>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `per_second` sustained per key (0 = unlimited), bursts of twice
    /// that, tracking at most `max_keys` keys.
    pub fn new(per_second: u32, max_keys: usize) -> Self {
        let rate = f64::from(per_second);
        let now = Instant::now();
        Self {
            rate,
            burst: (2.0 * rate).max(1.0),
            max_keys: max_keys.max(1),
            inner: Mutex::new(Buckets {
                map: HashMap::new(),
                overflow: Bucket {
                    tokens: 2.0 * rate,
                    at: now,
                },
                last_sweep: now,
            }),
        }
    }

    /// The configured rate (0 = off).
    pub fn per_second(&self) -> u32 {
        self.rate as u32
    }

    /// Takes one request for `key` at `now`, or says how long until one
    /// would be allowed.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let (rate, burst) = (self.rate, self.burst);
        let mut b = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = b.map.get_mut(key) {
            return bucket.take(rate, burst, now);
        }
        if b.map.len() >= self.max_keys
            && now.saturating_duration_since(b.last_sweep) >= SWEEP_INTERVAL
        {
            b.last_sweep = now;
            b.map.retain(|_, bucket| !bucket.is_full(rate, burst, now));
        }
        if b.map.len() >= self.max_keys {
            return b.overflow.take(rate, burst, now);
        }
        let mut bucket = Bucket {
            tokens: burst,
            at: now,
        };
        let verdict = bucket.take(rate, burst, now);
        b.map.insert(key.clone(), bucket);
        verdict
    }

    /// How many keys are tracked now.
    pub fn tracked(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_twice_the_rate_then_refills() {
        let l = RateLimiter::new(10, 100);
        let t0 = Instant::now();
        for i in 0..20 {
            assert!(l.check(&1, t0).is_ok(), "request {i} is within the burst");
        }
        let wait = l.check(&1, t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // Another key has its own bucket.
        assert!(l.check(&2, t0).is_ok());
        // 100 ms later one more token has arrived.
        assert!(l.check(&1, t0 + Duration::from_millis(100)).is_ok());
        assert!(l.check(&1, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn zero_is_off() {
        let l = RateLimiter::new(0, 1);
        let t0 = Instant::now();
        for k in 0..10_000 {
            assert!(l.check(&k, t0).is_ok());
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn memory_is_bounded_and_idle_buckets_are_evicted() {
        let l = RateLimiter::new(1, 1_000);
        let t0 = Instant::now();
        for k in 0..100_000u32 {
            let _ = l.check(&k, t0);
        }
        assert_eq!(l.tracked(), 1_000, "never more buckets than the cap");
        // Newcomers beyond the cap share one bucket (burst 2).
        let t1 = t0 + Duration::from_millis(10);
        assert!(
            l.check(&200_000, t1).is_err(),
            "the overflow bucket is spent"
        );
        // Once the tracked keys have refilled they are dropped for new ones.
        let later = t0 + Duration::from_secs(5);
        assert!(l.check(&300_000, later).is_ok());
        assert_eq!(l.tracked(), 1);
    }
}
