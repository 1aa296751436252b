//! The one signature-and-claims check every JWT attestor (Kubernetes,
//! OIDC) goes through. Nothing from the payload is believed before the
//! signature verified, except `iss` in [`unverified_issuer`], which only
//! picks the attestor whose keys will then check it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::AttestError;
use super::config::{AttestorConfig, DEFAULT_JWKS_MIN_REFRESH, DEFAULT_MAX_TOKEN_LIFETIME};
use super::jwks::{Alg, JwksCache, JwksSource, KeyError};
use crate::config::ConfigError;
use crate::model::EnvName;
use credbroker_client::http::HttpFetcher;

/// Largest JWT accepted as evidence.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: i64 = 30;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct JwtPolicy {
    /// `iss`, exactly.
    pub issuer: String,
    /// A value `aud` must contain.
    pub audience: String,
    /// Longest `exp - iat`.
    pub max_lifetime: Duration,
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    /// Every claim.
    pub claims: Map<String, Value>,
    /// `jti`, if any.
    pub jti: Option<String>,
    /// `sub`, if any.
    pub sub: Option<String>,
    /// `exp`.
    pub exp: i64,
}

impl VerifiedJwt {
    /// A non-secret name for logs and audit: `jti=… sub=…`.
    pub fn evidence_id(&self) -> String {
        format!(
            "jti={} sub={}",
            self.jti.as_deref().unwrap_or("-"),
            self.sub.as_deref().unwrap_or("-")
        )
    }
}

struct Parts<'a> {
    signed: &'a str,
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut it = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err("token is not a compact JWS (header.payload.signature)".into());
    };
    Ok(Parts {
        signed: &token[..header.len() + 1 + payload.len()],
        header,
        payload,
        signature,
    })
}

fn json_part(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("token {what} is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| format!("token {what} is not a JSON object"))
}

/// The `iss` of `token`, read WITHOUT verifying anything: only to pick the
/// attestor that will verify it.
pub fn unverified_issuer(token: &str) -> Result<String, String> {
    let parts = split(token)?;
    let payload = json_part(parts.payload, "payload")?;
    payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "token has no iss claim".into())
}

/// Why a token was refused. Messages name the failed check and never
/// contain the token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// Not a well-formed JWS, or a refused algorithm.
    #[error("{0}")]
    Malformed(String),
    /// No key of the issuer verified it.
    #[error("token signature does not verify")]
    BadSignature,
    /// Key lookup failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A claim check failed.
    #[error("{0}")]
    Claims(String),
}

/// Verifies `token`'s signature against `keys`, then its claims against
/// `policy` at unix time `now`.
pub async fn verify_jwt(
    token: &str,
    keys: &JwksCache,
    policy: &JwtPolicy,
    now: i64,
) -> Result<VerifiedJwt, JwtError> {
    let parts = split(token).map_err(JwtError::Malformed)?;
    let header = json_part(parts.header, "header").map_err(JwtError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Malformed("token header has no alg".into()))?;
    let alg = Alg::parse(alg).map_err(JwtError::Malformed)?;
    if header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "token header has crit extensions, which are not supported".into(),
        ));
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let signature = URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| JwtError::Malformed("token signature is not base64url".into()))?;
    if !keys
        .verify(kid, alg, parts.signed.as_bytes(), &signature)
        .await?
    {
        return Err(JwtError::BadSignature);
    }
    // Signed by the issuer: now the payload may be read.
    let claims = json_part(parts.payload, "payload").map_err(JwtError::Malformed)?;
    check_claims(claims, policy, now)
}

fn int_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| JwtError::Claims(format!("{name} is not a number"))),
    }
}

fn check_claims(
    claims: Map<String, Value>,
    policy: &JwtPolicy,
    now: i64,
) -> Result<VerifiedJwt, JwtError> {
    let fail = |m: String| Err(JwtError::Claims(m));
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if iss == policy.issuer => {}
        Some(iss) => return fail(format!("iss {iss:?} is not {:?}", policy.issuer)),
        None => return fail("token has no iss".into()),
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == policy.audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(&policy.audience)),
        _ => false,
    };
    if !aud_ok {
        return fail(format!("aud does not contain {:?}", policy.audience));
    }
    let Some(exp) = int_claim(&claims, "exp")? else {
        return fail("token has no exp".into());
    };
    if exp + LEEWAY_SECONDS <= now {
        return fail("token expired".into());
    }
    if let Some(nbf) = int_claim(&claims, "nbf")?
        && nbf - LEEWAY_SECONDS > now
    {
        return fail("token not yet valid (nbf is in the future)".into());
    }
    let Some(iat) = int_claim(&claims, "iat")? else {
        return fail("token has no iat, so its lifetime cannot be checked".into());
    };
    if iat - LEEWAY_SECONDS > now {
        return fail("token issued in the future (iat)".into());
    }
    let lifetime = exp.saturating_sub(iat);
    let max = policy.max_lifetime.as_secs() as i64;
    if lifetime > max {
        return fail(format!(
            "token lifetime {} exceeds max_token_lifetime {}",
            crate::model::format_duration(Duration::from_secs(lifetime.max(0) as u64)),
            crate::model::format_duration(policy.max_lifetime)
        ));
    }
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok(VerifiedJwt {
        jti: text("jti"),
        sub: text("sub"),
        exp,
        claims,
    })
}

/// A configured JWT issuer: what a Kubernetes or OIDC attestor shares.
#[derive(Debug)]
pub struct JwtIssuer {
    /// Attestor name (selector prefix).
    pub name: String,
    /// Environment served.
    pub env: EnvName,
    /// Claim requirements.
    pub policy: JwtPolicy,
    keys: Arc<JwksCache>,
}

impl JwtIssuer {
    /// Builds the issuer of a validated `[[attestors]]` table.
    pub fn from_config(c: &AttestorConfig) -> Result<Self, ConfigError> {
        let issuer = c.issuer.clone().unwrap_or_default();
        let http = HttpFetcher::new(c.ca_file.as_deref());
        let source = match (&c.jwks_file, &c.jwks_url) {
            (Some(f), _) => JwksSource::File(f.clone()),
            (None, Some(u)) => JwksSource::Url(u.clone()),
            (None, None) => JwksSource::Discovery(issuer.clone()),
        };
        let https = match &source {
            JwksSource::File(_) => false,
            JwksSource::Url(u) => u.starts_with("https://"),
            JwksSource::Discovery(i) => i.starts_with("https://"),
        };
        if https && let Err(e) = http.https_ready() {
            return Err(ConfigError::Invalid(format!(
                "attestor {:?}: {e} (set ca_file, or use jwks_file)",
                c.name
            )));
        }
        Ok(Self {
            name: c.name.clone(),
            env: EnvName::new(&c.environment)?,
            policy: JwtPolicy {
                issuer,
                audience: c.audience.clone().unwrap_or_default(),
                max_lifetime: c.max_token_lifetime.unwrap_or(DEFAULT_MAX_TOKEN_LIFETIME),
            },
            keys: Arc::new(JwksCache::new(
                source,
                http,
                c.jwks_min_refresh.unwrap_or(DEFAULT_JWKS_MIN_REFRESH),
            )),
        })
    }

    /// Starts loading the keys in the background, so an unreachable issuer
    /// neither delays nor stops the broker's start (a failure is logged; the
    /// keys are fetched again on first use).
    pub fn preload(&self) {
        let keys = Arc::clone(&self.keys);
        tokio::spawn(async move { keys.refresh(Duration::ZERO).await });
    }

    /// Verifies `token` for `method`, mapping each failure to a refusal
    /// that names the check.
    pub async fn verify(
        &self,
        method: &'static str,
        token: &str,
        now: i64,
    ) -> Result<VerifiedJwt, AttestError> {
        verify_jwt(token, &self.keys, &self.policy, now)
            .await
            .map_err(|e| match e {
                JwtError::Key(KeyError::Unavailable(why)) => AttestError::Unavailable(format!(
                    "attestor {} cannot check tokens now: {why}",
                    self.name
                )),
                e => AttestError::Rejected {
                    method,
                    attestor: self.name.clone(),
                    why: e.to_string(),
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> JwtPolicy {
        JwtPolicy {
            issuer: "https://iss".into(),
            audience: "credbroker".into(),
            max_lifetime: Duration::from_secs(3600),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn each_claim_check_names_itself() {
        let now = 1_000_000;
        let good = json!({"iss": "https://iss", "aud": ["x", "credbroker"], "exp": now + 600,
                          "iat": now, "nbf": now, "sub": "s", "jti": "j"});
        let ok = check_claims(claims(good.clone()), &policy(), now).unwrap();
        assert_eq!(ok.evidence_id(), "jti=j sub=s");
        let cases = [
            (
                "iss",
                json!("https://other"),
                "iss \"https://other\" is not",
            ),
            ("aud", json!("other"), "aud does not contain \"credbroker\""),
            ("exp", json!(now - 31), "token expired"),
            ("nbf", json!(now + 100), "not yet valid"),
            ("iat", json!(now + 100), "issued in the future"),
            ("iat", json!(now - 7200), "exceeds max_token_lifetime"),
            ("exp", json!("soon"), "exp is not a number"),
        ];
        for (claim, value, needle) in cases {
            let mut c = claims(good.clone());
            c.insert(claim.into(), value);
            let err = check_claims(c, &policy(), now).unwrap_err().to_string();
            assert!(err.contains(needle), "{claim}: {err}");
        }
        let mut c = claims(good);
        c.remove("exp");
        assert!(check_claims(c, &policy(), now).is_err());
    }

    #[test]
    fn issuer_is_read_only_for_routing() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://iss"}"#);
        assert_eq!(
            unverified_issuer(&format!("e30.{payload}.sig")).unwrap(),
            "https://iss"
        );
        assert!(unverified_issuer("a.b").is_err());
        assert!(unverified_issuer(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }
}
