//! An operator's upstream root (`upstream_ca_cert` + `upstream_ca_key` of an
//! environment): the environment's rotating CAs become intermediates signed
//! by it, so relying parties trust one long-lived root kept offline and
//! rotation never changes what they trust.

use std::path::Path;

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::ParsedExtension;

use super::KeyError;

/// The root that signs an environment's CAs.
pub struct UpstreamCa {
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_after: i64,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, why: impl std::fmt::Display) -> KeyError {
    KeyError::BadCertificate(format!("upstream CA {}: {why}", path.display()))
}

impl UpstreamCa {
    /// Loads the root certificate (PEM) and its private key (PKCS#8 PEM:
    /// P-256, P-384, Ed25519 or RSA), checking that the certificate is a CA
    /// allowed to sign certificates, is valid now, and matches the key.
    pub fn load(cert_path: &Path, key_path: &Path, now: i64) -> Result<Self, KeyError> {
        let cert_der = CertificateDer::from_pem_file(cert_path).map_err(|e| bad(cert_path, e))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(|e| bad(key_path, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(key_path, e))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| bad(cert_path, e))?;
        let is_ca = cert.extensions().iter().any(
            |ext| matches!(ext.parsed_extension(), ParsedExtension::BasicConstraints(bc) if bc.ca),
        );
        if !is_ca {
            return Err(bad(
                cert_path,
                "not a CA certificate (basicConstraints CA:TRUE)",
            ));
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(bad(cert_path, "its keyUsage does not allow keyCertSign"));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad(key_path, "this key does not belong to the certificate"));
        }
        let validity = cert.validity();
        let not_after = validity.not_after.timestamp();
        if now < validity.not_before.timestamp() || now >= not_after {
            return Err(bad(cert_path, "not valid now"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad(cert_path, e))?;
        Ok(Self {
            cert_der,
            issuer,
            not_after,
        })
    }

    /// The root certificate (DER): what relying parties trust.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// When the root expires (unix seconds): no intermediate outlives it.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The signer of intermediates.
    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}
