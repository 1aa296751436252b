//! Anomaly detection at request time. Each rule (one file each) watches
//! the calls the Workload service sees and reports findings; every
//! finding becomes an audit record (`action = anomaly`), a count in
//! `credbroker_anomalies_total{kind}` and a flag on the identity's page,
//! and, for identities registered with `--on-anomaly disable`, disables
//! the identity.

mod findings;

pub use findings::{KEPT_PER_IDENTITY, RecentFindings};

use crate::model::IdentityKey;

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

/// The broker's anomaly detection.
#[derive(Debug, Default)]
pub struct Anomalies {
    recent: RecentFindings,
}

impl Anomalies {
    /// The newest findings of `key`, newest first.
    pub fn recent(&self, key: &IdentityKey) -> Vec<Finding> {
        self.recent.of(key)
    }
}
