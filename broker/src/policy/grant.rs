//! Grant decisions: is the identity active, and which audiences, scopes and
//! lifetime may a JWT carry. Pure functions; the API layer maps the errors
//! to gRPC codes.

use std::time::Duration;

use thiserror::Error;

use crate::config::TtlConfig;
use crate::model::{Audience, Identity, IdentityStatus, Scope};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// The request is malformed (maps to INVALID_ARGUMENT).
    #[error("{0}")]
    Invalid(String),
    /// The identity may not have this (maps to PERMISSION_DENIED).
    #[error("{0}")]
    Denied(String),
    /// The identity is not in service (maps to PERMISSION_DENIED).
    #[error("identity {identity} is {status}")]
    Inactive {
        /// `env/name`.
        identity: String,
        /// Why.
        status: IdentityStatus,
    },
}

/// Lifetime bounds from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct TtlLimits {
    /// Shortest TTL an identity or request may have.
    pub floor: Duration,
    /// Longest identity JWT TTL.
    pub jwt_ceiling: Duration,
    /// Longest identity X.509 TTL.
    pub x509_ceiling: Duration,
    /// Default identity JWT TTL.
    pub default_jwt: Duration,
    /// Default identity X.509 TTL.
    pub default_x509: Duration,
}

impl From<&TtlConfig> for TtlLimits {
    fn from(t: &TtlConfig) -> Self {
        Self {
            floor: t.floor,
            jwt_ceiling: t.jwt_ceiling,
            x509_ceiling: t.x509_ceiling,
            default_jwt: t.default_jwt,
            default_x509: t.default_x509,
        }
    }
}

/// Refuses identities that are disabled, retired or past `expires_at`.
pub fn check_active(identity: &Identity, now: i64) -> Result<(), PolicyError> {
    match identity.status(now) {
        IdentityStatus::Active => Ok(()),
        status => Err(PolicyError::Inactive {
            identity: identity.key.to_string(),
            status,
        }),
    }
}

/// What a JWT may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtGrant {
    /// Audiences, each allowed for the identity.
    pub audiences: Vec<Audience>,
    /// Scopes, each allowed for the identity.
    pub scopes: Vec<Scope>,
    /// Lifetime in seconds.
    pub ttl_seconds: i64,
}

/// Decides a JWT request: every audience and scope must be allowed (no
/// scopes requested means all allowed scopes), and the TTL (0 = the
/// identity's) must lie within `[floor, identity JWT TTL]`.
pub fn grant_jwt(
    identity: &Identity,
    audiences: &[String],
    scopes: &[String],
    ttl_seconds: u32,
    floor: Duration,
) -> Result<JwtGrant, PolicyError> {
    if audiences.is_empty() {
        return Err(PolicyError::Invalid(
            "a JWT needs at least one audience".into(),
        ));
    }
    let mut granted_audiences = Vec::with_capacity(audiences.len());
    for raw in audiences {
        let aud = Audience::new(raw).map_err(|e| PolicyError::Invalid(e.to_string()))?;
        if !identity.audiences.contains(&aud) {
            return Err(PolicyError::Denied(format!(
                "audience {:?} is not allowed for identity {}",
                aud.as_str(),
                identity.key
            )));
        }
        if !granted_audiences.contains(&aud) {
            granted_audiences.push(aud);
        }
    }
    let granted_scopes = if scopes.is_empty() {
        identity.scopes.iter().cloned().collect()
    } else {
        let mut granted = Vec::with_capacity(scopes.len());
        for raw in scopes {
            let scope = Scope::new(raw).map_err(|e| PolicyError::Invalid(e.to_string()))?;
            if !identity.scopes.contains(&scope) {
                return Err(PolicyError::Denied(format!(
                    "scope {:?} is not allowed for identity {}",
                    scope.as_str(),
                    identity.key
                )));
            }
            if !granted.contains(&scope) {
                granted.push(scope);
            }
        }
        granted
    };
    let max = identity.jwt_ttl.as_secs();
    let ttl = if ttl_seconds == 0 {
        max
    } else {
        u64::from(ttl_seconds)
    };
    if ttl > max {
        return Err(PolicyError::Denied(format!(
            "requested JWT lifetime {ttl}s exceeds the identity's maximum of {max}s"
        )));
    }
    if ttl < floor.as_secs() {
        return Err(PolicyError::Invalid(format!(
            "requested JWT lifetime {ttl}s is below the minimum of {}s",
            floor.as_secs()
        )));
    }
    Ok(JwtGrant {
        audiences: granted_audiences,
        scopes: granted_scopes,
        ttl_seconds: ttl as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_identity as identity;

    const FLOOR: Duration = Duration::from_secs(60);
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn grants_subsets_only() {
        let id = identity();
        let g = grant_jwt(&id, &s(&["billing"]), &[], 0, FLOOR).unwrap();
        assert_eq!(g.scopes.len(), 2);
        assert_eq!(g.ttl_seconds, 300);
        let g = grant_jwt(&id, &s(&["billing"]), &s(&["read"]), 120, FLOOR).unwrap();
        assert_eq!(g.scopes, vec![Scope::new("read").unwrap()]);
        assert!(matches!(
            grant_jwt(&id, &s(&["other"]), &[], 0, FLOOR),
            Err(PolicyError::Denied(_))
        ));
        assert!(matches!(
            grant_jwt(&id, &s(&["billing"]), &s(&["read", "admin"]), 0, FLOOR),
            Err(PolicyError::Denied(_))
        ));
        assert!(matches!(
            grant_jwt(&id, &[], &[], 0, FLOOR),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            grant_jwt(&id, &s(&["billing"]), &[], 301, FLOOR),
            Err(PolicyError::Denied(_))
        ));
        assert!(matches!(
            grant_jwt(&id, &s(&["billing"]), &[], 10, FLOOR),
            Err(PolicyError::Invalid(_))
        ));
    }

    #[test]
    fn inactive_identities_are_refused() {
        let mut id = identity();
        assert!(check_active(&id, 10).is_ok());
        id.enabled = false;
        let err = check_active(&id, 10).unwrap_err();
        assert_eq!(err.to_string(), "identity dev/api is disabled");
    }
}
