//! Attestation: proving what a workload is. One file per method, all behind
//! [`Attestor`].
//!
//! Attestation happens in two steps so that single-use evidence is spent
//! only when the whole request will succeed: [`Attestor::verify`] checks the
//! evidence without changing anything, the caller then checks the identity
//! and the request, and [`Attestor::commit`] spends the evidence.

mod aws_iid;
mod config;
mod join_token;
mod jwks;
mod jwt_evidence;
mod kubernetes;
mod oidc;
mod registry;

use std::collections::BTreeSet;

use async_trait::async_trait;
use thiserror::Error;

pub use config::{AttestorConfig, AttestorKind, RESERVED_PREFIX, validate_attestors};
pub use join_token::{JoinToken, JoinTokenAttestor};
pub use registry::{AttestorInfo, AttestorRegistry};

use crate::model::{EnvName, IdentityKey, Selector};
use crate::store::StoreError;

/// Evidence a workload presents. Secrets are never printed.
#[derive(Clone)]
pub enum Evidence {
    /// A join token (the secret itself; never logged).
    JoinToken(String),
    /// A Kubernetes projected service-account token.
    KubernetesToken(String),
    /// An OIDC ID token.
    OidcToken(String),
    /// An AWS instance identity document and its base64 signature.
    AwsIid {
        /// The document bytes, as signed.
        document: Vec<u8>,
        /// Base64 RSA PKCS#1 v1.5 SHA-256 signature.
        signature: String,
    },
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::JoinToken(_) => "JoinToken(<redacted>)",
            Self::KubernetesToken(_) => "KubernetesToken(<redacted>)",
            Self::OidcToken(_) => "OidcToken(<redacted>)",
            Self::AwsIid { .. } => "AwsIid(..)",
        })
    }
}

/// Facts about the request an attestor may bind evidence to.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// Hex SHA-256 of the CSR's public key (SubjectPublicKeyInfo).
    pub key_sha256: String,
}

/// What verified evidence proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Exactly this identity (join tokens).
    Identity(IdentityKey),
    /// Platform facts: whichever identity of `env` all of whose selectors
    /// are in `selectors` (SPIRE semantics).
    Selectors {
        /// The attestor's name (the selector prefix).
        attestor: String,
        /// The environment the attestor serves.
        env: EnvName,
        /// `NAME:KEY` = value facts the platform vouched for.
        selectors: BTreeSet<Selector>,
    },
}

/// What `commit` must make durable for single-use evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Nothing (reusable evidence).
    Nothing,
    /// One use of a join token (its hash).
    JoinToken([u8; 32]),
    /// A single-use token id, remembered until `exp`.
    Jti {
        /// Attestor name.
        attestor: String,
        /// The token's `jti`.
        jti: String,
        /// Until when it must be remembered.
        exp: i64,
    },
    /// An instance bound to the key it first attested with.
    Instance {
        /// Attestor name.
        attestor: String,
        /// EC2 instance id.
        instance_id: String,
        /// Hex SHA-256 of the attesting key.
        key_sha256: String,
    },
}

/// Evidence that verified.
#[derive(Debug, Clone)]
pub struct Attested {
    /// What it proves.
    pub binding: Binding,
    /// Attestation method (`join_token`, `kubernetes`, `oidc`, `aws_iid`).
    pub method: &'static str,
    /// A non-secret name for the evidence, safe for logs (hash prefix,
    /// `jti`/`sub`, instance id).
    pub evidence_id: String,
    pub(crate) spend: Spend,
}

/// Why evidence was refused.
#[derive(Debug, Error)]
pub enum AttestError {
    /// Evidence is missing or not of a supported kind.
    #[error("{0}")]
    Invalid(String),
    /// The evidence is unknown to the broker.
    #[error("{method} not recognized")]
    Unknown {
        /// Method.
        method: &'static str,
    },
    /// The evidence expired.
    #[error("{method} {evidence_id} expired")]
    Expired {
        /// Method.
        method: &'static str,
        /// Non-secret id.
        evidence_id: String,
        /// The identity the evidence was bound to (join tokens), so the
        /// refusal is found under that identity in the audit log.
        bound_to: Option<crate::model::IdentityKey>,
    },
    /// Single-use evidence was already used.
    #[error("{method} {evidence_id} was already used")]
    Spent {
        /// Method.
        method: &'static str,
        /// Non-secret id.
        evidence_id: String,
        /// The identity the evidence was bound to (join tokens), so the
        /// refusal is found under that identity in the audit log.
        bound_to: Option<crate::model::IdentityKey>,
    },
    /// Platform evidence failed a check; `why` names it.
    #[error("{attestor} ({method}) refused the evidence: {why}")]
    Rejected {
        /// Method.
        method: &'static str,
        /// Attestor name.
        attestor: String,
        /// Which check failed (`token expired`, `aud does not contain …`).
        why: String,
    },
    /// The evidence cannot be checked right now (issuer keys unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One attestation method.
#[async_trait]
pub trait Attestor: Send + Sync {
    /// The method name used in logs and audit (`join_token`).
    fn method(&self) -> &'static str;
    /// The configured name (the selector prefix; the method for join tokens).
    fn name(&self) -> &str {
        self.method()
    }
    /// Checks `evidence` for a request with `facts` at unix time `now`
    /// without spending it.
    async fn verify(
        &self,
        evidence: &Evidence,
        facts: &RequestFacts,
        now: i64,
    ) -> Result<Attested, AttestError>;
    /// Spends single-use evidence. Fails if another request spent it first.
    async fn commit(&self, attested: &Attested, now: i64) -> Result<(), AttestError>;
}
