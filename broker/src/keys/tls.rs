//! The broker's own TLS certificate and the admin client credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::{CertificateAuthority, KeyError, new_serial, pem_encode, write_private_file};
use crate::model::unix_now;

/// Lifetime of the broker's TLS certificate; it is re-issued at every start.
const SERVER_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Lifetime of the bootstrap admin certificate (DATA_DIR/admin/): a copy
/// taken off the machine stops working within a day; people and automation
/// use named operators instead.
const ADMIN_CERT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The running broker replaces the bootstrap admin certificate once it is
/// this close to expiry (half its life), so whoever can read the data
/// directory always finds a valid one.
const ADMIN_RENEW_BEFORE: i64 = 12 * 60 * 60;

/// The broker's TLS certificate (chained to `broker-ca.pem`) and its key.
#[derive(Clone)]
pub struct ServerTls {
    /// Leaf then CA, PEM.
    pub cert_chain_pem: String,
    /// PKCS#8 key, PEM.
    pub key_pem: String,
    /// Leaf then CA, DER.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key, DER.
    pub key_der: Vec<u8>,
    issued_at: i64,
    not_after: i64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Issues a certificate for `names` (DNS names or IP addresses).
    pub fn issue(ca: &CertificateAuthority, names: &[String]) -> Result<Self, KeyError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "credbroker");
        dn.push(DnType::CommonName, "credbroker broker");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, SERVER_CERT_TTL, ca);
        params.serial_number = Some(new_serial()?);
        params.use_authority_key_identifier_extension = true;
        let not_after = params.not_after.unix_timestamp();
        let cert = ca.sign(&params, &key)?;
        Ok(Self {
            cert_chain_pem: pem_encode("CERTIFICATE", &cert) + &ca.cert_pem(),
            key_pem: key.serialize_pem(),
            cert_chain: vec![cert, ca.cert_der().clone()],
            key_der: key.serialize_der(),
            issued_at: unix_now(),
            not_after,
        })
    }

    /// When the certificate expires (unix seconds).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// When to replace it: half-way through its life.
    pub fn renew_at(&self) -> i64 {
        self.issued_at + (self.not_after - self.issued_at) / 2
    }
}

fn set_validity(params: &mut CertificateParams, ttl: Duration, ca: &CertificateAuthority) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    let ca_end = time::OffsetDateTime::from_unix_timestamp(ca.not_after())
        .unwrap_or(now + time::Duration::days(1));
    params.not_after = (now + ttl).min(ca_end);
}

/// Writes `DATA_DIR/broker-ca.pem`, the bundle clients pass as `--bundle`.
pub fn write_broker_ca(data_dir: &Path, ca: &CertificateAuthority) -> Result<(), KeyError> {
    let path = data_dir.join("broker-ca.pem");
    std::fs::write(&path, ca.cert_pem()).map_err(|source| KeyError::Io { path, source })
}

/// The admin client certificate files under `DATA_DIR/admin/`.
#[derive(Debug, Clone)]
pub struct AdminFiles {
    /// `admin.pem`: the client certificate.
    pub cert: PathBuf,
    /// `admin.key`: its private key (0600).
    pub key: PathBuf,
}

impl AdminFiles {
    /// The file locations under `data_dir`.
    pub fn locate(data_dir: &Path) -> Self {
        let dir = data_dir.join("admin");
        Self {
            cert: dir.join("admin.pem"),
            key: dir.join("admin.key"),
        }
    }

    /// Makes sure a current admin certificate signed by `ca` is on disk,
    /// issuing a new one when it is missing, foreign or near expiry.
    pub fn ensure(data_dir: &Path, ca: &CertificateAuthority) -> Result<Self, KeyError> {
        let files = Self::locate(data_dir);
        if files.current(ca) {
            return Ok(files);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "credbroker");
        dn.push(DnType::CommonName, "credbroker-admin");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, ADMIN_CERT_TTL, ca);
        params.serial_number = Some(new_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = ca.sign(&params, &key)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyError::Io { path, source }
        };
        write_private_file(&files.key, key.serialize_pem().as_bytes()).map_err(io(&files.key))?;
        write_private_file(&files.cert, pem_encode("CERTIFICATE", &cert).as_bytes())
            .map_err(io(&files.cert))?;
        tracing::info!(path = %files.cert.display(), "issued admin client certificate");
        Ok(files)
    }

    fn current(&self, ca: &CertificateAuthority) -> bool {
        if !self.key.exists() {
            return false;
        }
        let Ok(cert) = CertificateDer::from_pem_file(&self.cert) else {
            return false;
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&cert) else {
            return false;
        };
        ca.signed(&parsed)
            && parsed.validity().not_after.timestamp() - unix_now() > ADMIN_RENEW_BEFORE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_after(files: &AdminFiles) -> i64 {
        let cert = CertificateDer::from_pem_file(&files.cert).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        parsed.validity().not_after.timestamp()
    }

    #[test]
    fn the_bootstrap_admin_certificate_is_short_lived_and_renewed_at_half_life() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) =
            CertificateAuthority::generate("admin CA", None, Duration::from_secs(86400 * 30))
                .unwrap();
        let files = AdminFiles::ensure(dir.path(), &ca).unwrap();
        let first = std::fs::read(&files.cert).unwrap();
        let life = not_after(&files) - unix_now();
        assert!((86_000..=86_400).contains(&life), "{life}");
        // Fresh: kept as it is.
        AdminFiles::ensure(dir.path(), &ca).unwrap();
        assert_eq!(std::fs::read(&files.cert).unwrap(), first);
        // Past half its life: replaced.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        set_validity(&mut params, Duration::from_secs(3600), &ca);
        let old = ca.sign(&params, &key).unwrap();
        std::fs::write(&files.cert, pem_encode("CERTIFICATE", &old)).unwrap();
        AdminFiles::ensure(dir.path(), &ca).unwrap();
        assert!(not_after(&files) - unix_now() > 86_000, "renewed");
    }
}
