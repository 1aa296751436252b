//! Kubernetes projected service-account tokens: a JWT signed by the
//! cluster's service-account issuer, verified against its JWKS, carrying
//! the pod's namespace, service account, pod and node in `kubernetes.io`.
//!
//! Selectors: `NAME:ns`, `NAME:sa`, `NAME:pod`, `NAME:pod-uid`, `NAME:node`
//! and `NAME:sub`.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::Value;

use super::jwt_evidence::JwtIssuer;
use super::{AttestError, Attested, Attestor, Binding, Evidence, RequestFacts, Spend};
use crate::model::Selector;

const METHOD: &str = "kubernetes";

/// Attests pods by their projected service-account token.
#[derive(Debug)]
pub struct KubernetesAttestor {
    jwt: JwtIssuer,
}

impl KubernetesAttestor {
    /// An attestor over `jwt`'s issuer and keys.
    pub fn new(jwt: JwtIssuer) -> Self {
        Self { jwt }
    }
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

#[async_trait]
impl Attestor for KubernetesAttestor {
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
        let Evidence::KubernetesToken(token) = evidence else {
            return Err(AttestError::Invalid("not a Kubernetes token".into()));
        };
        let verified = self.jwt.verify(METHOD, token, now).await?;
        let reject = |why: &str| AttestError::Rejected {
            method: METHOD,
            attestor: self.jwt.name.clone(),
            why: why.to_owned(),
        };
        let k8s = verified
            .claims
            .get("kubernetes.io")
            .filter(|v| v.is_object())
            .ok_or_else(|| {
                reject("token has no kubernetes.io claim (not a projected service-account token)")
            })?;
        let name = &self.jwt.name;
        let mut selectors = BTreeSet::new();
        let mut add = |key: &str, value: Option<&str>| {
            if let Some(value) = value {
                selectors.insert(Selector {
                    key: format!("{name}:{key}"),
                    value: value.to_owned(),
                });
            }
        };
        let ns = text(k8s, &["namespace"]);
        let sa = text(k8s, &["serviceaccount", "name"]);
        if ns.is_none() || sa.is_none() {
            return Err(reject(
                "kubernetes.io claim lacks namespace or serviceaccount.name",
            ));
        }
        add("ns", ns);
        add("sa", sa);
        add("pod", text(k8s, &["pod", "name"]));
        add("pod-uid", text(k8s, &["pod", "uid"]));
        add("node", text(k8s, &["node", "name"]));
        add("sub", verified.sub.as_deref());
        Ok(Attested {
            binding: Binding::Selectors {
                attestor: name.clone(),
                env: self.jwt.env.clone(),
                selectors,
            },
            method: METHOD,
            evidence_id: verified.evidence_id(),
            spend: Spend::Nothing,
        })
    }

    async fn commit(&self, _attested: &Attested, _now: i64) -> Result<(), AttestError> {
        // Kubelet tokens are reused until rotated; nothing to spend.
        Ok(())
    }
}
