//! Issuing one credential inside a request: what a JWT may carry, the
//! signing step fenced against revocations in progress, and the audit
//! record held until the request commits it.

use credbroker_proto::v1::{JwtRequest, JwtSvid, X509Svid};
use tonic::Status;

use super::WorkloadService;
use crate::api::{limits, status};
use crate::audit::AuditRecord;
use crate::issue::{Confirmation, IssuedSvid, JwtSpec, VerifiedCsr, issue_svid, mint};
use crate::keys::EnvironmentKeys;
use crate::model::Identity;
use crate::policy::{JwtGrant, grant_jwt};
use crate::revocation::CredentialFacts;

impl WorkloadService {
    pub(in crate::api) fn grants(
        &self,
        identity: &Identity,
        requests: &[JwtRequest],
    ) -> Result<Vec<JwtGrant>, Status> {
        requests
            .iter()
            .map(|r| {
                limits::jwt_request(r)?;
                grant_jwt(
                    identity,
                    &r.audiences,
                    &r.scopes,
                    r.ttl_seconds,
                    self.broker.limits.floor,
                )
                .map_err(status::policy)
            })
            .collect()
    }

    pub(in crate::api) fn mint_jwt(
        &self,
        env: &EnvironmentKeys,
        identity: &Identity,
        grant: &JwtGrant,
        cnf: Option<Confirmation>,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<JwtSvid, Status> {
        let _signing = self.issuable(identity)?;
        let issuer = self.broker.issuer(identity.key.env.as_str());
        let key = env.signing_jwt(now).map_err(status::key)?;
        let minted = mint(
            key,
            JwtSpec {
                issuer: &issuer,
                spiffe_id: &identity.spiffe_id,
                env: &identity.key.env,
                audiences: &grant.audiences,
                scopes: &grant.scopes,
                ttl_seconds: grant.ttl_seconds,
                cnf,
            },
            now,
        )
        .map_err(status::key)?;
        self.born_revoked(identity, Some(&minted.claims.jti), None, key.kid(), now)?;
        audit.issued_jwt(&minted.claims.jti, &minted.claims.aud, minted.claims.exp);
        Ok(JwtSvid {
            token: minted.token,
            spiffe_id: minted.claims.sub,
            jti: minted.claims.jti,
            audiences: minted.claims.aud,
            scopes: grant.scopes.iter().map(ToString::to_string).collect(),
            expires_at: minted.claims.exp,
        })
    }

    /// Enters the signing step for `identity`: refused while a revocation
    /// covering it is being committed. Hold the guard until signed, so a
    /// revocation's `revoked_at` is read only after this issuance.
    fn issuable(
        &self,
        identity: &Identity,
    ) -> Result<Option<crate::revocation::order::IssuanceGuard<'_>>, Status> {
        let guard = self.broker.revocations.order.issuing();
        if let Some(target) =
            self.broker
                .revocations
                .order
                .pending_for(&identity.key, Some(&identity.owner), None)
        {
            return Err(Status::unavailable(format!(
                "a revocation of {target} is being committed; retry"
            )));
        }
        Ok(guard)
    }

    /// Refuses to hand out a credential that a revocation in force already
    /// covers (issued in the very second it took effect).
    fn born_revoked(
        &self,
        identity: &Identity,
        jti: Option<&str>,
        serial: Option<&str>,
        signed_by: &str,
        now: i64,
    ) -> Result<(), Status> {
        match self.broker.revocations.covers(&CredentialFacts {
            jti,
            serial,
            identity: &identity.key,
            owner: Some(&identity.owner),
            issued_at: now,
            signed_by: Some(signed_by),
        }) {
            Some(rev) => Err(Status::unavailable(format!(
                "{} was revoked a moment ago ({}); retry",
                rev.target, rev.reason
            ))),
            None => Ok(()),
        }
    }

    pub(in crate::api) fn svid(
        &self,
        env: &EnvironmentKeys,
        identity: &Identity,
        csr: &VerifiedCsr,
        now: i64,
        audit: &AuditRecord,
    ) -> Result<X509Svid, Status> {
        let _signing = self.issuable(identity)?;
        let ca = env.signing_ca(now).map_err(status::key)?;
        let IssuedSvid {
            chain,
            serial,
            expires_at,
        } = issue_svid(ca, csr, &identity.spiffe_id, identity.x509_ttl, now)
            .map_err(status::key)?;
        self.born_revoked(identity, None, Some(&serial), ca.id(), now)?;
        audit.issued_x509(&serial, expires_at);
        Ok(X509Svid {
            spiffe_id: identity.spiffe_id.to_string(),
            cert_chain: chain.into_iter().map(|c| c.to_vec()).collect(),
            serial,
            expires_at,
        })
    }
}
