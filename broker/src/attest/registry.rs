//! The attestors a broker runs, built once from `[[attestors]]`, and the
//! routing of evidence to them: join tokens to the join-token attestor,
//! JWTs by their `iss` (matched exactly; nothing else is read before the
//! signature), instance identity documents to the `aws_iid` attestor whose
//! certificate verifies them.
//!
//! Adding a method: one file implementing [`Attestor`], one arm in
//! [`AttestorRegistry::build`].

use std::collections::HashMap;
use std::sync::Arc;

use super::aws_iid::AwsIidAttestor;
use super::config::{AttestorConfig, AttestorKind};
use super::jwt_evidence::{JwtIssuer, unverified_issuer};
use super::kubernetes::KubernetesAttestor;
use super::oidc::OidcAttestor;
use super::{AttestError, Attestor, Evidence, JoinTokenAttestor};
use crate::config::ConfigError;
use crate::model::EnvName;
use crate::store::Store;

/// Longest issuer echoed back in a refusal.
const MAX_ECHO: usize = 200;

/// A configured attestor as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestorInfo {
    /// Name (selector prefix).
    pub name: String,
    /// Method.
    pub kind: AttestorKind,
    /// Environment it attests for.
    pub env: EnvName,
}

/// Every attestor of this broker.
pub struct AttestorRegistry {
    join_tokens: JoinTokenAttestor,
    kubernetes: HashMap<String, Arc<KubernetesAttestor>>,
    oidc: HashMap<String, Arc<OidcAttestor>>,
    aws: Vec<Arc<AwsIidAttestor>>,
    infos: Vec<AttestorInfo>,
}

impl std::fmt::Debug for AttestorRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestorRegistry")
            .field("attestors", &self.infos)
            .finish_non_exhaustive()
    }
}

impl AttestorRegistry {
    /// Builds every configured attestor (tables already validated) plus the
    /// join-token attestor, and starts loading JWKS (failures only logged).
    pub async fn build(
        configs: &[AttestorConfig],
        store: Arc<dyn Store>,
    ) -> Result<Self, ConfigError> {
        let mut registry = Self {
            join_tokens: JoinTokenAttestor::new(Arc::clone(&store)),
            kubernetes: HashMap::new(),
            oidc: HashMap::new(),
            aws: Vec::new(),
            infos: Vec::new(),
        };
        for c in configs {
            match c.kind {
                AttestorKind::Kubernetes => {
                    let jwt = JwtIssuer::from_config(c)?;
                    jwt.preload();
                    registry.kubernetes.insert(
                        jwt.policy.issuer.clone(),
                        Arc::new(KubernetesAttestor::new(jwt)),
                    );
                }
                AttestorKind::Oidc => {
                    let jwt = JwtIssuer::from_config(c)?;
                    jwt.preload();
                    registry.oidc.insert(
                        jwt.policy.issuer.clone(),
                        Arc::new(OidcAttestor::new(jwt, c.single_use, Arc::clone(&store))),
                    );
                }
                AttestorKind::AwsIid => registry.aws.push(Arc::new(AwsIidAttestor::from_config(
                    c,
                    Arc::clone(&store),
                )?)),
            }
            registry.infos.push(AttestorInfo {
                name: c.name.clone(),
                kind: c.kind,
                env: EnvName::new(&c.environment)?,
            });
        }
        Ok(registry)
    }

    /// The configured platform attestors, in config order.
    pub fn infos(&self) -> &[AttestorInfo] {
        &self.infos
    }

    /// The join-token attestor.
    pub fn join_tokens(&self) -> &JoinTokenAttestor {
        &self.join_tokens
    }

    /// The attestor that must check `evidence`, or why there is none.
    pub fn route(&self, evidence: &Evidence) -> Result<&dyn Attestor, AttestError> {
        let by_issuer = |token: &str, kind: &str| -> Result<String, AttestError> {
            unverified_issuer(token).map_err(|e| AttestError::Invalid(format!("{kind} token: {e}")))
        };
        let no_attestor = |kind: &str, iss: &str| {
            let iss: String = iss.chars().take(MAX_ECHO).collect();
            AttestError::Rejected {
                method: "routing",
                attestor: "broker".into(),
                why: format!("no {kind} attestor is configured for issuer {iss:?}"),
            }
        };
        match evidence {
            Evidence::JoinToken(_) => Ok(&self.join_tokens),
            Evidence::KubernetesToken(token) => {
                let iss = by_issuer(token, "kubernetes")?;
                self.kubernetes
                    .get(&iss)
                    .map(|a| a.as_ref() as &dyn Attestor)
                    .ok_or_else(|| no_attestor("kubernetes", &iss))
            }
            Evidence::OidcToken(token) => {
                let iss = by_issuer(token, "oidc")?;
                self.oidc
                    .get(&iss)
                    .map(|a| a.as_ref() as &dyn Attestor)
                    .ok_or_else(|| no_attestor("oidc", &iss))
            }
            Evidence::AwsIid {
                document,
                signature,
            } => {
                if self.aws.is_empty() {
                    return Err(AttestError::Rejected {
                        method: "routing",
                        attestor: "broker".into(),
                        why: "no aws_iid attestor is configured".into(),
                    });
                }
                // The first whose certificate verifies; if none does, the
                // first one refuses it with the reason.
                Ok(self
                    .aws
                    .iter()
                    .find(|a| a.signature_verifies(document, signature))
                    .unwrap_or(&self.aws[0])
                    .as_ref())
            }
        }
    }
}
