//! Rate limits on the Workload service: Attest and signing calls per peer
//! address, credentials per identity. A refusal is RESOURCE_EXHAUSTED with
//! the limit's name and a retry hint, in the message and as `retry-after-ms`
//! metadata (the SDK and the agent wait at least that long). Refusals are
//! not audited: a flood must not turn into a flood of audit writes.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::model::IdentityKey;
use crate::policy::rate_limit::{RateLimiter, RateLimitsConfig};

/// Metadata key of the retry hint, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";
/// Most peers (or identities) a limiter tracks at once; beyond that, idle
/// ones are dropped and newcomers share one bucket. About 64 bytes each.
const MAX_TRACKED: usize = 100_000;

/// The Workload service's limiters.
#[derive(Debug)]
pub struct RateLimits {
    attest_peer: RateLimiter<IpAddr>,
    sign_peer: RateLimiter<IpAddr>,
    sign_identity: RateLimiter<IdentityKey>,
}

impl RateLimits {
    /// Limiters for `config`.
    pub fn new(config: &RateLimitsConfig) -> Self {
        Self {
            attest_peer: RateLimiter::new(config.attest_per_second_per_peer, MAX_TRACKED),
            sign_peer: RateLimiter::new(config.sign_per_second_per_peer, MAX_TRACKED),
            sign_identity: RateLimiter::new(config.sign_per_second_per_identity, MAX_TRACKED),
        }
    }

    /// One Attest from `peer`.
    pub fn attest(&self, peer: Option<SocketAddr>) -> Result<(), Status> {
        by_peer(&self.attest_peer, "attest_per_second_per_peer", peer)
    }

    /// One signing call from `peer`.
    pub fn sign_peer(&self, peer: Option<SocketAddr>) -> Result<(), Status> {
        by_peer(&self.sign_peer, "sign_per_second_per_peer", peer)
    }

    /// One credential signed for `identity`.
    pub fn sign_identity(&self, identity: &IdentityKey) -> Result<(), Status> {
        let l = &self.sign_identity;
        l.check(identity, Instant::now()).map_err(|wait| {
            exhausted(
                "sign_per_second_per_identity",
                l.per_second(),
                &format!("identity {identity}"),
                wait,
            )
        })
    }
}

fn by_peer(l: &RateLimiter<IpAddr>, name: &str, peer: Option<SocketAddr>) -> Result<(), Status> {
    // Without an address (not TCP) there is no peer to count against.
    let Some(peer) = peer else { return Ok(()) };
    // An IPv4 client seen through a dual-stack socket is still that client.
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    l.check(&ip, Instant::now())
        .map_err(|wait| exhausted(name, l.per_second(), &format!("peer {ip}"), wait))
}

fn exhausted(name: &str, per_second: u32, who: &str, wait: Duration) -> Status {
    let ms = wait.as_millis().max(1);
    let mut status = Status::resource_exhausted(format!(
        "rate limit {name} = {per_second}/s (bursts of {}) exceeded by {who}; retry after {ms} ms",
        per_second.saturating_mul(2)
    ));
    if let Ok(v) = MetadataValue::try_from(ms.to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_a_retry_hint() {
        let limits = RateLimits::new(&RateLimitsConfig {
            attest_per_second_per_peer: 1,
            ..Default::default()
        });
        let peer = Some(SocketAddr::from(([127, 0, 0, 1], 1234)));
        limits.attest(peer).unwrap();
        limits.attest(peer).unwrap();
        let e = limits.attest(peer).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().contains("attest_per_second_per_peer = 1/s"),
            "{e:?}"
        );
        let ms: u64 = e
            .metadata()
            .get(RETRY_AFTER_MS)
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1000).contains(&ms), "{ms}");
        // Another port of the same address is the same peer.
        let other_port = Some(SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert!(limits.attest(other_port).is_err());
    }
}
