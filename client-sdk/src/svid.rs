//! Credentials as the SDK hands them out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// PEM-encodes one DER object.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every URI SAN of `cert` (SPIFFE IDs, operator names): one reading of
/// the SAN extension for every check built on it.
pub fn uri_sans<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Vec<&'a str> {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
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
        .unwrap_or_default()
}

/// Which CA key signed `cert`: its AuthorityKeyIdentifier as upper-case
/// hex — the id `credbroker keys list` shows for a CA, and the value of a
/// `key` revocation when that CA is retired.
pub fn authority_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki
                .key_identifier
                .as_ref()
                .map(|k| k.0.iter().map(|b| format!("{b:02X}")).collect()),
            _ => None,
        })
}

fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// An X.509-SVID with the private key generated in this process.
pub struct X509Svid {
    /// The SPIFFE ID (the certificate's URI SAN).
    pub spiffe_id: String,
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 private key; it never left this process.
    pub private_key: PrivatePkcs8KeyDer<'static>,
    /// Hex serial of the leaf.
    pub serial: String,
    /// NotAfter of the leaf.
    pub expires_at: SystemTime,
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            cert_chain: self.cert_chain.clone(),
            private_key: self.private_key.clone_key(),
            serial: self.serial.clone(),
            expires_at: self.expires_at,
        }
    }
}

impl std::fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl X509Svid {
    pub(crate) fn from_proto(
        svid: credbroker_proto::v1::X509Svid,
        private_key: PrivatePkcs8KeyDer<'static>,
    ) -> Self {
        Self {
            spiffe_id: svid.spiffe_id,
            cert_chain: svid
                .cert_chain
                .into_iter()
                .map(CertificateDer::from)
                .collect(),
            private_key,
            serial: svid.serial,
            expires_at: unix(svid.expires_at),
        }
    }

    /// The chain as PEM, leaf first.
    pub fn cert_chain_pem(&self) -> String {
        self.cert_chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.private_key.secret_pkcs8_der())
    }

    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// A JWT-SVID.
#[derive(Clone)]
pub struct JwtSvid {
    /// The compact JWS.
    pub token: String,
    /// Its subject.
    pub spiffe_id: String,
    /// Unique id.
    pub jti: String,
    /// Audiences.
    pub audiences: Vec<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("jti", &self.jti)
            .field("audiences", &self.audiences)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl From<credbroker_proto::v1::JwtSvid> for JwtSvid {
    fn from(j: credbroker_proto::v1::JwtSvid) -> Self {
        Self {
            token: j.token,
            spiffe_id: j.spiffe_id,
            jti: j.jti,
            audiences: j.audiences,
            scopes: j.scopes,
            expires_at: unix(j.expires_at),
        }
    }
}

impl JwtSvid {
    /// Time left before expiry (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }
}

/// The CA certificates of one trust domain.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    /// DER CA certificates.
    pub certs: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// A bundle from the DER certificates of a broker response.
    pub(crate) fn from_der(certs: Vec<Vec<u8>>) -> Self {
        Self {
            certs: certs.into_iter().map(CertificateDer::from).collect(),
        }
    }

    /// The bundle as PEM.
    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }
}
