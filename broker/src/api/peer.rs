//! Who is calling: the TLS client certificate, checked against the CA it
//! claims to come from.
//!
//! rustls has already verified that the chain ends at one of the CAs the
//! listener accepts (every environment's CA and the admin CA). That is not
//! enough on its own: a certificate counts only for the environment its
//! SPIFFE ID names, so we check the signature against that environment's CA.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

use crate::keys::{EnvironmentKeys, KeyRing};
use crate::model::{IdentityKey, SpiffeId};

/// An authenticated workload.
#[derive(Debug, Clone)]
pub struct WorkloadPeer {
    /// The identity its SVID names.
    pub identity: IdentityKey,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its environment's keys.
    pub env: Arc<EnvironmentKeys>,
    /// The leaf certificate (for `cnf` binding).
    pub cert: CertificateDer<'static>,
}

/// The caller of an RPC.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A workload with a valid X.509-SVID.
    Workload(WorkloadPeer),
    /// The operator, with the admin certificate.
    Admin,
}

impl Caller {
    /// For audit records.
    pub fn actor(&self) -> String {
        match self {
            Self::Anonymous => "anonymous".to_owned(),
            Self::Workload(w) => w.spiffe_id.to_string(),
            Self::Admin => "admin".to_owned(),
        }
    }
}

/// Identifies the caller of `request` at unix time `now`.
pub fn authenticate<T>(request: &Request<T>, keys: &KeyRing, now: i64) -> Result<Caller, Status> {
    let Some(certs) = request.peer_certs() else {
        return Ok(Caller::Anonymous);
    };
    let Some(leaf) = certs.first() else {
        return Ok(Caller::Anonymous);
    };
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| Status::unauthenticated("client certificate cannot be parsed"))?;
    let validity = cert.validity();
    if now < validity.not_before.timestamp() || now >= validity.not_after.timestamp() {
        return Err(Status::unauthenticated(
            "client certificate is not valid now",
        ));
    }
    if keys.admin_ca().signed(&cert) {
        return Ok(Caller::Admin);
    }
    let uris: Vec<&str> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(Status::unauthenticated(
            "client certificate must carry exactly one URI SAN (a SPIFFE ID)",
        ));
    };
    let spiffe_id = SpiffeId::parse(uri)
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
    let env = keys
        .env_for_trust_domain(spiffe_id.trust_domain())
        .ok_or_else(|| {
            Status::unauthenticated(format!(
                "trust domain {} is not served by this broker",
                spiffe_id.trust_domain()
            ))
        })?;
    if !env.ca.signed(&cert) {
        return Err(Status::unauthenticated(format!(
            "client certificate was not issued by the CA of environment {}",
            env.env.name
        )));
    }
    Ok(Caller::Workload(WorkloadPeer {
        identity: IdentityKey {
            env: env.env.name.clone(),
            name: spiffe_id.path().clone(),
        },
        spiffe_id,
        env: Arc::clone(env),
        cert: leaf.clone(),
    }))
}
