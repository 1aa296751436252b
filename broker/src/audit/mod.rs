//! Audit events. Every issuance, denial and admin change becomes one
//! structured `tracing` event on target `credbroker::audit` with the same
//! fields, so a log pipeline can index them. (The durable, hash-chained log
//! builds on this.) Secrets never go in: tokens appear as hash prefixes,
//! credentials as `jti` or serial.

use std::net::SocketAddr;

/// The `tracing` target of audit events.
pub const TARGET: &str = "credbroker::audit";

/// One auditable decision, filled in as a request is processed.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// What was attempted (`attest`, `fetch_jwt`, `identity.create`, …).
    pub action: &'static str,
    /// Who asked: `admin`, a SPIFFE ID, or `anonymous`.
    pub actor: Option<String>,
    /// Peer socket address.
    pub peer: Option<SocketAddr>,
    /// `env/name` of the identity concerned.
    pub identity: Option<String>,
    /// Environment.
    pub env: Option<String>,
    /// Non-secret evidence name (join token hash prefix).
    pub evidence: Option<String>,
}

impl AuditRecord {
    /// Starts a record for `action` from `peer`.
    pub fn new(action: &'static str, peer: Option<SocketAddr>) -> Self {
        Self {
            action,
            peer,
            ..Self::default()
        }
    }

    /// Records that an X.509-SVID with `serial` was issued.
    pub fn issued_x509(&self, serial: &str, expires_at: i64) {
        tracing::info!(
            target: TARGET,
            action = self.action,
            decision = "issued",
            credential = "x509-svid",
            serial,
            expires_at,
            identity = self.identity.as_deref(),
            env = self.env.as_deref(),
            actor = self.actor.as_deref(),
            evidence = self.evidence.as_deref(),
            peer = self.peer.map(|p| p.to_string()),
        );
    }

    /// Records that a JWT with `jti` was issued.
    pub fn issued_jwt(&self, jti: &str, audiences: &[String], expires_at: i64) {
        tracing::info!(
            target: TARGET,
            action = self.action,
            decision = "issued",
            credential = "jwt-svid",
            jti,
            audiences = ?audiences,
            expires_at,
            identity = self.identity.as_deref(),
            env = self.env.as_deref(),
            actor = self.actor.as_deref(),
            evidence = self.evidence.as_deref(),
            peer = self.peer.map(|p| p.to_string()),
        );
    }

    /// Records a refusal and why.
    pub fn denied(&self, reason: &str) {
        tracing::warn!(
            target: TARGET,
            action = self.action,
            decision = "denied",
            reason,
            identity = self.identity.as_deref(),
            env = self.env.as_deref(),
            actor = self.actor.as_deref(),
            evidence = self.evidence.as_deref(),
            peer = self.peer.map(|p| p.to_string()),
        );
    }

    /// Records a successful admin change.
    pub fn changed(&self, detail: &str) {
        tracing::info!(
            target: TARGET,
            action = self.action,
            decision = "done",
            detail,
            identity = self.identity.as_deref(),
            env = self.env.as_deref(),
            actor = self.actor.as_deref(),
            evidence = self.evidence.as_deref(),
            peer = self.peer.map(|p| p.to_string()),
        );
    }
}
