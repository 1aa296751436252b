//! Attest: route the evidence to its attestor, verify it, resolve the one
//! identity it reaches (join token binding, or selector matching), check
//! the identity and the request, spend single-use evidence, then issue.

use std::sync::Arc;

use credbroker_proto::v1::attest_request::Evidence as ProtoEvidence;
use credbroker_proto::v1::{AttestRequest, AttestResponse, IdentityRef};
use tonic::{Request, Status};

use super::WorkloadService;
use crate::api::{limits, status};
use crate::attest::{AttestError, Attested, Binding, Evidence, RequestFacts};
use crate::audit::AuditRecord;
use crate::issue::{Confirmation, VerifiedCsr};
use crate::model::{Identity, IdentityKey, unix_now};
use crate::policy::{check_active, check_peer, selectors};

/// Notes in `audit` which evidence was refused and the identity it was
/// bound to, so `credbroker audit --identity E/N` answers "who reused my
/// token" (the owner knows the identity, not the caller).
fn refused(audit: &mut AuditRecord, e: AttestError) -> Status {
    if let AttestError::Spent {
        method,
        evidence_id,
        bound_to,
    }
    | AttestError::Expired {
        method,
        evidence_id,
        bound_to,
    } = &e
    {
        audit.evidence = Some(match audit.evidence.take() {
            Some(attestor) if attestor != *method => format!("{attestor} {evidence_id}"),
            _ => format!("{method}:{evidence_id}"),
        });
        if let Some(key) = bound_to {
            audit.identity = Some(key.to_string());
            audit.env = Some(key.env.to_string());
        }
    }
    status::attest(e)
}

/// The evidence method of an Attest request (the metrics label).
pub(super) fn method(request: &AttestRequest) -> &'static str {
    match request.evidence {
        Some(ProtoEvidence::JoinToken(_)) => "join_token",
        Some(ProtoEvidence::KubernetesToken(_)) => "kubernetes",
        Some(ProtoEvidence::OidcToken(_)) => "oidc",
        Some(ProtoEvidence::AwsIid(_)) => "aws_iid",
        None => "none",
    }
}

impl WorkloadService {
    pub(super) async fn attest_inner(
        &self,
        request: Request<AttestRequest>,
        audit: &mut AuditRecord,
    ) -> Result<AttestResponse, Status> {
        // Counted before the CSR or the evidence costs anything.
        limits::attest_jwts(&request.get_ref().jwts)?;
        let now = unix_now();
        audit.actor = Some("anonymous".into());
        let peer = request.remote_addr();
        let req = request.into_inner();
        let csr = VerifiedCsr::parse(&req.csr).map_err(status::csr)?;
        let evidence = match req.evidence {
            Some(ProtoEvidence::JoinToken(token)) => Evidence::JoinToken(token),
            Some(ProtoEvidence::KubernetesToken(token)) => Evidence::KubernetesToken(token),
            Some(ProtoEvidence::OidcToken(token)) => Evidence::OidcToken(token),
            Some(ProtoEvidence::AwsIid(iid)) => Evidence::AwsIid {
                document: iid.document,
                signature: iid.signature,
            },
            None => return Err(Status::invalid_argument("attestation evidence is required")),
        };
        let attestor = self
            .broker
            .attestors
            .route(&evidence)
            .map_err(status::attest)?;
        // Refusals from here on name the attestor that judged the evidence.
        audit.evidence = Some(if attestor.name() == attestor.method() {
            attestor.method().to_owned()
        } else {
            format!("{}:{}", attestor.method(), attestor.name())
        });
        let facts = RequestFacts {
            key_sha256: csr.key_sha256(),
        };
        let attested = attestor
            .verify(&evidence, &facts, now)
            .await
            .map_err(|e| refused(audit, e))?;
        audit.evidence = Some(match &attested.binding {
            Binding::Identity(_) => format!("{}:{}", attested.method, attested.evidence_id),
            Binding::Selectors { attestor, .. } => {
                format!("{}:{attestor} {}", attested.method, attested.evidence_id)
            }
        });
        if let Binding::Identity(key) = &attested.binding {
            // The evidence (a stored join token) names an identity that is
            // in the store, even if it was created on another broker
            // sharing it a moment ago and this one has not heard yet.
            self.broker
                .registry
                .get_or_load(key)
                .await
                .map_err(crate::api::status::store)?;
        }
        let identity = self.resolve(&attested, req.expected_identity.as_ref(), audit)?;
        audit.identity = Some(identity.key.to_string());
        audit.env = Some(identity.key.env.to_string());
        self.rates.sign_identity(&identity.key)?;
        check_active(&identity, now).map_err(status::policy)?;
        check_peer(&identity, peer).map_err(status::policy)?;
        let grants = self.grants(&identity, &req.jwts)?;
        let env = self
            .broker
            .keys
            .env(&identity.key.env)
            .ok_or_else(|| Status::internal("identity's environment has no keys"))?;
        // Everything checked: only now is single-use evidence spent.
        attestor
            .commit(&attested, now)
            .await
            .map_err(|e| refused(audit, e))?;
        let svid = self.svid(&env, &identity, &csr, now, audit)?;
        // JWTs issued with the first SVID are bound to it when required.
        let cnf = identity
            .require_binding
            .then(|| {
                svid.cert_chain
                    .first()
                    .map(|leaf| Confirmation::for_certificate(leaf))
            })
            .flatten();
        let jwts = grants
            .iter()
            .map(|g| self.mint_jwt(&env, &identity, g, cnf.clone(), now, audit))
            .collect::<Result<Vec<_>, _>>()?;
        self.note_issued(&identity, audit.peer, now);
        Ok(AttestResponse {
            identity: Some(IdentityRef {
                env: identity.key.env.to_string(),
                name: identity.key.name.to_string(),
            }),
            svid: Some(svid),
            trust_bundle: env.trust_bundle(),
            jwts,
        })
    }

    /// The one identity `attested` evidence reaches: the join token's own,
    /// or the single identity whose selectors the platform evidence all
    /// proves (`expected` picks among several).
    fn resolve(
        &self,
        attested: &Attested,
        expected: Option<&IdentityRef>,
        audit: &mut AuditRecord,
    ) -> Result<Arc<Identity>, Status> {
        let is_expected = |key: &IdentityKey| {
            expected.is_none_or(|e| e.env == key.env.as_str() && e.name == key.name.as_str())
        };
        match &attested.binding {
            Binding::Identity(key) => {
                audit.identity = Some(key.to_string());
                audit.env = Some(key.env.to_string());
                if !is_expected(key) {
                    let e = expected.expect("checked");
                    return Err(Status::permission_denied(format!(
                        "{} is bound to a different identity than {}/{}",
                        attested.method, e.env, e.name
                    )));
                }
                let identity = self.broker.registry.get(key).ok_or_else(|| {
                    Status::permission_denied(format!("identity {key} no longer exists"))
                })?;
                if !identity.selectors.is_empty() {
                    // Its selectors are what must vouch for it.
                    return Err(Status::permission_denied(format!(
                        "identity {key} has selectors; only platform evidence proving them can attest it"
                    )));
                }
                Ok(identity)
            }
            Binding::Selectors {
                attestor,
                env,
                selectors: proven,
            } => {
                audit.env = Some(env.to_string());
                let candidates = self.broker.registry.platform_candidates(env, proven);
                let matched = selectors::matching(&candidates, env, proven);
                let names = |ids: &[Arc<Identity>]| {
                    ids.iter()
                        .map(|i| i.key.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let chosen: Vec<Arc<Identity>> = matched
                    .iter()
                    .filter(|i| is_expected(&i.key))
                    .cloned()
                    .collect();
                let identity = match (chosen.as_slice(), expected) {
                    ([one], _) => Arc::clone(one),
                    ([], None) => {
                        return Err(Status::permission_denied(format!(
                            "no identity in {env} matches {}",
                            selectors::describe(proven)
                        )));
                    }
                    ([], Some(e)) => {
                        return Err(Status::permission_denied(format!(
                            "identity {}/{} is not matched by {} (matched: {})",
                            e.env,
                            e.name,
                            selectors::describe(proven),
                            if matched.is_empty() {
                                "none".to_owned()
                            } else {
                                names(&matched)
                            }
                        )));
                    }
                    (several, _) => {
                        return Err(Status::permission_denied(format!(
                            "several identities match the evidence of {attestor}: {}; name one with expected_identity",
                            names(several)
                        )));
                    }
                };
                let matched_selectors: Vec<String> = identity
                    .selectors
                    .iter()
                    .map(|s| format!("{}={}", s.key, s.value))
                    .collect();
                if let Some(ev) = audit.evidence.as_mut() {
                    ev.push_str(&format!(" matched=[{}]", matched_selectors.join(", ")));
                }
                Ok(identity)
            }
        }
    }
}
