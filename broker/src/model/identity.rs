//! The identity (registration entry): who a workload is, who owns it, and
//! what it may be issued.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::name_set::NameSet;
use super::names::{Audience, EnvName, IdentityName, Scope, SpiffeId};

/// The key of an identity: its environment and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// Environment the identity lives in.
    pub env: EnvName,
    /// Name, unique within the environment.
    pub name: IdentityName,
}

impl IdentityKey {
    /// Parses `env/name` (the name may itself contain `/`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let (env, name) = value
            .split_once('/')
            .ok_or_else(|| format!("identity {value:?} is not ENV/NAME"))?;
        Ok(Self {
            env: EnvName::new(env).map_err(|e| e.to_string())?,
            name: IdentityName::new(name).map_err(|e| e.to_string())?,
        })
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.name)
    }
}

/// A `key=value` fact that attestation must prove (e.g. `k8s:ns=payments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Selector {
    /// Selector key, such as `k8s:ns`.
    pub key: String,
    /// Required value.
    pub value: String,
}

/// A registered workload identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Environment and name.
    pub key: IdentityKey,
    /// `spiffe://{trust_domain}/{name}`.
    pub spiffe_id: SpiffeId,
    /// Team or person accountable for the identity. Always set.
    pub owner: String,
    /// Why the identity exists. Always set.
    pub purpose: String,
    /// What attestation must prove.
    pub selectors: Vec<Selector>,
    /// The node whose agent serves this identity, when it has one. Such an
    /// identity is reachable only through that node's agent, which proves
    /// its `unix:` selectors from the calling process.
    pub parent: Option<IdentityKey>,
    /// Peer networks credential calls may come from; empty allows any.
    pub allow_cidrs: Vec<crate::policy::Cidr>,
    /// Audiences JWTs may be issued for.
    pub audiences: NameSet<Audience>,
    /// Scopes JWTs may carry.
    pub scopes: NameSet<Scope>,
    /// Lifetime (and maximum lifetime) of issued JWTs.
    pub jwt_ttl: Duration,
    /// Lifetime of issued X.509-SVIDs.
    pub x509_ttl: Duration,
    /// Retirement date (unix seconds); no credential is issued after it.
    pub expires_at: Option<i64>,
    /// Whether credentials may be issued.
    pub enabled: bool,
    /// Whether its JWTs are sender-constrained: they carry `cnf.x5t#S256`
    /// and are valid only when presented over mTLS by that certificate
    /// (RFC 8705). Without it they are bearer tokens and carry no `cnf`.
    pub require_binding: bool,
    /// What a detected anomaly does besides being recorded and flagged.
    pub on_anomaly: OnAnomaly,
    /// When the identity was retired for good (unix seconds).
    pub retired_at: Option<i64>,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// Last change (unix seconds).
    pub updated_at: i64,
    /// Last time a credential was issued (unix seconds).
    pub last_issued_at: Option<i64>,
    /// Last authenticated use (unix seconds).
    pub last_seen_at: Option<i64>,
}

/// The response to an anomaly found for an identity (`--on-anomaly`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnAnomaly {
    /// Audit record, metric and flag on its page only.
    #[default]
    Alert,
    /// Also disable the identity (an operator re-enables it).
    Disable,
}

impl OnAnomaly {
    /// The stored and displayed word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Disable => "disable",
        }
    }

    /// Parses `alert` or `disable` (empty: `alert`).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "alert" => Ok(Self::Alert),
            "disable" => Ok(Self::Disable),
            other => Err(format!("on_anomaly {other:?} is not one of alert, disable")),
        }
    }
}

/// Whether an identity may receive credentials, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityStatus {
    /// Credentials may be issued.
    Active,
    /// An operator disabled it; it can be re-enabled.
    Disabled,
    /// Retired for good.
    Retired,
    /// Past its `expires_at`.
    Expired,
}

impl IdentityStatus {
    /// The lowercase word used in APIs and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Retired => "retired",
            Self::Expired => "expired",
        }
    }
}

impl fmt::Display for IdentityStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Identity {
    /// The status at unix time `now`. Retirement wins over disabling, which
    /// wins over expiry, so the reason shown is the most permanent one.
    pub fn status(&self, now: i64) -> IdentityStatus {
        if self.retired_at.is_some() {
            IdentityStatus::Retired
        } else if !self.enabled {
            IdentityStatus::Disabled
        } else if self.expires_at.is_some_and(|at| at <= now) {
            IdentityStatus::Expired
        } else {
            IdentityStatus::Active
        }
    }
}

/// The selector `key=value`, for unit tests.
#[cfg(test)]
pub(crate) fn test_selector(key: &str, value: &str) -> Selector {
    Selector {
        key: key.into(),
        value: value.into(),
    }
}

/// An active `dev/api` identity allowing audience `billing` and scopes
/// `read` and `write`, for unit tests.
#[cfg(test)]
pub(crate) fn test_identity() -> Identity {
    use super::names::TrustDomain;
    let name = IdentityName::new("api").unwrap();
    Identity {
        key: IdentityKey {
            env: EnvName::new("dev").unwrap(),
            name: name.clone(),
        },
        spiffe_id: SpiffeId::new(TrustDomain::new("dev.example.org").unwrap(), name),
        owner: "team".into(),
        purpose: "p".into(),
        selectors: vec![],
        parent: None,
        allow_cidrs: vec![],
        audiences: [Audience::new("billing").unwrap()].into_iter().collect(),
        scopes: [Scope::new("read").unwrap(), Scope::new("write").unwrap()]
            .into_iter()
            .collect(),
        jwt_ttl: Duration::from_secs(300),
        x509_ttl: Duration::from_secs(3600),
        expires_at: None,
        enabled: true,
        require_binding: false,
        on_anomaly: OnAnomaly::Alert,
        retired_at: None,
        created_at: 0,
        updated_at: 0,
        last_issued_at: None,
        last_seen_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_precedence() {
        let mut id = test_identity();
        assert_eq!(id.status(100), IdentityStatus::Active);
        id.expires_at = Some(100);
        assert_eq!(id.status(99), IdentityStatus::Active);
        assert_eq!(id.status(100), IdentityStatus::Expired);
        id.enabled = false;
        assert_eq!(id.status(100), IdentityStatus::Disabled);
        id.retired_at = Some(5);
        assert_eq!(id.status(100), IdentityStatus::Retired);
    }
}
