//! When to renew and when to retry.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use super::RefreshPolicy;

/// `base` spread by ±`spread` (a fraction).
pub(crate) fn jitter(base: Duration, spread: f64) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = SystemRandom::new().fill(&mut bytes);
    let unit = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX); // [0, 1]
    base.mul_f64((1.0 + spread * (2.0 * unit - 1.0)).max(0.0))
}

/// When to renew something that has `remaining` lifetime now.
pub(crate) fn renew_after(remaining: Duration, policy: &RefreshPolicy) -> Duration {
    jitter(remaining.mul_f64(policy.fraction), policy.jitter)
}

pub(crate) fn backoff(failures: u32, policy: &RefreshPolicy) -> Duration {
    let exp = policy
        .min_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    jitter(exp.min(policy.max_backoff), 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_lands_around_half_life() {
        let policy = RefreshPolicy::default();
        for _ in 0..500 {
            let d = renew_after(Duration::from_secs(100), &policy);
            assert!(
                d >= Duration::from_secs(45) && d <= Duration::from_secs(55),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RefreshPolicy::default();
        assert!(backoff(1, &policy) <= Duration::from_millis(600));
        assert!(backoff(4, &policy) >= Duration::from_millis(3200));
        assert!(backoff(40, &policy) <= Duration::from_secs(36));
    }

    #[test]
    fn jitter_spreads_values() {
        let values: std::collections::BTreeSet<u128> = (0..100)
            .map(|_| jitter(Duration::from_secs(100), 0.1).as_millis())
            .collect();
        assert!(values.len() > 50, "jitter must actually vary");
    }
}
