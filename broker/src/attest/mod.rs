//! Attestation: proving what a workload is. One file per method, all behind
//! [`Attestor`].
//!
//! Attestation happens in two steps so that single-use evidence is spent
//! only when the whole request will succeed: [`Attestor::verify`] checks the
//! evidence without changing anything, the caller then checks the identity
//! and the request, and [`Attestor::commit`] spends the evidence.

mod join_token;

use async_trait::async_trait;
use thiserror::Error;

pub use join_token::{JoinToken, JoinTokenAttestor};

use crate::model::IdentityKey;
use crate::store::StoreError;

/// Evidence a workload presents.
#[derive(Clone)]
pub enum Evidence {
    /// A join token (the secret itself; never logged).
    JoinToken(String),
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
        }
    }
}

/// Evidence that verified, naming the identity it proves.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The identity the evidence is bound to.
    pub identity: IdentityKey,
    /// Attestation method (`join_token`, …).
    pub method: &'static str,
    /// A non-secret name for the evidence, safe for logs (hash prefix).
    pub evidence_id: String,
    spend: Option<[u8; 32]>,
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
    },
    /// Single-use evidence was already used.
    #[error("{method} {evidence_id} was already used")]
    Spent {
        /// Method.
        method: &'static str,
        /// Non-secret id.
        evidence_id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One attestation method.
#[async_trait]
pub trait Attestor: Send + Sync {
    /// The method name used in logs and audit (`join_token`).
    fn method(&self) -> &'static str;
    /// Checks `evidence` at unix time `now` without spending it.
    async fn verify(&self, evidence: &Evidence, now: i64) -> Result<Attested, AttestError>;
    /// Spends single-use evidence. Fails if another request spent it first.
    async fn commit(&self, attested: &Attested, now: i64) -> Result<(), AttestError>;
}
