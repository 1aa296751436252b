//! Join token creation for the Admin service.

use credbroker_proto::v1::{CreateJoinTokenRequest, CreateJoinTokenResponse};
use tonic::Status;

use super::admin::{identity_key, nonzero_secs};
use super::status;
use crate::attest::JoinToken;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::{IdentityStatus, unix_now};

/// Most uses one join token may carry.
const MAX_JOIN_TOKEN_USES: u32 = 1000;

/// Creates a join token for an active identity; only its hash is stored and
/// only a hash prefix reaches the audit log.
pub(super) async fn create(
    broker: &Broker,
    req: CreateJoinTokenRequest,
    audit: &mut AuditRecord,
) -> Result<CreateJoinTokenResponse, Status> {
    let key = identity_key(req.identity.as_ref())?;
    audit.identity = Some(key.to_string());
    audit.env = Some(key.env.to_string());
    let now = unix_now();
    let identity = broker
        .registry
        .get_or_load(&key)
        .await
        .map_err(status::store)?
        .ok_or_else(|| Status::not_found(format!("identity {key} not found")))?;
    if !identity.selectors.is_empty() {
        return Err(Status::failed_precondition(format!(
            "identity {key} has selectors; it is attested by its platform evidence, not by join token"
        )));
    }
    let state = identity.status(now);
    if state != IdentityStatus::Active {
        return Err(Status::failed_precondition(format!(
            "identity {key} is {state}; a join token for it would be useless"
        )));
    }
    let ttl = nonzero_secs(req.ttl_seconds).unwrap_or(broker.config.ttl.join_token_default);
    let ceiling = broker.config.ttl.join_token_ceiling;
    if ttl > ceiling {
        return Err(Status::invalid_argument(format!(
            "join token TTL {} exceeds the maximum of {}",
            crate::model::format_duration(ttl),
            crate::model::format_duration(ceiling)
        )));
    }
    let uses = if req.uses == 0 { 1 } else { req.uses };
    if uses > MAX_JOIN_TOKEN_USES {
        return Err(Status::invalid_argument(format!(
            "a join token may carry at most {MAX_JOIN_TOKEN_USES} uses"
        )));
    }
    let token = JoinToken::generate(key, now, ttl.as_secs() as i64, uses)
        .map_err(|_| Status::internal("random number generator failed"))?;
    broker
        .store
        .insert_join_token(&token.record)
        .await
        .map_err(status::store)?;
    audit.evidence = Some(format!("join_token:{}", token.id()));
    audit.changed(&format!(
        "expires_at={} uses={}",
        crate::model::rfc3339(token.record.expires_at),
        token.record.uses_left
    ));
    Ok(CreateJoinTokenResponse {
        token_id: token.id(),
        expires_at: token.record.expires_at,
        uses: token.record.uses_left,
        token: token.secret,
    })
}
