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
//!
//! The SHA-256 itself (a certificate is a dozen hash blocks, 8 % of a
//! FetchJwt's instructions when it was taken on every call) is taken once
//! per connection: [`ConnectionDigests`].

use std::sync::{Arc, Weak};

use dashmap::DashMap;
use rustls_pki_types::CertificateDer;
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

/// Connections whose certificate digest is remembered at most before
/// closed connections are forgotten.
const CONNECTIONS_CAPACITY: usize = 65_536;

/// The peer certificates of one TLS connection, as tonic hands them to
/// every request on it: one `Arc`, made at the handshake.
type PeerCerts = Arc<Vec<CertificateDer<'static>>>;

/// The SHA-256 of each open connection's client certificate, so a
/// connection's requests hash it once. Keyed by the address of the
/// connection's certificate list, holding a [`Weak`] to it: while the
/// `Weak` lives that allocation cannot be reused, so an equal address is
/// the same connection's list, never a later one's.
#[derive(Debug, Default)]
struct ConnectionDigests {
    by_connection: DashMap<usize, (Weak<Vec<CertificateDer<'static>>>, [u8; 32])>,
}

impl ConnectionDigests {
    /// The SHA-256 of the leaf of `certs`.
    fn leaf_digest(&self, certs: &PeerCerts, leaf: &[u8]) -> [u8; 32] {
        let key = Arc::as_ptr(certs) as usize;
        if let Some(hit) = self.by_connection.get(&key) {
            // An entry's Weak keeps its address from being reused: a hit
            // is this very list.
            return hit.1;
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf).as_ref());
        if self.by_connection.len() >= CONNECTIONS_CAPACITY {
            // Closed connections' lists are gone (no strong reference);
            // if most are open, start over (every digest can be retaken).
            self.by_connection
                .retain(|_, (list, _)| list.strong_count() > 0);
            if self.by_connection.len() >= CONNECTIONS_CAPACITY / 2 {
                self.by_connection.clear();
            }
        }
        self.by_connection
            .insert(key, (Arc::downgrade(certs), digest));
        digest
    }
}

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
    connections: ConnectionDigests,
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
        let fingerprint = self.connections.leaf_digest(&certs, leaf);
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

    #[test]
    fn a_new_connection_never_inherits_a_closed_ones_digest() {
        let digests = ConnectionDigests::default();
        let sha = |b: &[u8]| {
            let mut out = [0u8; 32];
            out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
            out
        };
        let list = |b: &'static [u8]| -> PeerCerts { Arc::new(vec![CertificateDer::from(b)]) };
        let first = list(b"certificate of the first connection");
        assert_eq!(
            digests.leaf_digest(&first, &first[0]),
            sha(&first[0]),
            "first use"
        );
        assert_eq!(
            digests.leaf_digest(&first, &first[0]),
            sha(&first[0]),
            "remembered"
        );
        let first_at = Arc::as_ptr(&first) as usize;
        drop(first);
        // The allocator hands a freed block of the same size straight back:
        // without the Weak held for it, one of these would get the closed
        // connection's digest.
        for n in 0..64 {
            let other = list(b"another workload's certificate");
            let reused = Arc::as_ptr(&other) as usize == first_at;
            assert_eq!(
                digests.leaf_digest(&other, &other[0]),
                sha(&other[0]),
                "connection {n} (same address as the closed one: {reused})"
            );
        }
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
