//! X.509-SVID issuance from a workload's CSR.
//!
//! The CSR contributes exactly one thing: its public key, after its
//! self-signature is verified and its key type is on the allow-list. Every
//! other field — SPIFFE ID, validity, key usage, `CA:false` — comes from the
//! identity, whatever the CSR asks for.

use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData,
    SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::keys::{CertificateAuthority, KeyError, new_serial};
use crate::model::SpiffeId;

/// Largest CSR accepted, in bytes. A P-256 CSR is ~250 bytes, RSA-4096 ~1.7 KiB.
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// How far NotBefore is backdated to absorb clock skew between hosts.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// Why a CSR was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CsrError {
    /// No CSR was sent.
    #[error("a CSR is required")]
    Missing,
    /// The CSR exceeds [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes; the limit is {MAX_CSR_BYTES}")]
    TooLarge(usize),
    /// Not a DER PKCS#10 request.
    #[error("CSR is not a valid DER PKCS#10 request")]
    Malformed,
    /// Bytes after the request.
    #[error("CSR has trailing data")]
    TrailingData,
    /// The self-signature does not verify.
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The key type is not on the allow-list.
    #[error("CSR key type {0} is not allowed (allowed: P-256, P-384, Ed25519, RSA >= 2048)")]
    KeyTypeNotAllowed(String),
    /// RSA key too short.
    #[error("CSR RSA key has {0} bits; at least 2048 are required")]
    RsaTooShort(usize),
}

/// A CSR whose signature verified and whose key type is allowed. Holding
/// one is proof of both.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    public_key: Vec<u8>,
    algorithm: &'static SignatureAlgorithm,
}

impl PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.algorithm
    }
}

impl VerifiedCsr {
    /// Hex SHA-256 of the requested public key: names the key for
    /// attestors that bind evidence to the first key it came with.
    pub fn key_sha256(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.public_key)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Parses `der`, verifies its self-signature and checks its key type.
    pub fn parse(der: &[u8]) -> Result<Self, CsrError> {
        if der.is_empty() {
            return Err(CsrError::Missing);
        }
        if der.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge(der.len()));
        }
        let (rest, csr) =
            X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::TrailingData);
        }
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let spki = &csr.certification_request_info.subject_pki;
        let alg_oid = &spki.algorithm.algorithm;
        let algorithm: &'static SignatureAlgorithm = if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or(CsrError::Malformed)?;
            if curve == OID_EC_P256 {
                &PKCS_ECDSA_P256_SHA256
            } else if curve == OID_NIST_EC_P384 {
                &PKCS_ECDSA_P384_SHA384
            } else {
                return Err(CsrError::KeyTypeNotAllowed(format!("EC curve {curve}")));
            }
        } else if *alg_oid == OID_SIG_ED25519 {
            &PKCS_ED25519
        } else if *alg_oid == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => &PKCS_RSA_SHA256,
                Ok(PublicKey::RSA(rsa)) => return Err(CsrError::RsaTooShort(rsa.key_size())),
                _ => return Err(CsrError::Malformed),
            }
        } else {
            return Err(CsrError::KeyTypeNotAllowed(alg_oid.to_id_string()));
        };
        Ok(Self {
            public_key: spki.subject_public_key.data.to_vec(),
            algorithm,
        })
    }
}

/// An issued X.509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// Leaf first, then nothing else: the environment CA is the trust anchor
    /// and travels in the bundle.
    pub chain: Vec<CertificateDer<'static>>,
    /// Upper-case hex serial.
    pub serial: String,
    /// NotAfter (unix seconds).
    pub expires_at: i64,
}

/// Signs an X.509-SVID for `spiffe_id` over the CSR's key, valid for `ttl`
/// from `now` (unix seconds) but never past the CA.
pub fn issue_svid(
    ca: &CertificateAuthority,
    csr: &VerifiedCsr,
    spiffe_id: &SpiffeId,
    ttl: Duration,
    now: i64,
) -> Result<IssuedSvid, KeyError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "credbroker");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(spiffe_id.to_string().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let serial = new_serial()?;
    let serial_hex = serial
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<String>();
    params.serial_number = Some(serial);
    let expires_at = (now + ttl.as_secs() as i64).min(ca.not_after());
    params.not_before = unix_to_time(now - BACKDATE.as_secs() as i64);
    params.not_after = unix_to_time(expires_at);
    let leaf = ca.sign(&params, csr)?;
    let mut chain = vec![leaf];
    chain.extend(ca.chain());
    Ok(IssuedSvid {
        chain,
        serial: serial_hex,
        expires_at,
    })
}

fn unix_to_time(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::KeyPair;

    fn csr_for(params: &CertificateParams, key: &KeyPair) -> Vec<u8> {
        params.serialize_request(key).unwrap().der().to_vec()
    }

    #[test]
    fn refuses_bad_input() {
        assert_eq!(VerifiedCsr::parse(&[]).unwrap_err(), CsrError::Missing);
        assert_eq!(
            VerifiedCsr::parse(&[0x30; MAX_CSR_BYTES + 1]).unwrap_err(),
            CsrError::TooLarge(MAX_CSR_BYTES + 1)
        );
        assert_eq!(
            VerifiedCsr::parse(b"garbage").unwrap_err(),
            CsrError::Malformed
        );
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_for(&CertificateParams::default(), &key);
        let n = der.len();
        der[n - 5] ^= 0x55; // inside the signature
        assert!(matches!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::BadSignature | CsrError::Malformed
        ));
    }

    #[test]
    fn leaf_ignores_what_the_csr_asks_for() {
        let (ca, _) =
            CertificateAuthority::generate("t", None, Duration::from_secs(86400)).unwrap();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut asked = CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
        asked.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        asked.subject_alt_names.push(SanType::URI(
            "spiffe://dev.example.org/admin".try_into().unwrap(),
        ));
        let csr = VerifiedCsr::parse(&csr_for(&asked, &key)).unwrap();
        let id = SpiffeId::parse("spiffe://dev.example.org/api").unwrap();
        let svid = issue_svid(&ca, &csr, &id, Duration::from_secs(600), 1_900_000_000).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
        assert!(!cert.is_ca());
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(format!("{:X}", cert.serial), svid.serial);
        assert!(ca.signed(&cert));
        // Another environment's CA does not vouch for it.
        let (other, _) =
            CertificateAuthority::generate("t", None, Duration::from_secs(86400)).unwrap();
        assert!(!other.signed(&cert));
        assert_eq!(
            cert.validity().not_after.timestamp(),
            1_900_000_600.min(ca.not_after())
        );
    }
}
