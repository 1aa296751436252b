//! Disabling, enabling and retiring an identity: one code path for the
//! Admin RPCs and the web inventory's forms, so both check, change and
//! audit alike.

use tonic::Status;

use super::status;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::{IdentityKey, unix_now};
use crate::policy::{IdentityView, PolicyError};

/// A change of an identity's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityChange {
    /// No new credentials until enabled again.
    Disable,
    /// Credentials may be issued again (not for a retired identity).
    Enable,
    /// For good: never enabled again, its name stays reserved.
    Retire,
}

impl IdentityChange {
    /// The Admin RPC that makes this change (its role decides who may).
    pub fn rpc(self) -> &'static str {
        match self {
            Self::Disable => "DisableIdentity",
            Self::Enable => "EnableIdentity",
            Self::Retire => "RetireIdentity",
        }
    }

    /// The audit action.
    pub fn action(self) -> &'static str {
        match self {
            Self::Disable => "identity.disable",
            Self::Enable => "identity.enable",
            Self::Retire => "identity.retire",
        }
    }

    fn apply(self, id: &mut crate::model::Identity, now: i64) -> Result<(), PolicyError> {
        match self {
            // Disabling a retired identity changes nothing it could do: allowed.
            Self::Disable => id.enabled = false,
            Self::Enable => {
                if id.retired_at.is_some() {
                    return Err(PolicyError::Invalid(format!(
                        "identity {} is retired and cannot be re-enabled; create a new one",
                        id.key
                    )));
                }
                id.enabled = true;
            }
            Self::Retire => {
                if id.retired_at.is_none() {
                    id.retired_at = Some(now);
                }
                id.enabled = false;
            }
        }
        Ok(())
    }
}

/// Applies `change` to `key` and audits it on `audit` (whose actor the
/// caller has set) with `reason`; a refusal is audited too.
pub(crate) async fn apply(
    broker: &Broker,
    key: &IdentityKey,
    change: IdentityChange,
    reason: &str,
    audit: &mut AuditRecord,
) -> Result<IdentityView, Status> {
    audit.identity = Some(key.to_string());
    audit.env = Some(key.env.to_string());
    let now = unix_now();
    let result = async {
        broker
            .registry
            .update(key, now, |id| change.apply(id, now))
            .await
            .map_err(status::update)?;
        broker
            .registry
            .view(key, now)
            .ok_or_else(|| Status::not_found(format!("identity {key} not found")))
    }
    .await;
    match &result {
        Ok(_) => {
            let reason = reason.trim();
            audit.changed(if reason.is_empty() {
                "no reason given"
            } else {
                reason
            });
        }
        Err(e) => audit.denied(&status::reason(e)),
    }
    result
}
