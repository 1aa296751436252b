//! A named operator's certificate as stored.

use crate::policy::roles::Role;

/// One certificate the broker issued to a named operator, bound by serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRecord {
    /// Upper-case hex serial of the certificate.
    pub serial: String,
    /// The operator's name (its certificate's `credbroker-operator://NAME`).
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was issued (unix seconds).
    pub created_at: i64,
    /// The certificate's NotAfter (unix seconds).
    pub expires_at: i64,
    /// Audit actor that created it.
    pub created_by: String,
    /// When it was revoked (unix seconds).
    pub revoked_at: Option<i64>,
    /// Audit actor that revoked it.
    pub revoked_by: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
}

impl OperatorRecord {
    /// `active`, `revoked` or `expired` at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "active"
        }
    }
}
