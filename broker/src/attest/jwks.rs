//! An issuer's JSON Web Key Set: where it comes from (file, URL, OIDC
//! discovery), the keys it holds (RS256 and ES256 only, verified with
//! `ring`), and a cache refreshed when it is old or when a token names a
//! `kid` it lacks — at most once per `min_refresh`, so a stream of tokens
//! with made-up `kid`s cannot turn the broker into a JWKS hammer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use credbroker_client::http::{FetchError, HttpFetcher};

/// Keys older than this are re-fetched before use (failures keep the old
/// set), so a key the issuer withdrew stops being trusted within minutes.
const MAX_AGE: Duration = Duration::from_secs(5 * 60);
/// Most keys taken from one JWKS.
const MAX_KEYS: usize = 64;

/// Signature algorithms accepted for JWT evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// Parses a JOSE `alg`; anything but RS256 and ES256 (`none`, HS*, …)
    /// is refused.
    pub fn parse(alg: &str) -> Result<Self, String> {
        match alg {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "none" => Err("unsigned JWT (alg \"none\") refused".into()),
            a if a.starts_with("HS") => Err(format!(
                "JWT algorithm {a:?} refused: HMAC is never accepted for platform tokens"
            )),
            a => Err(format!(
                "unsupported JWT algorithm {a:?} (RS256 or ES256 accepted)"
            )),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { point: Vec<u8> },
}

/// One usable verification key.
#[derive(Debug, Clone)]
pub struct Jwk {
    kid: Option<String>,
    material: KeyMaterial,
}

impl Jwk {
    fn from_raw(raw: RawJwk) -> Option<Self> {
        if raw.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let b64 = |v: &Option<String>| v.as_deref().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
        let material = match raw.kty.as_str() {
            "RSA" if raw.alg.as_deref().is_none_or(|a| a == "RS256") => {
                let (n, e) = (b64(&raw.n)?, b64(&raw.e)?);
                // Below 2048 bits is refused outright.
                if n.iter().skip_while(|b| **b == 0).count() < 256 {
                    return None;
                }
                KeyMaterial::Rsa { n, e }
            }
            "EC" if raw.crv.as_deref() == Some("P-256")
                && raw.alg.as_deref().is_none_or(|a| a == "ES256") =>
            {
                let (x, y) = (b64(&raw.x)?, b64(&raw.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::P256 { point }
            }
            _ => return None,
        };
        Some(Self {
            kid: raw.kid,
            material,
        })
    }

    fn alg(&self) -> Alg {
        match self.material {
            KeyMaterial::Rsa { .. } => Alg::Rs256,
            KeyMaterial::P256 { .. } => Alg::Es256,
        }
    }

    /// Whether `signature` over `message` verifies with this key under `alg`.
    /// A key of another type never verifies (so a token cannot pick how its
    /// key is used).
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match (&self.material, alg) {
            (KeyMaterial::Rsa { n, e }, Alg::Rs256) => RsaPublicKeyComponents { n, e }
                .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            (KeyMaterial::P256 { point }, Alg::Es256) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// Parses a JWK Set, keeping the RS256/ES256 signing keys and skipping the
/// rest (an issuer may publish encryption keys or other types).
pub fn parse_jwks(json: &[u8]) -> Result<Vec<Jwk>, String> {
    let raw: RawJwks = serde_json::from_slice(json).map_err(|e| format!("not a JWK Set: {e}"))?;
    let keys: Vec<Jwk> = raw
        .keys
        .into_iter()
        .take(MAX_KEYS)
        .filter_map(|v| serde_json::from_value::<RawJwk>(v).ok())
        .filter_map(Jwk::from_raw)
        .collect();
    Ok(keys)
}

/// Where the keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A local file, re-read on refresh.
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
    /// `{issuer}/.well-known/openid-configuration` → `jwks_uri`.
    Discovery(String),
}

#[derive(Debug, Default)]
struct Cached {
    keys: Arc<Vec<Jwk>>,
    fetched: Option<Instant>,
}

/// The keys of one issuer, fetched on demand.
#[derive(Debug)]
pub struct JwksCache {
    source: JwksSource,
    http: HttpFetcher,
    min_refresh: Duration,
    cached: RwLock<Cached>,
    /// Time of the last fetch attempt (success or not); one fetch at a time.
    last_attempt: Mutex<Option<Instant>>,
}

/// Why no key verified a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key with that `kid` (after a refresh, if one was allowed).
    #[error("unknown signing key (kid {0})")]
    UnknownKid(String),
    /// The issuer's keys could not be fetched and none are cached.
    #[error("the issuer's keys are unavailable: {0}")]
    Unavailable(String),
}

impl JwksCache {
    /// A cache over `source`; `http` is used for URL and discovery sources.
    pub fn new(source: JwksSource, http: HttpFetcher, min_refresh: Duration) -> Self {
        Self {
            source,
            http,
            min_refresh,
            cached: RwLock::new(Cached::default()),
            last_attempt: Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<Vec<Jwk>, String> {
        let body = match &self.source {
            JwksSource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            JwksSource::Url(url) => self.http.get(url).await.map_err(fetch_err)?,
            JwksSource::Discovery(issuer) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                let doc = self.http.get(&url).await.map_err(fetch_err)?;
                let doc: serde_json::Value =
                    serde_json::from_slice(&doc).map_err(|e| format!("{url}: not JSON: {e}"))?;
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("{url}: no jwks_uri"))?;
                self.http.get(jwks_uri).await.map_err(fetch_err)?
            }
        };
        parse_jwks(&body)
    }

    /// Fetches now unless a fetch happened within `min_refresh`; returns
    /// whether the cached keys changed (i.e. a fetch succeeded).
    pub async fn refresh(&self, force_interval: Duration) -> bool {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|at| at.elapsed() < force_interval) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(source = ?self.source, keys = keys.len(), "JWKS loaded");
                let mut cached = self.cached.write().await;
                cached.keys = Arc::new(keys);
                cached.fetched = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(source = ?self.source, error = %e, "JWKS fetch failed");
                false
            }
        }
    }

    async fn current(&self) -> (Arc<Vec<Jwk>>, Option<Instant>) {
        let c = self.cached.read().await;
        (Arc::clone(&c.keys), c.fetched)
    }

    /// Verifies `signature` over `message` with the key named `kid` (or, with
    /// no `kid`, any key of the algorithm). Unknown `kid` → one rate-limited
    /// refresh, then retry.
    pub async fn verify(
        &self,
        kid: Option<&str>,
        alg: Alg,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, KeyError> {
        let (mut keys, fetched) = self.current().await;
        if fetched.is_none_or(|at| at.elapsed() > MAX_AGE) {
            // First use or stale: fetch, but at most once per min_refresh;
            // a failed fetch keeps the keys already held.
            if self.refresh(self.min_refresh).await {
                keys = self.current().await.0;
            }
        }
        if self.current().await.1.is_none() {
            return Err(KeyError::Unavailable(format!(
                "no JWKS could be loaded from {:?}",
                self.source
            )));
        }
        let candidates = |keys: &[Jwk]| -> Vec<Jwk> {
            keys.iter()
                .filter(|k| k.alg() == alg)
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .cloned()
                .collect()
        };
        let mut found = candidates(&keys);
        if found.is_empty() && self.refresh(self.min_refresh).await {
            found = candidates(&self.current().await.0);
        }
        if found.is_empty() {
            return Err(KeyError::UnknownKid(format!(
                "{:?} for {}",
                kid.unwrap_or("<none>"),
                alg.as_str()
            )));
        }
        Ok(found.iter().any(|k| k.verify(alg, message, signature)))
    }
}

fn fetch_err(e: FetchError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_are_an_allow_list() {
        assert_eq!(Alg::parse("RS256"), Ok(Alg::Rs256));
        assert_eq!(Alg::parse("ES256"), Ok(Alg::Es256));
        assert!(Alg::parse("none").unwrap_err().contains("unsigned"));
        assert!(Alg::parse("HS256").unwrap_err().contains("HMAC"));
        assert!(Alg::parse("PS512").unwrap_err().contains("unsupported"));
    }

    #[test]
    fn jwks_keeps_only_usable_signing_keys() {
        let x = URL_SAFE_NO_PAD.encode([1u8; 32]);
        let short_n = URL_SAFE_NO_PAD.encode([0xffu8; 128]);
        let json = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "x": x, "y": x},
            {"kty": "EC", "crv": "P-384", "kid": "b", "x": x, "y": x},
            {"kty": "RSA", "kid": "c", "n": short_n, "e": "AQAB"},
            {"kty": "oct", "kid": "d", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "e", "use": "enc", "x": x, "y": x},
            "garbage"
        ]});
        let keys = parse_jwks(json.to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert!(parse_jwks(b"[]").is_err());
    }
}
