//! Join tokens: random single-use secrets bound to one identity, created by
//! an operator, stored only as a SHA-256 hash, with a short TTL.

use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::{AttestError, Attested, Attestor, Binding, Evidence, RequestFacts, Spend};
use crate::model::IdentityKey;
use crate::store::{JoinTokenRecord, Store};

const METHOD: &str = "join_token";
/// Prefix that makes a join token recognizable (e.g. to secret scanners).
const PREFIX: &str = "cbjt_";

/// A freshly created join token: the secret (shown once) and its record.
pub struct JoinToken {
    /// The secret to hand to the workload.
    pub secret: String,
    /// What is stored.
    pub record: JoinTokenRecord,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &token_id(&self.record.hash))
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// Generates a 256-bit token for `identity`.
    pub fn generate(
        identity: IdentityKey,
        now: i64,
        ttl_seconds: i64,
        uses: u32,
    ) -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes)?;
        let secret = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let record = JoinTokenRecord {
            hash: hash(&secret),
            identity,
            created_at: now,
            expires_at: now + ttl_seconds,
            uses_left: uses,
        };
        Ok(Self { secret, record })
    }

    /// Non-secret name of this token for logs.
    pub fn id(&self) -> String {
        token_id(&self.record.hash)
    }
}

fn hash(secret: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// First 6 bytes of the hash, hex: enough to correlate, useless to attack.
pub fn token_id(hash: &[u8; 32]) -> String {
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Attests workloads by join token.
pub struct JoinTokenAttestor {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for JoinTokenAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinTokenAttestor")
    }
}

impl JoinTokenAttestor {
    /// An attestor over the tokens in `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

#[async_trait]
impl Attestor for JoinTokenAttestor {
    fn method(&self) -> &'static str {
        METHOD
    }

    async fn verify(
        &self,
        evidence: &Evidence,
        _facts: &RequestFacts,
        now: i64,
    ) -> Result<Attested, AttestError> {
        let Evidence::JoinToken(secret) = evidence else {
            return Err(AttestError::Invalid("not a join token".into()));
        };
        if secret.is_empty() || secret.len() > 256 {
            return Err(AttestError::Invalid(
                "join token is empty or too long".into(),
            ));
        }
        let hash = hash(secret);
        let evidence_id = token_id(&hash);
        let record = self
            .store
            .find_join_token(&hash)
            .await?
            .ok_or(AttestError::Unknown { method: METHOD })?;
        if record.uses_left == 0 {
            return Err(AttestError::Spent {
                method: METHOD,
                evidence_id,
                bound_to: Some(record.identity),
            });
        }
        if record.expires_at <= now {
            return Err(AttestError::Expired {
                method: METHOD,
                evidence_id,
                bound_to: Some(record.identity),
            });
        }
        Ok(Attested {
            binding: Binding::Identity(record.identity),
            method: METHOD,
            evidence_id,
            spend: Spend::JoinToken(hash),
        })
    }

    async fn commit(&self, attested: &Attested, now: i64) -> Result<(), AttestError> {
        let Spend::JoinToken(hash) = &attested.spend else {
            return Ok(());
        };
        if self.store.consume_join_token(hash, now).await? {
            Ok(())
        } else {
            // Lost a race with another request, or expired in between.
            Err(AttestError::Spent {
                method: METHOD,
                evidence_id: attested.evidence_id.clone(),
                bound_to: match &attested.binding {
                    Binding::Identity(key) => Some(key.clone()),
                    Binding::Selectors { .. } => None,
                },
            })
        }
    }
}
