//! Anomaly detection at request time. Each rule (one file each) watches
//! the calls the Workload service sees and reports findings; every
//! finding becomes an audit record (`action = anomaly`), a count in
//! `credbroker_anomalies_total{kind}` and a flag on the identity's page,
//! and, for identities registered with `--on-anomaly disable`, disables
//! the identity.

//!
//! Rules are cheap on the hot path: a few sharded-map operations per
//! request, no store access, no allocation unless something is new. Their
//! state is bounded: each rule tracks at most `[anomalies] max_tracked`
//! identities, addresses or certificates (default 100,000; idle entries
//! are swept when full, and past that newcomers go unjudged rather than
//! growing memory), 32 addresses per identity, 16 environments per
//! address, and 16 recent findings per identity for the inventory.

mod cloned_svid;
pub mod config;
mod cross_env;
mod denial_burst;
mod findings;
mod issuance_spike;
mod new_peer;
pub mod respond;
mod stale;
mod tracked;

use std::net::SocketAddr;

pub use config::AnomaliesConfig;
pub use findings::{KEPT_PER_IDENTITY, RecentFindings};

use crate::model::{Identity, IdentityKey};

/// What kind of anomaly was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A credential presented from an address never seen for its identity.
    NewPeer,
    /// One certificate used from two addresses within a short window.
    ClonedSvid,
    /// Issuance far above the identity's own trailing baseline.
    IssuanceSpike,
    /// Many denials for one identity or one peer in a short window.
    DenialBurst,
    /// A caller trying identities of several environments.
    CrossEnvironment,
    /// An identity flagged stale that suddenly became active.
    StaleReactivated,
}

impl Kind {
    /// Every kind, for metric labels.
    pub const ALL: [Kind; 6] = [
        Kind::NewPeer,
        Kind::ClonedSvid,
        Kind::IssuanceSpike,
        Kind::DenialBurst,
        Kind::CrossEnvironment,
        Kind::StaleReactivated,
    ];

    /// The label and audit name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewPeer => "new_peer",
            Self::ClonedSvid => "cloned_svid",
            Self::IssuanceSpike => "issuance_spike",
            Self::DenialBurst => "denial_burst",
            Self::CrossEnvironment => "cross_env",
            Self::StaleReactivated => "stale_reactivated",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: Kind,
    /// Unix seconds.
    pub at: i64,
    /// What was seen, for people (no secret: addresses, counts, serials).
    pub detail: String,
}

/// A finding with what it concerns, before it is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What was found and when.
    pub finding: Finding,
    /// The identity concerned, when there is one.
    pub identity: Option<IdentityKey>,
    /// The caller's address.
    pub peer: Option<SocketAddr>,
}

/// The broker's anomaly detection: every rule, and recent findings.
#[derive(Debug)]
pub struct Anomalies {
    new_peer: Option<new_peer::NewPeer>,
    cloned_svid: cloned_svid::ClonedSvid,
    issuance_spike: issuance_spike::IssuanceSpike,
    denial_burst: denial_burst::DenialBurst,
    cross_env: cross_env::CrossEnv,
    stale: stale::StaleReactivated,
    pub(crate) recent: RecentFindings,
}

impl Default for Anomalies {
    fn default() -> Self {
        Self::new(&AnomaliesConfig::default())
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Anomalies {
    /// Every rule, with `config`'s thresholds.
    pub fn new(config: &AnomaliesConfig) -> Self {
        let cap = config.max_tracked;
        Self {
            new_peer: config.new_peer.then(|| new_peer::NewPeer::new(cap)),
            cloned_svid: cloned_svid::ClonedSvid::new(secs(config.cloned_svid_window), cap),
            issuance_spike: issuance_spike::IssuanceSpike::new(
                secs(config.issuance_window),
                config.issuance_spike_factor,
                config.issuance_spike_min,
                cap,
            ),
            denial_burst: denial_burst::DenialBurst::new(
                config.denial_burst,
                secs(config.denial_window),
                cap,
            ),
            cross_env: cross_env::CrossEnv::new(
                config.cross_env_threshold,
                secs(config.cross_env_window),
                cap,
            ),
            stale: stale::StaleReactivated::new(secs(config.stale_after)),
            recent: RecentFindings::default(),
        }
    }

    /// The newest findings of `key`, newest first.
    pub fn recent(&self, key: &IdentityKey) -> Vec<Finding> {
        self.recent.of(key)
    }

    fn found(
        out: &mut Vec<Found>,
        kind: Kind,
        detail: Option<String>,
        identity: Option<&IdentityKey>,
        peer: Option<SocketAddr>,
        now: i64,
    ) {
        if let Some(detail) = detail {
            out.push(Found {
                finding: Finding {
                    kind,
                    at: now,
                    detail,
                },
                identity: identity.cloned(),
                peer,
            });
        }
    }

    /// An SVID of `key` with `serial` was presented from `peer`.
    pub fn presented(
        &self,
        key: &IdentityKey,
        serial: &str,
        peer: Option<SocketAddr>,
        now: i64,
    ) -> Vec<Found> {
        let mut out = Vec::new();
        let Some(addr) = peer else {
            return out;
        };
        let ip = addr.ip();
        if let Some(rule) = &self.new_peer {
            Self::found(
                &mut out,
                Kind::NewPeer,
                rule.presented(key, ip, now),
                Some(key),
                peer,
                now,
            );
        }
        let cloned = self.cloned_svid.presented(serial, ip, now);
        Self::found(&mut out, Kind::ClonedSvid, cloned, Some(key), peer, now);
        let cross = self.cross_env.request(ip, key.env.as_str(), now);
        Self::found(
            &mut out,
            Kind::CrossEnvironment,
            cross,
            Some(key),
            peer,
            now,
        );
        out
    }

    /// `identity` was issued a credential at `now` from `peer`; its
    /// previous issuance (or its creation) was at `previous`.
    pub fn issued(
        &self,
        identity: &Identity,
        previous: i64,
        peer: Option<SocketAddr>,
        now: i64,
    ) -> Vec<Found> {
        let mut out = Vec::new();
        let key = &identity.key;
        if let (Some(rule), Some(addr)) = (&self.new_peer, peer) {
            rule.learn(key, addr.ip(), now);
        }
        let spike = self.issuance_spike.issued(key, now);
        Self::found(&mut out, Kind::IssuanceSpike, spike, Some(key), peer, now);
        let stale = self.stale.issued(previous, now);
        Self::found(
            &mut out,
            Kind::StaleReactivated,
            stale,
            Some(key),
            peer,
            now,
        );
        if let Some(addr) = peer {
            let cross = self.cross_env.request(addr.ip(), key.env.as_str(), now);
            Self::found(
                &mut out,
                Kind::CrossEnvironment,
                cross,
                Some(key),
                peer,
                now,
            );
        }
        out
    }

    /// A request for `identity` (`env/name`, when known) from `peer` was
    /// denied at `now`.
    pub fn denied(&self, identity: Option<&str>, peer: Option<SocketAddr>, now: i64) -> Vec<Found> {
        let mut out = Vec::new();
        let key = identity.and_then(|k| IdentityKey::parse(k).ok());
        if let Some(k) = identity {
            let burst = self
                .denial_burst
                .denied(&denial_burst::Subject::Identity(k.to_owned()), now);
            Self::found(&mut out, Kind::DenialBurst, burst, key.as_ref(), peer, now);
        }
        if let Some(addr) = peer {
            let burst = self
                .denial_burst
                .denied(&denial_burst::Subject::Peer(addr.ip()), now);
            Self::found(&mut out, Kind::DenialBurst, burst, key.as_ref(), peer, now);
            if let Some(key) = &key {
                let cross = self.cross_env.request(addr.ip(), key.env.as_str(), now);
                Self::found(
                    &mut out,
                    Kind::CrossEnvironment,
                    cross,
                    Some(key),
                    peer,
                    now,
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> IdentityKey {
        IdentityKey::parse(&format!("dev/{name}")).unwrap()
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    fn kinds(found: &[Found]) -> Vec<Kind> {
        found.iter().map(|f| f.finding.kind).collect()
    }

    #[test]
    fn a_new_address_is_flagged_once_and_the_first_is_learnt() {
        let a = Anomalies::default();
        let k = key("api");
        // Nothing known yet (a restart): learnt, not flagged.
        assert!(a.presented(&k, "01", peer("10.0.0.1"), 100).is_empty());
        assert_eq!(
            kinds(&a.presented(&k, "02", peer("10.0.0.2"), 200)),
            [Kind::NewPeer]
        );
        assert!(a.presented(&k, "03", peer("10.0.0.2"), 300).is_empty());
    }

    #[test]
    fn one_certificate_from_two_addresses_within_the_window_is_a_clone() {
        let a = Anomalies::new(&AnomaliesConfig {
            new_peer: false,
            ..AnomaliesConfig::default()
        });
        let k = key("api");
        assert!(a.presented(&k, "AA", peer("10.0.0.1"), 100).is_empty());
        assert_eq!(
            kinds(&a.presented(&k, "AA", peer("10.0.0.2"), 130)),
            [Kind::ClonedSvid]
        );
        // Outside the 60 s window: a host that moved, not a clone.
        assert!(a.presented(&k, "AA", peer("10.0.0.1"), 300).is_empty());
    }

    #[test]
    fn issuance_is_judged_against_the_identity_s_own_baseline() {
        let a = Anomalies::new(&AnomaliesConfig {
            issuance_spike_min: 5,
            issuance_spike_factor: 3.0,
            ..AnomaliesConfig::default()
        });
        let mut id = crate::model::test_identity();
        id.key = key("busy");
        let mut spikes = 0;
        // Twenty windows of 10 issuances build a baseline near 10 …
        for w in 0..20 {
            for i in 0..10 {
                spikes += kinds(&a.issued(&id, 60 * w + i, None, 60 * w + i)).len();
            }
        }
        // While the baseline warms up (2, then 3.6 per window) the first
        // two windows stand out; after that 10 per window is normal.
        assert_eq!(spikes, 2);
        // With the baseline near 10, 25 in one window is no spike; past
        // three times it is.
        let t = 60 * 20;
        let found: usize = (0..25).map(|i| a.issued(&id, t, None, t + i).len()).sum();
        assert_eq!(found, 0);
        let found: usize = (25..31).map(|i| a.issued(&id, t, None, t + i).len()).sum();
        assert_eq!(found, 1);
    }

    #[test]
    fn denials_environments_and_staleness() {
        let a = Anomalies::new(&AnomaliesConfig {
            denial_burst: 3,
            stale_after: std::time::Duration::from_secs(100),
            ..AnomaliesConfig::default()
        });
        let p = peer("10.0.0.9");
        assert!(a.denied(Some("dev/x"), p, 10).is_empty());
        assert!(a.denied(Some("dev/x"), p, 11).is_empty());
        // The identity's and the peer's third denial.
        assert_eq!(
            kinds(&a.denied(Some("dev/x"), p, 12)),
            [Kind::DenialBurst, Kind::DenialBurst]
        );
        // The same peer asking for prod.
        assert_eq!(
            kinds(&a.denied(Some("prod/x"), p, 13)),
            [Kind::CrossEnvironment]
        );
        let mut id = crate::model::test_identity();
        id.key = key("dormant");
        assert!(a.issued(&id, 0, None, 99).is_empty());
        assert_eq!(
            kinds(&a.issued(&id, 0, None, 100)),
            [Kind::StaleReactivated]
        );
    }
}
