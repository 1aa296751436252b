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
        let mut anchors: Vec<Vec<u8>> = Vec::new();
        for (_, ca) in self.cas.published() {
            let anchor = ca.trust_anchor().to_vec();
            // Under an upstream root every CA has the same anchor.
            if !anchors.contains(&anchor) {
                anchors.push(anchor);
            }
        }
        anchors
    }

    /// The JWK Set of every published JWT key, each marked `use`.
    pub fn jwks(&self, use_: &str) -> Value {
        json!({ "keys": self.jwts.published().map(|(_, k)| k.jwk(use_)).collect::<Vec<_>>() })
    }

    /// The SPIFFE bundle in JWKS form (SPIFFE Trust Domain and Bundle §4):
    /// every published CA (`x509-svid`) and JWT key (`jwt-svid`).
    pub fn spiffe_bundle(&self) -> Value {
        let mut keys: Vec<Value> = self
            .trust_bundle()
            .iter()
            .map(|der| {
                let mut jwk = json!({
                    "use": "x509-svid",
                    "x5c": [STANDARD.encode(der)],
                });
                if let (Some(obj), Some(public)) = (jwk.as_object_mut(), public_jwk(der)) {
                    obj.extend(public);
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

/// The public key members of a CA certificate's JWK (RFC 7518 §6): EC
/// P-256/P-384 (`kty`, `crv`, `x`, `y`) or RSA (`kty`, `n`, `e`), so an
/// upstream root of any of the accepted types publishes a valid JWK.
fn public_jwk(der: &[u8]) -> Option<serde_json::Map<String, Value>> {
    use x509_parser::public_key::PublicKey;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let b64 = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
    let mut members = serde_json::Map::new();
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => {
            let point = point.data();
            let (crv, len) = match point.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            if point[0] != 4 {
                return None;
            }
            members.insert("kty".into(), "EC".into());
            members.insert("crv".into(), crv.into());
            members.insert("x".into(), b64(&point[1..1 + len]));
            members.insert("y".into(), b64(&point[1 + len..]));
        }
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| {
                b.iter()
                    .skip_while(|&&x| x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            members.insert("kty".into(), "RSA".into());
            members.insert("n".into(), b64(&trim(rsa.modulus)));
            members.insert("e".into(), b64(&trim(rsa.exponent)));
        }
        _ => return None,
    }
    Some(members)
}
