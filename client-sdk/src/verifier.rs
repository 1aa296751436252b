//! Verifying JWT-SVIDs on the receiving side.
//!
//! [`JwtVerifier`] checks a token the way a careful relying party must:
//! only ES256 (so `alg: none` and HMAC-with-the-public-key fail), a `kid`
//! from the environment's key set (fetched from the broker, cached, and
//! re-fetched — at most every [`KEY_REFRESH_MIN_INTERVAL`] — when an unknown
//! `kid` appears), the signature, issuer, environment, audience, `exp` and
//! `nbf` with a small leeway, a subject in the environment's trust domain,
//! and revocation: [`JwtVerifier::follow_revocations`] keeps a subscription
//! to the broker's revocation stream, so a revoked token is refused as soon
//! as the event arrives.
//!
//! Tokens of identities created with `--require-binding` are
//! sender-constrained (RFC 8705): they carry `cnf.x5t#S256`, the SHA-256 of
//! the certificate they were issued to. [`JwtVerifier::verify`] treats the
//! token as a bearer token and so refuses a bound one;
//! [`JwtVerifier::verify_presented`] (or [`JwtVerifier::verify_request`] on
//! a tonic request received over mTLS) also takes the caller's TLS
//! certificate and accepts a bound token only from that certificate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use thiserror::Error;

use crate::client::{Client, WorkloadClient};
use crate::error::ClientError;
use crate::revocations::RevocationWatcher;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// An unknown `kid` triggers a key refresh at most this often.
pub const KEY_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// Why a token was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Not a compact JWS, or undecodable parts.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Any algorithm but ES256 (including `none` and HMAC).
    #[error("algorithm {0:?} is not accepted (only ES256)")]
    Algorithm(String),
    /// No key with this `kid` in the environment, even after a refresh.
    #[error("unknown signing key {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    Signature,
    /// `iss` is not the environment's issuer.
    #[error("issuer {0:?} is not this environment's")]
    Issuer(String),
    /// `env` is another environment.
    #[error("token is for environment {0:?}")]
    Environment(String),
    /// The audience is not in `aud`.
    #[error("audience {0:?} is not in the token")]
    Audience(String),
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// `sub` is not a SPIFFE ID of this trust domain.
    #[error("subject {0:?} is not in trust domain {1}")]
    Subject(String, String),
    /// Revoked by an operator.
    #[error("token revoked: {0}")]
    Revoked(String),
    /// The token is bound to a certificate (`cnf`) but was presented
    /// without one (as a bearer token).
    #[error(
        "token is bound to a client certificate (cnf) and was presented without mTLS; \
         verify it with the caller's certificate"
    )]
    BindingRequired,
    /// The token is bound to another certificate than the caller's.
    #[error("token is bound to another client certificate than the caller's")]
    BoundToAnotherCertificate,
    /// No `authorization: Bearer` header in the request.
    #[error("no bearer token in the request")]
    NoToken,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedJwt {
    /// SPIFFE ID of the caller.
    pub spiffe_id: String,
    /// JWT id.
    pub jti: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// Whether the token was bound to the certificate it was presented with
    /// (`cnf.x5t#S256`); `false` for a bearer token.
    pub bound: bool,
    /// All claims.
    pub claims: Value,
}

#[derive(Debug, Default)]
struct Keys {
    issuer: String,
    trust_domain: String,
    /// `kid` → uncompressed P-256 point.
    by_kid: HashMap<String, Vec<u8>>,
    /// Re-read the set this often (the broker's advice), so a key prepared
    /// for rotation is known before its first token arrives.
    refresh_hint: Option<Duration>,
}

/// Verifies JWT-SVIDs of one environment for one audience.
#[derive(Debug, Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: WorkloadClient,
    env: String,
    audience: String,
    leeway: Duration,
    keys: RwLock<Keys>,
    last_refresh: Mutex<Option<Instant>>,
    revoked: RevocationWatcher,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn parse_keys(jwks: &str) -> HashMap<String, Vec<u8>> {
    let Ok(set) = serde_json::from_str::<Value>(jwks) else {
        return HashMap::new();
    };
    set["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "EC" && k["crv"] == "P-256")
        .filter_map(|k| {
            let x = URL_SAFE_NO_PAD.decode(k["x"].as_str()?).ok()?;
            let y = URL_SAFE_NO_PAD.decode(k["y"].as_str()?).ok()?;
            (x.len() == 32 && y.len() == 32).then(|| {
                let mut point = vec![4u8];
                point.extend(x);
                point.extend(y);
                (k["kid"].as_str().unwrap_or_default().to_owned(), point)
            })
        })
        .collect()
}

impl JwtVerifier {
    /// A verifier for tokens of `env` addressed to `audience`, loading the
    /// environment's keys from the broker through `client`.
    pub async fn new(client: &Client, env: &str, audience: &str) -> Result<Self, ClientError> {
        Self::with_leeway(client, env, audience, LEEWAY).await
    }

    /// Like [`JwtVerifier::new`] with another clock-skew allowance.
    pub async fn with_leeway(
        client: &Client,
        env: &str,
        audience: &str,
        leeway: Duration,
    ) -> Result<Self, ClientError> {
        let verifier = Self {
            inner: Arc::new(Inner {
                client: client.anonymous(),
                env: env.to_owned(),
                audience: audience.to_owned(),
                leeway,
                keys: RwLock::new(Keys::default()),
                // The read just below counts as the first refresh.
                last_refresh: Mutex::new(Some(Instant::now())),
                revoked: RevocationWatcher::default(),
            }),
        };
        verifier.refresh_keys().await?;
        Ok(verifier)
    }

    async fn refresh_keys(&self) -> Result<(), ClientError> {
        let answer = self.inner.client.get_jwks(&self.inner.env).await?;
        let keys = Keys {
            by_kid: parse_keys(&answer.jwks),
            issuer: answer.issuer,
            trust_domain: answer.trust_domain,
            refresh_hint: (answer.refresh_hint_seconds > 0)
                .then(|| Duration::from_secs(answer.refresh_hint_seconds.into())),
        };
        if let Ok(mut slot) = self.inner.keys.write() {
            *slot = keys;
        }
        Ok(())
    }

    /// Claims the next key refresh if the last attempt is at least
    /// `interval` old. Attempts count, not only successes: while the broker
    /// is unreachable, verifications go on with the keys held instead of
    /// each waiting on a refresh that fails, and concurrent verifications
    /// refresh once.
    fn claim_refresh(&self, interval: Duration) -> bool {
        let Ok(mut at) = self.inner.last_refresh.lock() else {
            return false;
        };
        if at.is_some_and(|t| t.elapsed() < interval) {
            return false;
        }
        *at = Some(Instant::now());
        true
    }

    /// Claims a refresh if the broker's refresh hint has passed.
    fn refresh_hinted(&self) -> bool {
        match self.inner.keys.read().ok().and_then(|k| k.refresh_hint) {
            Some(hint) => self.claim_refresh(hint),
            None => false,
        }
    }

    fn key(&self, kid: &str) -> Option<Vec<u8>> {
        self.inner.keys.read().ok()?.by_kid.get(kid).cloned()
    }

    /// Verifies `token` presented as a bearer token (no client
    /// certificate); see the module docs for every check. A token bound to
    /// a certificate is refused with [`VerifyError::BindingRequired`].
    pub async fn verify(&self, token: &str) -> Result<VerifiedJwt, VerifyError> {
        self.verify_with(token, None).await
    }

    /// Verifies `token` presented over mTLS by the DER certificate
    /// `client_cert`: a bound token must name exactly that certificate; a
    /// bearer token is accepted as by [`JwtVerifier::verify`].
    pub async fn verify_presented(
        &self,
        token: &str,
        client_cert: &[u8],
    ) -> Result<VerifiedJwt, VerifyError> {
        self.verify_with(token, Some(client_cert)).await
    }

    /// Verifies the `authorization: Bearer` token of a request this server
    /// received, with the client certificate of its TLS connection when
    /// there is one (tonic servers over TLS, including `tokio-rustls`
    /// streams given to `serve_with_incoming`).
    pub async fn verify_request<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<VerifiedJwt, VerifyError> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(VerifyError::NoToken)?;
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first());
        self.verify_with(token, leaf.map(|c| c.as_ref())).await
    }

    async fn verify_with(
        &self,
        token: &str,
        client_cert: Option<&[u8]>,
    ) -> Result<VerifiedJwt, VerifyError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed("expected three dot-separated parts"));
        };
        let decode = |part: &str| -> Result<Value, VerifyError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| VerifyError::Malformed("invalid base64url"))?;
            serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed("invalid JSON"))
        };
        let header = decode(header)?;
        let alg = header["alg"].as_str().unwrap_or_default();
        if alg != "ES256" {
            return Err(VerifyError::Algorithm(alg.to_owned()));
        }
        let kid = header["kid"].as_str().unwrap_or_default().to_owned();
        if self.refresh_hinted() {
            // A failed refresh keeps the keys held; the broker may be away.
            let _ = self.refresh_keys().await;
        }
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                if self.claim_refresh(KEY_REFRESH_MIN_INTERVAL) {
                    let _ = self.refresh_keys().await;
                }
                self.key(&kid)
                    .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?
            }
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| VerifyError::Malformed("invalid signature encoding"))?;
        let signed = &token[..header_and_payload_len(token)];
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| VerifyError::Signature)?;
        if let Some(reason) = self.inner.revoked.key_revoked(&kid) {
            return Err(VerifyError::Revoked(reason));
        }
        let claims = decode(payload)?;
        let mut verified = self.check_claims(claims)?;
        verified.bound = check_binding(&verified.claims, client_cert)?;
        Ok(verified)
    }

    fn check_claims(&self, claims: Value) -> Result<VerifiedJwt, VerifyError> {
        let (issuer, trust_domain) = self
            .inner
            .keys
            .read()
            .map(|k| (k.issuer.clone(), k.trust_domain.clone()))
            .unwrap_or_default();
        let text = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
        if text("iss") != issuer {
            return Err(VerifyError::Issuer(text("iss")));
        }
        if text("env") != self.inner.env {
            return Err(VerifyError::Environment(text("env")));
        }
        let audience_ok = match &claims["aud"] {
            Value::Array(a) => a.iter().any(|v| v == self.inner.audience.as_str()),
            Value::String(s) => *s == self.inner.audience,
            _ => false,
        };
        if !audience_ok {
            return Err(VerifyError::Audience(self.inner.audience.clone()));
        }
        let now = now();
        let leeway = self.inner.leeway.as_secs() as i64;
        let (Some(exp), Some(nbf), Some(iat)) = (
            claims["exp"].as_i64(),
            claims["nbf"].as_i64(),
            claims["iat"].as_i64(),
        ) else {
            return Err(VerifyError::Malformed("exp, nbf and iat are required"));
        };
        if exp + leeway <= now {
            return Err(VerifyError::Expired);
        }
        if nbf - leeway > now {
            return Err(VerifyError::NotYetValid);
        }
        let sub = text("sub");
        let prefix = format!("spiffe://{trust_domain}/");
        let Some(name) = sub.strip_prefix(&prefix).filter(|n| !n.is_empty()) else {
            return Err(VerifyError::Subject(sub, trust_domain));
        };
        let jti = text("jti");
        let identity = format!("{}/{name}", self.inner.env);
        if let Some(reason) = self
            .inner
            .revoked
            .jwt_revoked(&jti, &identity, &self.inner.env, iat)
        {
            return Err(VerifyError::Revoked(reason));
        }
        Ok(VerifiedJwt {
            spiffe_id: sub.clone(),
            jti,
            scopes: text("scope")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            expires_at: exp,
            bound: false,
            claims,
        })
    }

    /// The revocation state this verifier consults.
    pub fn revocations(&self) -> &RevocationWatcher {
        &self.inner.revoked
    }

    /// Keeps this verifier's revocation state current through `session`;
    /// see [`RevocationWatcher::follow`].
    pub fn follow_revocations(&self, session: WorkloadClient) -> tokio::task::JoinHandle<()> {
        self.inner.revoked.follow(session)
    }
}

/// Checks a token's `cnf` against the certificate it came with: `Ok(true)`
/// when bound to exactly `client_cert`, `Ok(false)` for a bearer token.
fn check_binding(claims: &Value, client_cert: Option<&[u8]>) -> Result<bool, VerifyError> {
    let cnf = &claims["cnf"];
    if cnf.is_null() {
        return Ok(false);
    }
    // A `cnf` this verifier does not understand (another confirmation
    // method) cannot be honoured: refuse rather than treat it as bearer.
    let bound_to = cnf["x5t#S256"]
        .as_str()
        .ok_or(VerifyError::Malformed("cnf without x5t#S256"))?;
    let cert = client_cert.ok_or(VerifyError::BindingRequired)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert);
    if URL_SAFE_NO_PAD.encode(digest.as_ref()) != bound_to {
        return Err(VerifyError::BoundToAnotherCertificate);
    }
    Ok(true)
}

/// Length of `header.payload` in a compact JWS.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_jwks() {
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1",
            "x":"elCwg9VLXwxkMZtfjccKYBiV4TjTCxHgnU3pMRNQxPY",
            "y":"k7AhL9m3WQ9yuznlecChaF-mrSFwwF6rXnJZofuEOuw"},
            {"kty":"RSA","kid":"k2","n":"x","e":"AQAB"}]}"#;
        let keys = parse_keys(jwks);
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["k1"].len(), 65);
        assert!(parse_keys("not json").is_empty());
    }

    #[test]
    fn binding_is_checked_against_the_presented_certificate() {
        let cert = b"certificate der";
        let x5t = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert));
        let bound = serde_json::json!({"cnf": {"x5t#S256": x5t}});
        assert_eq!(check_binding(&bound, Some(cert)), Ok(true));
        assert_eq!(
            check_binding(&bound, None),
            Err(VerifyError::BindingRequired)
        );
        assert_eq!(
            check_binding(&bound, Some(b"another")),
            Err(VerifyError::BoundToAnotherCertificate)
        );
        let bearer = serde_json::json!({"sub": "x"});
        assert_eq!(check_binding(&bearer, None), Ok(false));
        assert_eq!(check_binding(&bearer, Some(cert)), Ok(false));
        let unknown = serde_json::json!({"cnf": {"jkt": "abc"}});
        assert!(matches!(
            check_binding(&unknown, Some(cert)),
            Err(VerifyError::Malformed(_))
        ));
    }
}
