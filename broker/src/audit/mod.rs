//! Audit: every issuance, denial and admin change is recorded twice — as a
//! structured `tracing` event on target `credbroker::audit` for log
//! pipelines, and as an entry in the durable, hash-chained audit log in the
//! store ([`AuditLog`]), which `credbroker audit` queries and
//! `credbroker audit verify` checks. Secrets never go in: tokens appear as
//! hash prefixes, credentials as `jti` or serial.

pub mod checkpoint;
mod entry;
pub mod export;
mod log;
pub mod retention;
#[cfg(test)]
mod retention_tests;
pub mod verify;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use entry::{AuditEntry, ChainKey, ChainVerifier, ChainedEntry, GENESIS, VerifyReport, hex};
pub use log::{AuditError, AuditLog, AuditSeal, CHECKPOINT_EVERY, COMMIT_TIMEOUT, QUEUE_CAPACITY};

/// The `tracing` target of audit events.
pub const TARGET: &str = "credbroker::audit";

/// What to look for in the audit log. `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// `env/name`.
    pub identity: Option<String>,
    /// JWT id.
    pub jti: Option<String>,
    /// Certificate serial (hex, upper case).
    pub serial: Option<String>,
    /// `admin`, a SPIFFE ID, or `anonymous`.
    pub actor: Option<String>,
    /// Environment.
    pub env: Option<String>,
    /// From this time (unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Until this time (unix ms, exclusive).
    pub until_ms: Option<i64>,
    /// Most entries returned (newest first).
    pub limit: i64,
}

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

/// Emits the event of an issuance once its entry is committed: the writer
/// calls this after the commit, so the log stream never says `issued` for
/// a credential the audit log does not hold (one refused because its
/// commit failed). The fields are those of [`audit_event!`].
pub(crate) fn log_issued(entry: &AuditEntry) {
    let audiences: Option<Vec<&str>> = entry
        .detail
        .as_deref()
        .and_then(|d| d.strip_prefix(JWT_AUDIENCES))
        .map(|a| a.split(',').collect());
    tracing::info!(
        target: TARGET,
        action = entry.action.as_str(),
        decision = entry.decision.as_str(),
        identity = entry.identity.as_deref(),
        env = entry.env.as_deref(),
        actor = entry.actor.as_deref(),
        evidence = entry.evidence.as_deref(),
        peer = entry.peer.as_deref(),
        credential = entry.credential.as_deref(),
        serial = entry.serial.as_deref(),
        jti = entry.jti.as_deref(),
        audiences = audiences.as_ref().map(tracing::field::debug),
        expires_at = entry.expires_at.map(crate::model::rfc3339).map(tracing::field::display),
    );
}

/// How a JWT's entry records its audiences in `detail`.
const JWT_AUDIENCES: &str = "aud=";

/// One auditable request, filled in as it is processed; each outcome is
/// logged and appended to the audit log. Issuances are held until
/// [`AuditRecord::commit_issued`], which the request must pass before it
/// hands the credentials out.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    log: AuditLog,
    /// Issuance entries not committed yet.
    issued: Arc<Mutex<Vec<AuditEntry>>>,
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
    /// Starts a record for `action` from `peer`, written to `log`.
    pub fn new(log: &AuditLog, action: &'static str, peer: Option<SocketAddr>) -> Self {
        Self {
            log: log.clone(),
            issued: Arc::new(Mutex::new(Vec::new())),
            action,
            actor: None,
            peer,
            identity: None,
            env: None,
            evidence: None,
        }
    }

    fn entry(&self, decision: &str) -> AuditEntry {
        AuditEntry {
            at_ms: crate::model::unix_now_ms(),
            action: self.action.to_owned(),
            decision: decision.to_owned(),
            actor: self.actor.clone(),
            peer: self.peer.map(|p| p.to_string()),
            identity: self.identity.clone(),
            env: self.env.clone(),
            evidence: self.evidence.clone(),
            ..AuditEntry::default()
        }
    }

    fn hold(&self, entry: AuditEntry) {
        if let Ok(mut issued) = self.issued.lock() {
            issued.push(entry);
        }
    }

    /// Commits every issuance recorded so far and waits until it is durable
    /// (bounded by [`COMMIT_TIMEOUT`]). The credentials may leave the broker
    /// only after `Ok`.
    pub async fn commit_issued(&self) -> Result<(), AuditError> {
        let entries = self
            .issued
            .lock()
            .map(|mut issued| std::mem::take(&mut *issued))
            .unwrap_or_default();
        // Resolved now, counted once committed; one request's credentials
        // share its environment, so two slots cover them (no allocation).
        let metrics = &self.log.metrics;
        let mut counts = [0u64; 2];
        let mut slots = [None; 2];
        for e in &entries {
            let slot = metrics.issued_slot(e.env.as_deref(), e.credential.as_deref());
            let k = usize::from(slot.is_x509());
            counts[k] += 1;
            slots[k] = Some(slot);
        }
        self.log.commit(entries).await?;
        for (slot, n) in slots.into_iter().zip(counts) {
            if let Some(slot) = slot {
                metrics.issued(slot, n);
            }
        }
        Ok(())
    }

    /// Records that an X.509-SVID with `serial` was issued (logged once
    /// committed, see [`log_issued`]).
    pub fn issued_x509(&self, serial: &str, expires_at: i64) {
        self.hold(AuditEntry {
            credential: Some("x509-svid".into()),
            serial: Some(serial.to_owned()),
            expires_at: Some(expires_at),
            ..self.entry("issued")
        });
    }

    /// Records that a JWT with `jti` was issued (logged once committed, see
    /// [`log_issued`]).
    pub fn issued_jwt(&self, jti: &str, audiences: &[String], expires_at: i64) {
        self.hold(AuditEntry {
            credential: Some("jwt-svid".into()),
            jti: Some(jti.to_owned()),
            expires_at: Some(expires_at),
            detail: Some(format!("{JWT_AUDIENCES}{}", audiences.join(","))),
            ..self.entry("issued")
        });
    }

    /// Records a refusal and why.
    pub fn denied(&self, reason: &str) {
        audit_event!(warn, self, "denied", reason);
        self.log.metrics.denied(self.env.as_deref(), reason);
        self.log.append(AuditEntry {
            reason: Some(reason.to_owned()),
            ..self.entry("denied")
        });
    }

    /// Records an anomaly finding (decision `flagged`).
    pub fn flagged(&self, detail: &str) {
        audit_event!(warn, self, "flagged", detail);
        self.log.append(AuditEntry {
            detail: Some(detail.to_owned()),
            ..self.entry("flagged")
        });
    }

    /// Records a successful admin change.
    pub fn changed(&self, detail: &str) {
        audit_event!(info, self, "done", detail);
        self.log.append(AuditEntry {
            detail: Some(detail.to_owned()),
            ..self.entry("done")
        });
    }
}
