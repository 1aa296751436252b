//! Who is calling: the TLS client certificate, checked against the CA it
//! claims to come from.
//!
//! rustls has already verified that the chain ends at one of the CAs the
//! listener accepts (every environment's CA and the admin CA). That is not
//! enough on its own: a certificate counts only for the environment its
//! SPIFFE ID names, so we check the signature against that environment's CA.
//!
//! That check is an ECDSA verification, the most expensive step of a
//! FetchJwt after signing, and its answer never changes for a given
//! certificate, so [`CallerCache`] remembers it keyed by the certificate's
//! SHA-256. Validity times are still checked on every call.

use std::sync::Arc;

use dashmap::DashMap;
use tonic::{Request, Status};
use x509_parser::certificate::X509Certificate;

use super::operators::{OperatorPeer, OperatorRegistry, operator_name};
use crate::issue::Confirmation;
use crate::issue::x509::BACKDATE;
use crate::keys::{EnvironmentKeys, KeyRing};
use crate::model::{IdentityKey, SpiffeId};
use crate::revocation::CredentialFacts;

/// Certificates remembered at most; the cache is emptied when full (every
/// entry can be recomputed).
const CACHE_CAPACITY: usize = 100_000;

/// An authenticated workload.
#[derive(Debug, Clone)]
pub struct WorkloadPeer {
    /// The identity its SVID names.
    pub identity: IdentityKey,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its environment's keys.
    pub env: Arc<EnvironmentKeys>,
    /// Binding to its certificate, for JWTs issued to it.
    pub cnf: Confirmation,
    /// Upper-case hex serial of its certificate.
    pub serial: String,
    /// When its certificate was issued (unix seconds).
    pub issued_at: i64,
    /// Id of the CA that signed its certificate.
    pub signed_by: String,
}

impl WorkloadPeer {
    /// What revocations are checked against for its certificate, given its
    /// identity's `owner`.
    pub fn facts<'a>(&'a self, owner: Option<&'a str>) -> CredentialFacts<'a> {
        CredentialFacts {
            jti: None,
            serial: Some(&self.serial),
            identity: &self.identity,
            owner,
            issued_at: self.issued_at,
            signed_by: Some(&self.signed_by),
        }
    }
}

/// The caller of an RPC.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A workload with a valid X.509-SVID.
    Workload(Arc<WorkloadPeer>),
    /// The bootstrap admin or a named operator (admin CA certificate),
    /// with its role; checked for revocation on this call.
    Admin(Arc<OperatorPeer>),
}

impl Caller {
    /// For audit records.
    pub fn actor(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::Workload(w) => w.spiffe_id.to_string(),
            Self::Admin(op) => op.name.clone(),
        }
    }
}

/// A certificate already verified, with its validity window.
#[derive(Debug, Clone)]
struct Verified {
    caller: VerifiedCaller,
    not_before: i64,
    not_after: i64,
    /// The key-set generation it was verified against: a rotation or a
    /// retirement since means verifying again.
    generation: u64,
}

/// Who a verified certificate names. A named operator's standing (role,
/// revocation) is looked up at every call, never cached.
#[derive(Debug, Clone)]
enum VerifiedCaller {
    Known(Caller),
    Operator { name: String, serial: String },
}

/// Remembers which client certificates were verified, and as whom.
#[derive(Debug, Default)]
pub struct CallerCache {
    verified: DashMap<[u8; 32], Verified>,
    /// Named operators' certificates, checked at every admin call.
    pub operators: OperatorRegistry,
}

impl CallerCache {
    /// Identifies the caller of `request` at unix time `now`.
    pub fn authenticate<T>(
        &self,
        request: &Request<T>,
        keys: &KeyRing,
        now: i64,
    ) -> Result<Caller, Status> {
        let Some(certs) = request.peer_certs() else {
            return Ok(Caller::Anonymous);
        };
        let Some(leaf) = certs.first() else {
            return Ok(Caller::Anonymous);
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        let generation = keys.generation();
        let cached = self
            .verified
            .get(&fingerprint)
            .map(|hit| hit.clone())
            .filter(|hit| hit.generation == generation);
        let verified = match cached {
            Some(hit) => hit,
            None => {
                let verified = verify(leaf, &fingerprint, keys, generation)?;
                if self.verified.len() >= CACHE_CAPACITY {
                    // Expired certificates can never authenticate again;
                    // if that frees too little, start over.
                    self.verified.retain(|_, v| v.not_after > now);
                    if self.verified.len() >= CACHE_CAPACITY / 2 {
                        self.verified.clear();
                    }
                }
                self.verified.insert(fingerprint, verified.clone());
                verified
            }
        };
        if now < verified.not_before || now >= verified.not_after {
            return Err(Status::unauthenticated(
                "client certificate is not valid now",
            ));
        }
        match verified.caller {
            VerifiedCaller::Known(caller) => Ok(caller),
            VerifiedCaller::Operator { name, serial } => Ok(Caller::Admin(Arc::new(
                self.operators.authenticate(&name, &serial, now)?,
            ))),
        }
    }
}

fn verify(
    leaf: &[u8],
    fingerprint: &[u8; 32],
    keys: &KeyRing,
    generation: u64,
) -> Result<Verified, Status> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| Status::unauthenticated("client certificate cannot be parsed"))?;
    let validity = cert.validity();
    let (not_before, not_after) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    if let Some(name) = operator_name(&cert).map_err(Status::unauthenticated)? {
        // Only the admin CA's signature makes a name an operator: TLS also
        // accepts every environment CA.
        if !keys.admin_signed(&cert) {
            return Err(Status::unauthenticated(format!(
                "operator certificate for {name} was not issued by this broker's admin CA"
            )));
        }
        return Ok(Verified {
            caller: VerifiedCaller::Operator {
                name,
                serial: serial_hex(&cert),
            },
            not_before,
            not_after,
            generation,
        });
    }
    if keys.admin_signed(&cert) {
        return Ok(Verified {
            caller: VerifiedCaller::Known(Caller::Admin(Arc::new(OperatorPeer::bootstrap()))),
            not_before,
            not_after,
            generation,
        });
    }
    let spiffe_id = spiffe_id_of(&cert).map_err(Status::unauthenticated)?;
    let env = keys
        .env_for_trust_domain(spiffe_id.trust_domain())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "trust domain {} is not served by this broker",
                spiffe_id.trust_domain()
            ))
        })?;
    let Some((signer, _)) = env.ca_that_signed(&cert) else {
        return Err(Status::unauthenticated(format!(
            "client certificate was not issued by the CA of environment {}",
            env.env.name
        )));
    };
    let signed_by = signer.id.clone();
    Ok(Verified {
        caller: VerifiedCaller::Known(Caller::Workload(Arc::new(WorkloadPeer {
            identity: IdentityKey {
                env: env.env.name.clone(),
                name: spiffe_id.path().clone(),
            },
            spiffe_id,
            env: Arc::clone(&env),
            cnf: Confirmation::from_sha256(fingerprint),
            serial: serial_hex(&cert),
            issued_at: issued_at(&cert),
            signed_by,
        }))),
        not_before,
        not_after,
        generation,
    })
}

/// The one SPIFFE ID (URI SAN) of an X.509-SVID.
pub(crate) fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let uris = credbroker_client::uri_sans(cert);
    let [uri] = uris.as_slice() else {
        return Err("certificate must carry exactly one URI SAN (a SPIFFE ID)".to_owned());
    };
    SpiffeId::parse(uri).map_err(|e| format!("certificate: {e}"))
}

pub(crate) use crate::keys::serial_of as serial_hex;

/// When the broker issued `cert`: NotBefore is backdated by [`BACKDATE`].
pub(crate) fn issued_at(cert: &X509Certificate<'_>) -> i64 {
    cert.validity().not_before.timestamp() + BACKDATE.as_secs() as i64
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
    };

    use super::*;
    use crate::config::{Config, EnvironmentConfig};
    use crate::keys::Kek;
    use crate::model::EnvName;
    use crate::store::SqliteStore;

    async fn keys(dir: &std::path::Path) -> KeyRing {
        let config = Config {
            data_dir: dir.to_owned(),
            environments: ["dev", "prod"]
                .map(|name| EnvironmentConfig {
                    name: name.into(),
                    trust_domain: None,
                    upstream_ca_cert: None,
                    upstream_ca_key: None,
                })
                .to_vec(),
            ..Config::default()
        };
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = std::sync::Arc::new(SqliteStore::open(&url).await.unwrap());
        KeyRing::load_or_create(
            &config,
            store,
            std::sync::Arc::new(Kek::from_bytes(&[1; 32]).unwrap()),
        )
        .await
        .unwrap()
    }

    /// A leaf for `spiffe_id`, signed by the CA of `signer`.
    fn leaf(keys: &KeyRing, signer: &str, spiffe_id: &str) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let env = keys.env(&EnvName::new(signer).unwrap()).unwrap();
        env.signing_ca(crate::model::unix_now())
            .unwrap()
            .sign(&params, &key)
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn a_certificate_counts_only_in_the_environment_its_spiffe_id_names() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keys(dir.path()).await;
        let own = leaf(&keys, "prod", "spiffe://prod.example.org/api");
        match verify(&own, &[0; 32], &keys, 0).unwrap().caller {
            VerifiedCaller::Known(Caller::Workload(peer)) => {
                assert_eq!(peer.identity.to_string(), "prod/api")
            }
            other => panic!("{other:?}"),
        }
        // Signed by dev's CA (which the TLS layer trusts) but naming prod.
        let crossed = leaf(&keys, "dev", "spiffe://prod.example.org/api");
        let err = verify(&crossed, &[0; 32], &keys, 0).unwrap_err();
        assert!(err.message().contains("CA of environment prod"), "{err}");
        let foreign = leaf(&keys, "dev", "spiffe://other.example.org/api");
        assert!(verify(&foreign, &[0; 32], &keys, 0).is_err());
    }
}
