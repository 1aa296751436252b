//! AWS EC2 instance identity documents: the JSON document the instance
//! metadata service serves, with its RSA signature (PKCS#1 v1.5, SHA-256:
//! the base64 `signature` form), verified against the AWS public
//! certificate(s) in `certificate_file`.
//!
//! Selectors: `NAME:account`, `NAME:region`, `NAME:instance-id`,
//! `NAME:image-id`, `NAME:az`. By default an instance is bound to the first
//! key it attests with (SPIRE's default): a copied document attests nothing
//! from another key.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::config::{AttestorConfig, DEFAULT_MAX_DOCUMENT_AGE};
use super::{AttestError, Attested, Attestor, Binding, Evidence, RequestFacts, Spend};
use crate::config::ConfigError;
use crate::model::{EnvName, Selector};
use crate::store::Store;

const METHOD: &str = "aws_iid";
/// Largest document accepted.
const MAX_DOCUMENT_BYTES: usize = 8 * 1024;

/// The fields of an instance identity document used here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    account_id: String,
    region: String,
    instance_id: String,
    image_id: String,
    availability_zone: String,
    pending_time: String,
}

/// Attests EC2 instances by their identity document.
#[derive(Debug)]
pub struct AwsIidAttestor {
    name: String,
    env: EnvName,
    /// RSA public keys (PKCS#1 RSAPublicKey DER) of the AWS certificates.
    keys: Vec<Vec<u8>>,
    max_age: Option<Duration>,
    allow_reattestation: bool,
    store: Arc<dyn Store>,
}

impl AwsIidAttestor {
    /// Builds the attestor of a validated table, reading its certificates.
    pub fn from_config(c: &AttestorConfig, store: Arc<dyn Store>) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("attestor {:?}: {why}", c.name));
        let path = c.certificate_file.as_ref().expect("validated");
        let pem = std::fs::read(path).map_err(|e| {
            bad(format!(
                "cannot read certificate_file {}: {e}",
                path.display()
            ))
        })?;
        let mut keys = Vec::new();
        for der in CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| bad(format!("{}: {e}", path.display())))?;
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| bad(format!("{}: not a certificate: {e}", path.display())))?;
            let spki = &cert.tbs_certificate.subject_pki;
            if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
                return Err(bad(format!(
                    "{}: only RSA certificates are supported (the base64 signature form)",
                    path.display()
                )));
            }
            keys.push(spki.subject_public_key.data.to_vec());
        }
        if keys.is_empty() {
            return Err(bad(format!("{} holds no PEM certificate", path.display())));
        }
        let max_age = c.max_document_age.unwrap_or(DEFAULT_MAX_DOCUMENT_AGE);
        Ok(Self {
            name: c.name.clone(),
            env: EnvName::new(&c.environment)?,
            keys,
            max_age: (!max_age.is_zero()).then_some(max_age),
            allow_reattestation: c.allow_reattestation,
            store,
        })
    }

    fn reject(&self, why: impl Into<String>) -> AttestError {
        AttestError::Rejected {
            method: METHOD,
            attestor: self.name.clone(),
            why: why.into(),
        }
    }

    /// Whether `signature` over `document` verifies with one of the
    /// configured certificates (used to route the evidence).
    pub fn signature_verifies(&self, document: &[u8], signature: &str) -> bool {
        let Ok(sig) = STANDARD.decode(signature.split_whitespace().collect::<String>()) else {
            return false;
        };
        self.keys.iter().any(|k| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, k)
                .verify(document, &sig)
                .is_ok()
        })
    }
}

#[async_trait]
impl Attestor for AwsIidAttestor {
    fn method(&self) -> &'static str {
        METHOD
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn verify(
        &self,
        evidence: &Evidence,
        facts: &RequestFacts,
        now: i64,
    ) -> Result<Attested, AttestError> {
        let Evidence::AwsIid {
            document,
            signature,
        } = evidence
        else {
            return Err(AttestError::Invalid(
                "not an instance identity document".into(),
            ));
        };
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(self.reject(format!(
                "document is longer than {MAX_DOCUMENT_BYTES} bytes"
            )));
        }
        if !self.signature_verifies(document, signature) {
            return Err(self.reject("document signature does not verify"));
        }
        // Signed by AWS: now the document may be read.
        let doc: Document = serde_json::from_slice(document).map_err(|e| {
            self.reject(format!(
                "document is not an instance identity document: {e}"
            ))
        })?;
        let evidence_id = format!("instance={} account={}", doc.instance_id, doc.account_id);
        if let Some(max_age) = self.max_age {
            let pending = humantime::parse_rfc3339_weak(&doc.pending_time)
                .map_err(|_| self.reject("document pendingTime is not a time"))?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if now - pending > max_age.as_secs() as i64 {
                return Err(self.reject(format!(
                    "document is older than max_document_age {} (pendingTime {})",
                    crate::model::format_duration(max_age),
                    doc.pending_time
                )));
            }
        }
        if !self.allow_reattestation
            && let Some(bound) = self
                .store
                .instance_key(&self.name, &doc.instance_id)
                .await?
            && bound != facts.key_sha256
        {
            return Err(self.reject(format!(
                "instance {} already attested with another key",
                doc.instance_id
            )));
        }
        let name = &self.name;
        let selectors: BTreeSet<Selector> = [
            ("account", &doc.account_id),
            ("region", &doc.region),
            ("instance-id", &doc.instance_id),
            ("image-id", &doc.image_id),
            ("az", &doc.availability_zone),
        ]
        .into_iter()
        .map(|(k, v)| Selector {
            key: format!("{name}:{k}"),
            value: v.clone(),
        })
        .collect();
        Ok(Attested {
            binding: Binding::Selectors {
                attestor: name.clone(),
                env: self.env.clone(),
                selectors,
            },
            method: METHOD,
            evidence_id,
            spend: if self.allow_reattestation {
                Spend::Nothing
            } else {
                Spend::Instance {
                    attestor: name.clone(),
                    instance_id: doc.instance_id,
                    key_sha256: facts.key_sha256.clone(),
                }
            },
        })
    }

    async fn commit(&self, attested: &Attested, now: i64) -> Result<(), AttestError> {
        let Spend::Instance {
            attestor,
            instance_id,
            key_sha256,
        } = &attested.spend
        else {
            return Ok(());
        };
        let bound = self
            .store
            .bind_instance(attestor, instance_id, key_sha256, now)
            .await?;
        if bound == *key_sha256 {
            Ok(())
        } else {
            Err(self.reject(format!(
                "instance {instance_id} already attested with another key"
            )))
        }
    }
}
