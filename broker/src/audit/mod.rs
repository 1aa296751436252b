//! Audit events. Every issuance, denial and admin change becomes one
//! structured `tracing` event on target `credbroker::audit` with the same
//! fields, so a log pipeline can index them. (The durable, hash-chained log
//! builds on this.) Secrets never go in: tokens appear as hash prefixes,
//! credentials as `jti` or serial.

use std::net::SocketAddr;

/// The `tracing` target of audit events.
pub const TARGET: &str = "credbroker::audit";

/// Emits one audit event with the record's common fields plus `extra`.
macro_rules! audit_event {
    ($level:ident, $record:expr, $decision:expr, $($extra:tt)*) => {
        tracing::$level!(
            target: TARGET,
            action = $record.action,
            decision = $decision,
            identity = $record.identity.as_deref(),
            env = $record.env.as_deref(),
            actor = $record.actor.as_deref(),
            evidence = $record.evidence.as_deref(),
            peer = $record.peer.map(|p| p.to_string()),
            $($extra)*
        )
    };
}

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
        audit_event!(
            info,
            self,
            "issued",
            credential = "x509-svid",
            serial,
            expires_at
        );
    }

    /// Records that a JWT with `jti` was issued.
    pub fn issued_jwt(&self, jti: &str, audiences: &[String], expires_at: i64) {
        audit_event!(info, self, "issued", credential = "jwt-svid", jti, audiences = ?audiences, expires_at);
    }

    /// Records a refusal and why.
    pub fn denied(&self, reason: &str) {
        audit_event!(warn, self, "denied", reason);
    }

    /// Records a successful admin change.
    pub fn changed(&self, detail: &str) {
        audit_event!(info, self, "done", detail);
    }
}
