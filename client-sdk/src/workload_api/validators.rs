//! ValidateJWTSVID for the agent: verifiers per audience, bounded, sharing
//! one revocation stream to the broker.

use std::collections::HashMap;
use std::sync::Arc;

use credbroker_proto::spiffe::{ValidateJwtsvidRequest, ValidateJwtsvidResponse};
use tonic::Status;

use super::json_to_prost;
use crate::client::{Client, WorkloadClient};
use crate::verifier::JwtVerifier;

/// Audiences ValidateJWTSVID keeps a verifier for; past this, one is
/// dropped for each new one (callers name audiences, so they are bounded
/// here, not by them).
const MAX_AUDIENCES: usize = 256;

/// ValidateJWTSVID: one verifier per audience (at most [`MAX_AUDIENCES`]);
/// only the first follows the broker's revocation stream, and every answer
/// is checked against it, so new audiences never open new broker streams.
#[derive(Clone, Default)]
pub(crate) struct Validators {
    by_audience: Arc<tokio::sync::Mutex<HashMap<String, JwtVerifier>>>,
    /// The verifier whose revocation list follows the broker.
    following: Arc<tokio::sync::Mutex<Option<JwtVerifier>>>,
}

impl Validators {
    /// Verifies `req.svid` for `req.audience` against `env`'s keys.
    /// `session` (an authenticated broker connection, asked for only when a
    /// new verifier is made) lets that verifier follow revocations.
    pub(crate) async fn validate<F>(
        &self,
        client: &Client,
        env: &str,
        session: impl FnOnce() -> F,
        req: ValidateJwtsvidRequest,
    ) -> Result<ValidateJwtsvidResponse, Status>
    where
        F: std::future::Future<Output = Option<WorkloadClient>>,
    {
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let verifier = {
            let mut verifiers = self.by_audience.lock().await;
            match verifiers.get(&req.audience) {
                Some(v) => v.clone(),
                None => {
                    let v = JwtVerifier::new(client, env, &req.audience)
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    let mut following = self.following.lock().await;
                    if following.is_none()
                        && let Some(session) = session().await
                    {
                        // Validation honours revocations as they happen:
                        // one stream for every audience.
                        std::mem::drop(v.follow_revocations(session));
                        *following = Some(v.clone());
                    }
                    drop(following);
                    if verifiers.len() >= MAX_AUDIENCES
                        && let Some(old) = verifiers.keys().next().cloned()
                    {
                        verifiers.remove(&old);
                    }
                    verifiers.insert(req.audience.clone(), v.clone());
                    v
                }
            }
        };
        let verified = verifier
            .verify(&req.svid)
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(reason) = self.revoked(env, &verified).await {
            return Err(Status::invalid_argument(format!(
                "the JWT-SVID was revoked: {reason}"
            )));
        }
        let claims = match json_to_prost(&verified.claims).kind {
            Some(prost_types::value::Kind::StructValue(s)) => Some(s),
            _ => None,
        };
        Ok(ValidateJwtsvidResponse {
            spiffe_id: verified.spiffe_id,
            claims,
        })
    }
}

impl Validators {
    /// Why the following verifier's revocation list refuses `jwt`, if it
    /// does (the verifier that checked it may not follow revocations).
    async fn revoked(&self, env: &str, jwt: &crate::verifier::VerifiedJwt) -> Option<String> {
        let following = self.following.lock().await;
        let name = jwt.spiffe_id.strip_prefix("spiffe://")?.split_once('/')?.1;
        let iat = jwt.claims["iat"].as_i64()?;
        following
            .as_ref()?
            .revocations()
            .jwt_revoked(&jwt.jti, &format!("{env}/{name}"), env, iat)
    }
}
