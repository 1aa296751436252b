//! One environment's signing material as published at one moment: its CAs
//! and JWT keys with their states, and the key sets built from them (the
//! JWKS, the SPIFFE bundle, the trust bundle handed out with every SVID).
//! Built in one place so every endpoint publishes the same set.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use x509_parser::certificate::X509Certificate;

use super::slot::{KeySet, Slot};
use super::{CertificateAuthority, JwtSigningKey, KeyError};
use crate::config::Environment;

/// The published keys of one environment.
#[derive(Debug)]
pub struct EnvironmentKeys {
    /// Name and trust domain.
    pub env: Environment,
    /// X.509-SVID CAs.
    pub cas: KeySet<CertificateAuthority>,
    /// JWT-SVID signing keys.
    pub jwts: KeySet<JwtSigningKey>,
    /// Version of the published set (`spiffe_sequence`).
    pub sequence: i64,
    /// How often relying parties should re-read the set.
    pub refresh_hint: Duration,
}

impl EnvironmentKeys {
    /// The CA that signs now: refused with a clear error when none is
    /// usable (none active, or its certificate expired).
    pub fn signing_ca(&self, now: i64) -> Result<&CertificateAuthority, KeyError> {
        match self.cas.active() {
            Some((slot, ca)) if slot.not_after > now && ca.not_after() > now => Ok(ca),
            _ => Err(KeyError::NoUsableKey(format!(
                "environment {} has no usable CA right now",
                self.env.name
            ))),
        }
    }

    /// The JWT key that signs now.
    pub fn signing_jwt(&self, now: i64) -> Result<&JwtSigningKey, KeyError> {
        match self.jwts.active() {
            Some((slot, key)) if slot.not_after > now => Ok(key),
            _ => Err(KeyError::NoUsableKey(format!(
                "environment {} has no usable JWT signing key right now",
                self.env.name
            ))),
        }
    }

    /// The published CA whose key signed `cert`, if any.
    pub fn ca_that_signed(
        &self,
        cert: &X509Certificate<'_>,
    ) -> Option<(&Slot<CertificateAuthority>, &Arc<CertificateAuthority>)> {
        self.cas.published().find(|(_, ca)| ca.signed(cert))
    }

    /// The published JWT key with `kid`.
    pub fn jwt_key(&self, kid: &str) -> Option<&Arc<JwtSigningKey>> {
        self.jwts.by_id(kid)
    }

    /// Every published CA certificate (DER): the trust bundle returned with
    /// SVIDs, so workloads trust the next CA before it signs.
    pub fn trust_bundle(&self) -> Vec<Vec<u8>> {
        self.cas
            .published()
            .map(|(_, ca)| ca.cert_der().to_vec())
            .collect()
    }

    /// The JWK Set of every published JWT key, each marked `use`.
    pub fn jwks(&self, use_: &str) -> Value {
        json!({ "keys": self.jwts.published().map(|(_, k)| k.jwk(use_)).collect::<Vec<_>>() })
    }

    /// The SPIFFE bundle in JWKS form (SPIFFE Trust Domain and Bundle §4):
    /// every published CA (`x509-svid`) and JWT key (`jwt-svid`).
    pub fn spiffe_bundle(&self) -> Value {
        let mut keys: Vec<Value> = self
            .cas
            .published()
            .map(|(_, ca)| {
                let mut jwk = json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "use": "x509-svid",
                    "x5c": [STANDARD.encode(ca.cert_der())],
                });
                if let (Some(obj), Some((x, y))) = (jwk.as_object_mut(), ec_point(ca)) {
                    obj.insert("x".into(), x.into());
                    obj.insert("y".into(), y.into());
                }
                jwk
            })
            .collect();
        keys.extend(self.jwts.published().map(|(_, k)| k.jwk("jwt-svid")));
        json!({
            "keys": keys,
            "spiffe_refresh_hint": self.refresh_hint.as_secs().max(1),
            "spiffe_sequence": self.sequence,
        })
    }
}

/// A CA's public point as base64url x and y, read from its certificate.
fn ec_point(ca: &CertificateAuthority) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(ca.cert_der()).ok()?;
    let point = cert.public_key().subject_public_key.data.as_ref();
    (point.len() == 65 && point[0] == 4).then(|| {
        (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        )
    })
}
