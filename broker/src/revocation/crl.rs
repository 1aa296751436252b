//! Per-environment CRLs, signed by the environment's CA.
//!
//! A CRL lists serials, but most revocations name an identity, an
//! environment or an owner. The builder therefore walks the environment's
//! unexpired certificates (from the audit log) and lists each one a
//! revocation covers. Expired certificates never appear, so the CRL stays as
//! small as the revocation list.

use std::time::Duration;

use axum::body::Bytes;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use crate::keys::{CertificateAuthority, KeyError};

/// How long a CRL is valid (its nextUpdate); it is rebuilt well before.
pub const CRL_VALIDITY: Duration = Duration::from_secs(5 * 60);

/// A certificate to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCert {
    /// Upper-case hex serial.
    pub serial: Box<str>,
    /// When it was revoked (unix seconds).
    pub revoked_at: i64,
}

fn time(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn serial_bytes(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

/// Builds and signs a DER CRL numbered `number` at unix time `now`.
pub fn build(
    ca: &CertificateAuthority,
    revoked: &[RevokedCert],
    number: u64,
    now: i64,
) -> Result<Vec<u8>, KeyError> {
    let params = CertificateRevocationListParams {
        this_update: time(now),
        next_update: time(now + CRL_VALIDITY.as_secs() as i64),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .filter_map(|r| {
                Some(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial_bytes(&r.serial)?),
                    revocation_time: time(r.revoked_at),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    ca.sign_crl(&params)
}

/// The last CRL built per environment, rebuilt when the revocation list
/// changes or the CRL is older than [`REBUILD_AFTER`], from the
/// certificates each revocation covers (looked up once per revocation).
#[derive(Debug, Default)]
pub struct CrlCache {
    built: std::sync::Mutex<std::collections::HashMap<String, Built>>,
    /// Certificates covered per live revocation.
    pub covered: super::covered::CoveredCerts,
    /// Held while building, so concurrent requests wait for one build and
    /// share it instead of each building their own.
    pub building: tokio::sync::Mutex<()>,
}

/// Rebuild at least this often so nextUpdate never lapses.
pub const REBUILD_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Built {
    version: u64,
    at: i64,
    der: Bytes,
}

impl CrlCache {
    /// The cached CRL of `env` if it is still current for `version` at `now`.
    pub fn current(&self, env: &str, version: u64, now: i64) -> Option<Bytes> {
        let built = self.built.lock().ok()?;
        let b = built.get(env)?;
        (b.version == version && now - b.at < REBUILD_AFTER.as_secs() as i64).then(|| b.der.clone())
    }

    /// Remembers a freshly built CRL.
    pub fn store(&self, env: &str, version: u64, now: i64, der: Vec<u8>) -> Bytes {
        let der = Bytes::from(der);
        if let Ok(mut built) = self.built.lock() {
            built.insert(
                env.to_owned(),
                Built {
                    version,
                    at: now,
                    der: der.clone(),
                },
            );
        }
        der
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;

    #[test]
    fn crl_lists_serials_and_verifies() {
        let (ca, _) =
            CertificateAuthority::generate("t", None, Duration::from_secs(86400)).unwrap();
        let der = build(
            &ca,
            &[RevokedCert {
                serial: "4A0B1C".into(),
                revoked_at: 1_800_000_000,
            }],
            7,
            1_800_000_100,
        )
        .unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&der).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial_as_string())
            .collect();
        assert_eq!(serials, vec!["4a:0b:1c"]);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
        assert_eq!(crl.crl_number().map(|n| n.to_string()), Some("7".into()));
    }
}
