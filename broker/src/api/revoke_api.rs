//! The revocation half of the Admin service.

use std::sync::Arc;

use credbroker_proto::v1::{self as pb, RevokeRequest, revoke_request};
use tonic::Status;

use super::{limits, status};
use crate::audit::{AuditFilter, AuditRecord};
use crate::broker::Broker;
use crate::model::{EnvName, IdentityKey, IdentityName, unix_now};
use crate::revocation::{Revocation, Target};
use crate::store::NewRevocation;

/// The stream form of `rev` for a subscriber that sees environment
/// `scope` only (`None`: every environment), or `None` when it concerns
/// only other environments. Owner revocations keep only the subscriber's
/// identities. JWT ids and serials carry no environment and are random:
/// they are sent to everyone, as a CRL would publish them.
pub(super) fn visible_in(rev: &Revocation, scope: Option<&EnvName>) -> Option<pb::Revocation> {
    let Some(env) = scope else {
        return Some(to_proto(rev));
    };
    let in_env = |key: &str| key.split_once('/').is_some_and(|(e, _)| e == env.as_str());
    let mut proto = to_proto(rev);
    match &rev.target {
        // Key ids are public (JWKS, bundles) and name their environment's key.
        Target::Jti(_) | Target::Serial(_) | Target::SigningKey(_) => {}
        Target::Env(e) if e != env => return None,
        Target::Env(_) => {}
        Target::Identity(key) if key.env != *env => return None,
        Target::Identity(_) | Target::Owner(_) => {
            proto.identities.retain(|k| in_env(k));
            if matches!(rev.target, Target::Owner(_)) && proto.identities.is_empty() {
                return None;
            }
        }
    }
    Some(proto)
}

/// The stream / API form of a revocation.
pub(crate) fn to_proto(r: &Revocation) -> pb::Revocation {
    pb::Revocation {
        seq: r.seq,
        kind: r.target.kind().to_owned(),
        value: r.target.value(),
        reason: r.reason.clone(),
        operator: r.operator.clone(),
        revoked_at: r.revoked_at,
        covers_until: r.covers_until,
        identities: r.identities.clone(),
    }
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// When the credential named by `filter` expires, from the audit log.
pub(super) async fn issued_expiry(
    broker: &Broker,
    filter: AuditFilter,
    what: &str,
) -> Result<i64, Status> {
    broker.audit.flush().await.map_err(status::audit)?;
    let entries = broker
        .store
        .query_audit(&AuditFilter {
            limit: 10,
            ..filter
        })
        .await
        .map_err(status::store)?;
    entries
        .iter()
        .find(|e| e.entry.decision == "issued")
        .and_then(|e| e.entry.expires_at)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no credential with {what} was issued by this broker"
            ))
        })
}

/// The longest lifetime (seconds) of anything the target's identities can
/// hold, from their stored TTLs — not today's configuration, which may have
/// been lowered since they were issued.
fn longest_lifetime(broker: &Broker, target: &Target, served: &[IdentityKey], now: i64) -> i64 {
    let identities: Vec<_> = match target {
        Target::Identity(key) => std::iter::once(key)
            .chain(served)
            .filter_map(|k| broker.registry.get(k))
            .collect(),
        Target::Env(env) => broker
            .registry
            .list(Some(env), None, now)
            .into_iter()
            .map(|v| std::sync::Arc::new(v.identity))
            .collect(),
        Target::Owner(owner) => broker
            .registry
            .list(None, Some(owner), now)
            .into_iter()
            .map(|v| std::sync::Arc::new(v.identity))
            .collect(),
        Target::Jti(_) | Target::Serial(_) | Target::SigningKey(_) => vec![],
    };
    identities
        .iter()
        .map(|id| id.jwt_ttl.max(id.x509_ttl).as_secs() as i64)
        .max()
        .unwrap_or(0)
}

/// Stores `new` and pushes it to every subscriber; durable before it
/// returns. An identical single-credential or key revocation already in
/// force is returned instead.
pub(super) async fn commit(broker: &Broker, new: NewRevocation) -> Result<Arc<Revocation>, Status> {
    // One revocation at a time from here to the broadcast: sequence numbers
    // come from the store, and subscribers rely on receiving them in order.
    let writer = broker.revocations.writer().await;
    if let Some(existing) = broker.revocations.find_exact(&new.target) {
        return Ok(existing);
    }
    let seq = broker
        .store
        .insert_revocation(&new)
        .await
        .map_err(status::store)?;
    // Through the store, not from `new`: revocations other brokers sharing
    // the store committed before this one are applied (and pushed) first,
    // so every subscriber sees one order.
    let applied = broker
        .revocations
        .catch_up_locked(broker.store.as_ref())
        .await
        .map_err(status::store)?;
    let rev = applied.into_iter().find(|r| r.seq == seq).ok_or_else(|| {
        Status::internal(format!("revocation #{seq} was stored but not read back"))
    })?;
    drop(writer);
    Ok(rev)
}

/// Revokes; the entry is committed before this returns. Revoking a JWT or
/// certificate that is already revoked returns the existing entry.
pub(crate) async fn revoke(
    broker: &Broker,
    req: RevokeRequest,
    audit: &mut AuditRecord,
) -> Result<pb::Revocation, Status> {
    // Sizes first: nothing below quotes an unbounded value.
    use revoke_request::Target as T;
    if let Some(T::Jti(v) | T::Serial(v) | T::Owner(v) | T::Env(v)) = &req.target {
        limits::length("revocation target", v, limits::MAX_FIELD)?;
    }
    let reason = limits::reason(&req.reason)?;
    let now = unix_now();
    let mut identities = Vec::new();
    let (target, covers_until) = match req.target {
        None => {
            return Err(Status::invalid_argument(
                "say what to revoke: jti, serial, identity, env or owner",
            ));
        }
        Some(revoke_request::Target::Jti(jti)) => {
            let jti = jti.trim().to_owned();
            if jti.is_empty() {
                return Err(Status::invalid_argument("jti must not be empty"));
            }
            let until = issued_expiry(
                broker,
                AuditFilter {
                    jti: Some(jti.clone()),
                    ..Default::default()
                },
                &format!("jti {jti}"),
            )
            .await?;
            (Target::Jti(jti), Some(until))
        }
        Some(revoke_request::Target::Serial(serial)) => {
            let serial = serial.trim().replace(':', "").to_ascii_uppercase();
            if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(Status::invalid_argument("serial must be hexadecimal"));
            }
            let until = issued_expiry(
                broker,
                AuditFilter {
                    serial: Some(serial.clone()),
                    ..Default::default()
                },
                &format!("serial {serial}"),
            )
            .await?;
            (Target::Serial(serial), Some(until))
        }
        Some(revoke_request::Target::Identity(r)) => {
            let key = IdentityKey {
                env: EnvName::new(&r.env).map_err(invalid)?,
                name: IdentityName::new(&r.name).map_err(invalid)?,
            };
            if broker.registry.get(&key).is_none() {
                return Err(Status::not_found(format!("identity {key} not found")));
            }
            // Revoking a node revokes what its agent holds for the
            // workloads it serves: their identities ride along, so every
            // verifier covers them without knowing who is whose parent.
            identities = broker
                .registry
                .children(&key)
                .iter()
                .map(|c| c.key.to_string())
                .collect();
            (Target::Identity(key), None)
        }
        Some(revoke_request::Target::Env(env)) => {
            let env = EnvName::new(&env).map_err(invalid)?;
            if broker.keys.env(&env).is_none() {
                return Err(Status::not_found(format!(
                    "environment {env} is not served here"
                )));
            }
            (Target::Env(env), None)
        }
        Some(revoke_request::Target::Owner(owner)) => {
            let owner = owner.trim().to_owned();
            identities = broker
                .registry
                .list(None, Some(&owner), now)
                .iter()
                .map(|v| v.identity.key.to_string())
                .collect();
            if identities.is_empty() {
                return Err(Status::not_found(format!(
                    "no identity is owned by {owner:?}"
                )));
            }
            (Target::Owner(owner), None)
        }
    };
    audit.identity = match &target {
        Target::Identity(key) => Some(key.to_string()),
        _ => None,
    };
    // Order, not a clock's second, decides coverage: from here no
    // credential of the target is issued until the revocation is in force,
    // and `revoked_at` is read only once every issuance already signing
    // has finished (see `revocation::order`).
    let served: Vec<IdentityKey> = identities
        .iter()
        .filter_map(|k| IdentityKey::parse(k).ok())
        .collect();
    let pending = broker
        .revocations
        .order
        .begin(target.clone(), served.clone());
    let revoked_at = broker.revocations.order.fence();
    // A group revocation covers everything its identities hold; nothing
    // they were issued outlives their own stored lifetimes.
    let covers_until = covers_until
        .unwrap_or_else(|| revoked_at + longest_lifetime(broker, &target, &served, revoked_at));
    let operator = audit.actor.clone().unwrap_or_else(|| "admin".to_owned());
    let rev = commit(
        broker,
        NewRevocation {
            target,
            reason,
            operator,
            revoked_at,
            covers_until,
            identities,
        },
    )
    .await?;
    if let Target::Identity(key) = &rev.target {
        // Covered credentials are already refused; this stops new ones
        // until an operator re-enables the identity. The pending mark stays
        // until then, so nothing slips in between.
        broker
            .registry
            .update(key, now, |id| {
                id.enabled = false;
                Ok(())
            })
            .await
            .map_err(status::update)?;
    }
    drop(pending);
    audit.changed(&format!(
        "revoked {} (seq {}): {}",
        rev.target, rev.seq, rev.reason
    ));
    Ok(to_proto(&rev))
}
