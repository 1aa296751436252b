//! Key rotation for the Admin service: list the schedule, rotate now,
//! retire a key (and revoke everything it signed).

use credbroker_proto::v1::{self as pb, ListKeysResponse, RetireKeyRequest, RetireKeyResponse};
use tonic::Status;

use super::revoke_api;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::keys::{KeyCommandError, KeyInfo};
use crate::model::unix_now;
use crate::revocation::Target;
use crate::store::{KeyKind, NewRevocation};

/// `x509` or `jwt`.
pub(super) fn kind_name(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::X509Ca => "x509",
        KeyKind::AdminCa => "admin",
        _ => "jwt",
    }
}

/// Parses `x509`, `jwt`, or empty (both).
pub(super) fn parse_kind(kind: &str) -> Result<Option<KeyKind>, Status> {
    match kind.trim() {
        "" => Ok(None),
        "x509" => Ok(Some(KeyKind::X509Ca)),
        "jwt" => Ok(Some(KeyKind::JwtSigning)),
        "admin" => Ok(Some(KeyKind::AdminCa)),
        other => Err(Status::invalid_argument(format!(
            "key kind {other:?} is not x509, jwt or admin"
        ))),
    }
}

fn finite(t: i64) -> i64 {
    if t == i64::MAX { 0 } else { t }
}

pub(super) fn to_proto(k: &KeyInfo) -> pb::KeyInfo {
    pb::KeyInfo {
        env: k.env.clone(),
        kind: kind_name(k.kind).to_owned(),
        id: k.id.clone(),
        state: k.state.as_str().to_owned(),
        created_at: k.created_at,
        activates_at: k.activates_at,
        unpublish_at: finite(k.unpublish_at),
        not_after: finite(k.not_after),
        retire_reason: k.retire_reason.clone().unwrap_or_default(),
    }
}

fn command_error(e: KeyCommandError) -> Status {
    match e {
        KeyCommandError::UnknownEnv(_) | KeyCommandError::UnknownKey { .. } => {
            Status::not_found(e.to_string())
        }
        KeyCommandError::AlreadyRetired(_) => Status::failed_precondition(e.to_string()),
        KeyCommandError::Key(e) => super::status::key(e),
    }
}

/// Every rotating key of `env` (all environments when empty).
pub(crate) fn list(broker: &Broker, env: &str) -> Result<ListKeysResponse, Status> {
    let env = env.trim();
    if !env.is_empty() && !broker.envs.iter().any(|e| e.name.as_str() == env) {
        return Err(Status::not_found(format!(
            "environment {env} is not served here"
        )));
    }
    let keys = broker.keys.list((!env.is_empty()).then_some(env));
    Ok(ListKeysResponse {
        keys: keys.iter().map(to_proto).collect(),
    })
}

/// Prepares and activates new keys of `env` now.
pub(super) async fn rotate(
    broker: &Broker,
    env: &str,
    kind: &str,
    audit: &mut AuditRecord,
) -> Result<ListKeysResponse, Status> {
    let kind = parse_kind(kind)?;
    if kind != Some(KeyKind::AdminCa) {
        if env.trim().is_empty() {
            return Err(Status::invalid_argument(
                "an environment is required (or --kind admin for the admin CA)",
            ));
        }
        audit.env = Some(env.to_owned());
    }
    let made = broker
        .keys
        .rotate(env, kind, unix_now())
        .await
        .map_err(command_error)?;
    let ids: Vec<&str> = made.iter().map(|(_, id)| id.as_str()).collect();
    audit.changed(&format!("rotated: now signing with {}", ids.join(", ")));
    let listed = broker.keys.list(None);
    Ok(ListKeysResponse {
        keys: listed
            .iter()
            .filter(|k| ids.contains(&k.id.as_str()))
            .map(to_proto)
            .collect(),
    })
}

/// Retires a key and revokes everything it signed; both are durable before
/// this returns.
pub(super) async fn retire(
    broker: &Broker,
    req: RetireKeyRequest,
    audit: &mut AuditRecord,
) -> Result<RetireKeyResponse, Status> {
    let reason = super::limits::reason(&req.reason)?;
    super::limits::length("key id", &req.id, super::limits::MAX_FIELD)?;
    super::limits::length("environment", &req.env, super::limits::MAX_FIELD)?;
    audit.env = Some(req.env.clone());
    let now = unix_now();
    let retired = broker
        .keys
        .retire(&req.env, req.id.trim(), &reason, req.now, now)
        .await
        .map_err(command_error)?;
    let operator = audit.actor.clone().unwrap_or_else(|| "admin".to_owned());
    let revocation = revoke_api::commit(
        broker,
        NewRevocation {
            target: Target::SigningKey(retired.id.clone()),
            reason: format!("signing key retired: {reason}"),
            operator,
            revoked_at: now,
            covers_until: retired.signed_until,
            identities: Vec::new(),
        },
    )
    .await?;
    audit.changed(&format!(
        "retired {} key {} (revocation seq {}): {reason}",
        kind_name(retired.kind),
        retired.id,
        revocation.seq
    ));
    let key = broker
        .keys
        .list(Some(&req.env))
        .into_iter()
        .find(|k| k.id == retired.id)
        .map(|k| to_proto(&k));
    Ok(RetireKeyResponse {
        key,
        replaced_by: retired.replaced_by.unwrap_or_default(),
        revocation: Some(revoke_api::to_proto(&revocation)),
    })
}
