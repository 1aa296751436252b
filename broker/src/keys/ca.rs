//! A certificate authority: an ECDSA P-256 key and its self-signed
//! certificate. The same type backs each environment's SPIFFE CA, the CA of
//! the broker's own TLS certificate, and the admin CA.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256;

use super::KeyError;
use super::upstream::UpstreamCa;

/// A CA that signs certificates with its P-256 key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    /// The upstream root that signed this CA, when it is an intermediate.
    root: Option<CertificateDer<'static>>,
    /// Its key identifier (hex): the SubjectKeyIdentifier, which every
    /// certificate it signs names as AuthorityKeyIdentifier.
    key_id: String,
    issuer: Issuer<'static, KeyPair>,
    public_key: Vec<u8>,
    not_after: i64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a CA valid for `ttl`, returning it with its PKCS#8 private key
    /// (for the caller to seal and store).
    pub fn generate(
        common_name: &str,
        uri_san: Option<&str>,
        ttl: Duration,
    ) -> Result<(Self, Vec<u8>), KeyError> {
        let not_after = time::OffsetDateTime::now_utc() + ttl;
        Self::generate_until(common_name, uri_san, not_after.unix_timestamp(), None)
    }

    /// Creates a CA valid until `not_after` (unix seconds): self-signed, or
    /// an intermediate signed by `upstream` (and then never past it).
    pub fn generate_until(
        common_name: &str,
        uri_san: Option<&str>,
        not_after: i64,
        upstream: Option<&UpstreamCa>,
    ) -> Result<(Self, Vec<u8>), KeyError> {
        let not_after = upstream.map_or(not_after, |u| not_after.min(u.not_after()));
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "credbroker");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        if let Some(uri) = uri_san {
            params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)
            .map_err(|e| KeyError::BadCertificate(format!("CA expiry {not_after}: {e}")))?;
        params.serial_number = Some(new_serial()?);
        let cert = match upstream {
            Some(up) => {
                params.use_authority_key_identifier_extension = true;
                params.signed_by(&key, up.issuer())?
            }
            None => params.self_signed(&key)?,
        };
        let pkcs8 = key.serialize_der();
        let ca = Self::from_parts(cert.der().clone(), &pkcs8)?
            .under(upstream.map(|u| u.cert_der().clone()));
        Ok((ca, pkcs8))
    }

    /// The same CA, known to be an intermediate under `root`.
    pub fn under(mut self, root: Option<CertificateDer<'static>>) -> Self {
        self.root = root;
        self
    }

    /// What relying parties trust for this CA: the upstream root, or the
    /// CA itself when it is self-signed.
    pub fn trust_anchor(&self) -> &CertificateDer<'static> {
        self.root.as_ref().unwrap_or(&self.cert_der)
    }

    /// The certificates that go after a leaf it signed: itself when it is an
    /// intermediate (the root is in the bundle), none when it is the anchor.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.root
            .as_ref()
            .map(|_| vec![self.cert_der.clone()])
            .unwrap_or_default()
    }

    /// Rebuilds a CA from its stored certificate and PKCS#8 key.
    pub fn from_parts(cert_der: CertificateDer<'static>, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
            &PKCS_ECDSA_P256_SHA256,
        )?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(KeyError::BadCertificate(
                "stored CA certificate does not match its key".into(),
            ));
        }
        let not_after = parsed.validity().not_after.timestamp();
        let key_id = subject_key_id(&parsed)
            .unwrap_or_else(|| hex(&CertificateParams::default().key_identifier(&key)));
        let public_key = key.der_bytes().to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            cert_der,
            root: None,
            key_id,
            issuer,
            public_key,
            not_after,
        })
    }

    /// The CA's public id: its key identifier (upper-case hex), which every
    /// certificate it signed carries as AuthorityKeyIdentifier (so a
    /// relying party can tell which CA signed a certificate from the
    /// certificate alone).
    pub fn id(&self) -> &str {
        &self.key_id
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// When the CA certificate expires (unix seconds). Nothing it signs may
    /// outlive it.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Signs `params` for `public_key`.
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, KeyError> {
        Ok(params.signed_by(public_key, &self.issuer)?.der().clone())
    }

    /// Signs a CRL.
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<Vec<u8>, KeyError> {
        Ok(params.signed_by(&self.issuer)?.der().to_vec())
    }

    /// Whether this CA's key signed `cert` (signature check only; validity
    /// and names are the caller's business).
    pub fn signed(&self, cert: &X509Certificate<'_>) -> bool {
        cert.signature_algorithm.algorithm == OID_SIG_ECDSA_WITH_SHA256
            && cert.issuer()
                == cert_subject(&self.cert_der)
                    .as_ref()
                    .unwrap_or(cert.issuer())
            && UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.public_key)
                .verify(
                    cert.tbs_certificate.as_ref(),
                    cert.signature_value.data.as_ref(),
                )
                .is_ok()
    }
}

fn cert_subject(der: &[u8]) -> Option<x509_parser::x509::X509Name<'_>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.tbs_certificate.subject)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A CA certificate's SubjectKeyIdentifier (upper-case hex).
pub fn subject_key_id(cert: &X509Certificate<'_>) -> Option<String> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(hex(id.0)),
            _ => None,
        })
}

pub use credbroker_client::{authority_key_id, pem_encode};

/// A certificate's serial as the broker records it: upper-case hex.
pub fn serial_of(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// A new certificate serial: positive, 16 bytes, never starting with a
/// zero byte, unguessable (72 random bits) and ordered by time (see
/// [`crate::issue::ids`]).
pub fn new_serial() -> Result<SerialNumber, KeyError> {
    let serial = crate::issue::ids::time_ordered_serial(crate::model::unix_now_ms())?;
    Ok(SerialNumber::from_slice(&serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_name_their_ca_by_its_id() {
        let (ca, _) =
            CertificateAuthority::generate("test CA", None, Duration::from_secs(3600)).unwrap();
        let (other, _) =
            CertificateAuthority::generate("test CA", None, Duration::from_secs(3600)).unwrap();
        assert_ne!(ca.id(), other.id());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.use_authority_key_identifier_extension = true;
        let leaf = ca.sign(&params, &key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(authority_key_id(&parsed).as_deref(), Some(ca.id()));
        assert!(ca.signed(&parsed));
        assert!(!other.signed(&parsed));
    }
}
