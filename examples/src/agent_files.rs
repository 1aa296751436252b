//! Reading the credentials `credbroker-agent --out-dir DIR` keeps fresh, as
//! a program that knows nothing of credbroker would: `svid.pem` (the
//! certificate, leaf first), `svid_key.pem` (its PKCS#8 key), `bundle.pem`
//! (the trust domain's CAs) and `jwt/<audience>.token`.
//!
//! The agent replaces each file atomically (write, then rename) and writes
//! the key before the certificate, so a reader never sees half a file; a
//! reader that happens to look between the key and the certificate sees a
//! mismatch once and the matching pair on the next read.

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{KeyPair, PublicKeyData};
use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::ParsedCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

/// What the files say, after every check passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFiles {
    /// The SPIFFE ID in the certificate's URI SAN.
    pub spiffe_id: String,
    /// The certificate's serial, upper-case hex.
    pub serial: String,
    /// The certificate's NotAfter.
    pub not_after: SystemTime,
    /// Whether the certificate can still be used.
    pub status: CertStatus,
    /// The JWTs under `jwt/`, by file name.
    pub jwts: Vec<JwtClaims>,
}

/// Whether the certificate shown still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// Within its validity, and not on the CRL (if one was checked).
    Valid,
    /// Past its NotAfter: the agent did not renew it.
    Expired,
    /// On the environment's CRL, revoked at this time.
    Revoked {
        /// When the broker revoked it.
        at: SystemTime,
    },
}

impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Valid => f.write_str("valid"),
            Self::Expired => f.write_str(
                "EXPIRED: nothing accepts it any more; is credbroker-agent running and reaching the broker?",
            ),
            Self::Revoked { at } => write!(
                f,
                "REVOKED at {}: peers checking revocation refuse it; the agent removes revoked credentials, so it is not running here",
                humantime::format_rfc3339_seconds(*at)
            ),
        }
    }
}

/// Claims of one JWT file, decoded but not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    /// The file name under `jwt/`.
    pub file: String,
    /// `sub`: the SPIFFE ID the token speaks for.
    pub sub: String,
    /// `aud`: who may accept it.
    pub aud: Vec<String>,
    /// `exp`.
    pub exp: SystemTime,
}

impl fmt::Display for AgentFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "SPIFFE ID  {}", self.spiffe_id)?;
        writeln!(f, "serial     {}", self.serial)?;
        writeln!(f, "expires    {}", when(self.not_after))?;
        writeln!(f, "status     {}", self.status)?;
        writeln!(f, "key        matches the certificate")?;
        writeln!(f, "chain      leads to bundle.pem")?;
        for jwt in &self.jwts {
            writeln!(f, "jwt/{}", jwt.file)?;
            writeln!(f, "  sub      {}", jwt.sub)?;
            writeln!(f, "  aud      {}", jwt.aud.join(", "))?;
            writeln!(f, "  exp      {}", when(jwt.exp))?;
        }
        Ok(())
    }
}

/// `t` as RFC 3339 with the time left.
fn when(t: SystemTime) -> String {
    let left = match t.duration_since(SystemTime::now()) {
        Ok(left) => format!("in {}s", left.as_secs()),
        Err(_) => "expired".into(),
    };
    format!("{} ({left})", humantime::format_rfc3339_seconds(t))
}

/// Reads and checks the files in `dir`: the certificate parses and carries
/// one SPIFFE ID, the key is the certificate's, and the certificate chains
/// to `bundle.pem` and is valid now. Any failed check is an error naming it.
pub fn read(dir: &Path) -> Result<AgentFiles> {
    let chain = certificates(&dir.join("svid.pem"))?;
    let bundle = certificates(&dir.join("bundle.pem"))?;
    let leaf = &chain[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).context("parsing svid.pem")?;
    let spiffe_id = credbroker_client::tls::spiffe_id(leaf).context("svid.pem")?;

    let key_pem =
        std::fs::read_to_string(dir.join("svid_key.pem")).context("reading svid_key.pem")?;
    let key = KeyPair::from_pem(&key_pem).context("parsing svid_key.pem")?;
    ensure!(
        key.der_bytes() == cert.public_key().subject_public_key.data.as_ref(),
        "svid_key.pem is not the key of svid.pem"
    );

    // Path validation as a TLS peer would do it: signatures up to a CA in
    // bundle.pem, validity periods, CA constraints.
    let mut roots = RootCertStore::empty();
    for ca in bundle {
        roots.add(ca).context("a CA in bundle.pem")?;
    }
    // An expired certificate is still shown (saying so), so its chain is
    // checked as of its last valid second: expiry is reported, not hidden
    // behind a verification error.
    let not_after = unix(cert.validity().not_after.timestamp());
    let expired = not_after <= SystemTime::now();
    let at = if expired {
        UnixTime::since_unix_epoch(
            Duration::from_secs(cert.validity().not_after.timestamp().max(1) as u64)
                - Duration::from_secs(1),
        )
    } else {
        UnixTime::now()
    };
    let algorithms = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    verify_server_cert_signed_by_trust_anchor(
        &ParsedCertificate::try_from(leaf).context("svid.pem")?,
        &roots,
        &chain[1..],
        at,
        algorithms.all,
    )
    .map_err(|e| anyhow!("svid.pem does not verify against bundle.pem: {e}"))?;

    Ok(AgentFiles {
        spiffe_id,
        serial: format!("{:X}", cert.tbs_certificate.serial),
        not_after,
        status: if expired {
            CertStatus::Expired
        } else {
            CertStatus::Valid
        },
        jwts: jwt_files(&dir.join("jwt"))?,
    })
}

/// Checks the certificate in `files` against a CRL (DER, as served at the
/// broker's `/{env}/crl`) signed by a CA in `dir/bundle.pem`, and marks it
/// revoked if listed. A CRL from another CA is an error, not a verdict.
pub fn check_crl(files: &mut AgentFiles, dir: &Path, crl_der: &[u8]) -> Result<()> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der)
        .map_err(|e| anyhow!("the CRL does not parse: {e}"))?;
    let bundle = certificates(&dir.join("bundle.pem"))?;
    let signed = bundle.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca)
            .is_ok_and(|(_, ca)| crl.verify_signature(ca.public_key()).is_ok())
    });
    ensure!(
        signed,
        "the CRL is not signed by a CA in bundle.pem (is it this trust domain's /ENV/crl?)"
    );
    let serial = files.serial.to_ascii_lowercase();
    let listed = crl.iter_revoked_certificates().find(|r| {
        r.raw_serial_as_string()
            .replace(':', "")
            .trim_start_matches('0')
            == serial.trim_start_matches('0')
    });
    if let Some(entry) = listed {
        files.status = CertStatus::Revoked {
            at: unix(entry.revocation_date.timestamp()),
        };
    }
    Ok(())
}

/// The PEM certificates in `path`, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading {}", path.display()))?;
    ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// Decodes every `*.token` in `dir` (none if the directory is missing).
///
/// The claims are only decoded, not verified: a token proves something only
/// to its receiver, which verifies it against the broker's keys (see
/// [`crate::jwt_call`]). The holder just needs to know what it holds.
fn jwt_files(dir: &Path) -> Result<Vec<JwtClaims>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut jwts = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "token") {
            continue;
        }
        let token = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let payload = token.trim().split('.').nth(1).unwrap_or_default();
        let claims: serde_json::Value = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .with_context(|| format!("{} is not a JWT", path.display()))?;
        let aud = match &claims["aud"] {
            serde_json::Value::String(one) => vec![one.clone()],
            many => many
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .map(str::to_owned)
                .collect(),
        };
        jwts.push(JwtClaims {
            file: path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            sub: claims["sub"].as_str().unwrap_or_default().to_owned(),
            aud,
            exp: unix(claims["exp"].as_i64().unwrap_or_default()),
        });
    }
    jwts.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(jwts)
}

fn unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or_default())
}

/// Reads `dir` once, then again whenever a file in it (or in `jwt/`)
/// changes, checking modification times every `poll`. Each read goes to
/// `on_change`; watching stops when it returns [`ControlFlow::Break`].
pub fn watch(
    dir: &Path,
    poll: Duration,
    mut on_change: impl FnMut(Result<AgentFiles>) -> ControlFlow<()>,
) {
    let mut seen = None;
    loop {
        let now = modified(dir);
        if seen.as_ref() != Some(&now) {
            seen = Some(now);
            if on_change(read(dir)).is_break() {
                return;
            }
        }
        std::thread::sleep(poll);
    }
}

/// Every file under `dir` and `dir/jwt` with its modification time.
fn modified(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files: Vec<_> = [dir.to_path_buf(), dir.join("jwt")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        // Skips the agent's temporary files (`.svid.pem.<pid>.tmp`).
        .filter(|path| {
            let hidden = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            path.is_file() && !hidden
        })
        .map(|path| {
            let time = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            (path, time)
        })
        .collect();
    files.sort();
    files
}
