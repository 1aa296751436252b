//! What a workload asks the broker for.

use std::time::Duration;

/// A request for a JWT-SVID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwtRequest {
    /// Audiences (at least one).
    pub audiences: Vec<String>,
    /// Scopes; empty asks for every scope the identity allows.
    pub scopes: Vec<String>,
    /// Lifetime; `None` takes the identity's.
    pub ttl: Option<Duration>,
}

impl JwtRequest {
    /// A request for one audience.
    pub fn audience(audience: impl Into<String>) -> Self {
        Self {
            audiences: vec![audience.into()],
            ..Self::default()
        }
    }

    /// Adds a scope.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Sets the lifetime.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub(crate) fn to_proto(&self) -> credbroker_proto::v1::JwtRequest {
        credbroker_proto::v1::JwtRequest {
            audiences: self.audiences.clone(),
            scopes: self.scopes.clone(),
            ttl_seconds: self
                .ttl
                .map(|t| t.as_secs().min(u64::from(u32::MAX)) as u32)
                .unwrap_or(0),
        }
    }
}
