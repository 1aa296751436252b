//! Generic OIDC ID tokens (GitHub Actions, GitLab CI, cloud identity
//! tokens): verified against the issuer's JWKS; every string claim becomes
//! a selector `NAME:CLAIM=VALUE`, nested objects flattened with `.`
//! (`NAME:repository`, `NAME:ref`, `NAME:job_workflow_ref`, …). With
//! `single_use`, each `jti` is remembered until its `exp` and replays are
//! refused.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::jwt_evidence::JwtIssuer;
use super::{AttestError, Attested, Attestor, Binding, Evidence, RequestFacts, Spend};
use crate::model::Selector;
use crate::store::Store;

const METHOD: &str = "oidc";
/// Deepest nesting flattened into selectors.
const MAX_DEPTH: usize = 4;

/// Attests workloads by an OIDC ID token.
#[derive(Debug)]
pub struct OidcAttestor {
    jwt: JwtIssuer,
    single_use: bool,
    store: Arc<dyn Store>,
}

impl OidcAttestor {
    /// An attestor over `jwt`'s issuer; with `single_use`, `jti`s are
    /// remembered in `store`.
    pub fn new(jwt: JwtIssuer, single_use: bool, store: Arc<dyn Store>) -> Self {
        Self {
            jwt,
            single_use,
            store,
        }
    }
}

/// Every string claim as `(dotted.path, value)`.
pub fn flatten(claims: &Map<String, Value>) -> Vec<(String, String)> {
    fn walk(prefix: &str, map: &Map<String, Value>, depth: usize, out: &mut Vec<(String, String)>) {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                Value::String(s) => out.push((key, s.clone())),
                Value::Object(m) if depth < MAX_DEPTH => walk(&key, m, depth + 1, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", claims, 0, &mut out);
    out
}

#[async_trait]
impl Attestor for OidcAttestor {
    fn method(&self) -> &'static str {
        METHOD
    }

    fn name(&self) -> &str {
        &self.jwt.name
    }

    async fn verify(
        &self,
        evidence: &Evidence,
        _facts: &RequestFacts,
        now: i64,
    ) -> Result<Attested, AttestError> {
        let Evidence::OidcToken(token) = evidence else {
            return Err(AttestError::Invalid("not an OIDC token".into()));
        };
        let verified = self.jwt.verify(METHOD, token, now).await?;
        let name = &self.jwt.name;
        let spend = if self.single_use {
            let jti = verified.jti.clone().ok_or_else(|| AttestError::Rejected {
                method: METHOD,
                attestor: name.clone(),
                why: "token has no jti, which single_use requires".into(),
            })?;
            if self.store.jti_spent(name, &jti, now).await? {
                return Err(AttestError::Spent {
                    method: METHOD,
                    evidence_id: verified.evidence_id(),
                    bound_to: None,
                });
            }
            Spend::Jti {
                attestor: name.clone(),
                jti,
                exp: verified.exp,
            }
        } else {
            Spend::Nothing
        };
        let selectors: BTreeSet<Selector> = flatten(&verified.claims)
            .into_iter()
            .map(|(k, value)| Selector {
                key: format!("{name}:{k}"),
                value,
            })
            .collect();
        Ok(Attested {
            binding: Binding::Selectors {
                attestor: name.clone(),
                env: self.jwt.env.clone(),
                selectors,
            },
            method: METHOD,
            evidence_id: verified.evidence_id(),
            spend,
        })
    }

    async fn commit(&self, attested: &Attested, now: i64) -> Result<(), AttestError> {
        let Spend::Jti { attestor, jti, exp } = &attested.spend else {
            return Ok(());
        };
        if self.store.spend_jti(attestor, jti, *exp, now).await? {
            Ok(())
        } else {
            Err(AttestError::Spent {
                method: METHOD,
                evidence_id: attested.evidence_id.clone(),
                bound_to: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_string_claims_only() {
        let claims = serde_json::json!({
            "repository": "acme/api", "run_number": 7, "aud": ["a"],
            "nested": {"x": "1", "deeper": {"y": "2"}}
        });
        let mut got = flatten(claims.as_object().unwrap());
        got.sort();
        assert_eq!(
            got,
            [
                ("nested.deeper.y".to_owned(), "2".to_owned()),
                ("nested.x".to_owned(), "1".to_owned()),
                ("repository".to_owned(), "acme/api".to_owned()),
            ]
        );
    }
}
