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

/// `delay`, but never shorter than the wait the broker asked for.
pub(crate) fn honour_hint(delay: Duration, e: &crate::ClientError) -> Duration {
    e.retry_after().map_or(delay, |hint| delay.max(hint))
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
    fn a_retry_hint_lengthens_the_delay_never_shortens_it() {
        let mut status = tonic::Status::resource_exhausted("rate limit");
        status
            .metadata_mut()
            .insert(crate::error::RETRY_AFTER_MS, "750".parse().unwrap());
        let e = crate::ClientError::Rejected(status);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(750)));
        assert_eq!(
            honour_hint(Duration::from_millis(10), &e),
            Duration::from_millis(750)
        );
        assert_eq!(
            honour_hint(Duration::from_secs(5), &e),
            Duration::from_secs(5)
        );
        let plain = crate::ClientError::Rejected(tonic::Status::unavailable("down"));
        assert_eq!(
            honour_hint(Duration::from_millis(10), &plain),
            Duration::from_millis(10)
        );
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
