//! JWT verification with `jsonwebtoken` fed the broker's JWKS, as any
//! relying party would do it.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::Value;

/// Verifies `token` against `jwks` for `audience` and `issuer`; returns the
/// claims.
pub fn verify(token: &str, jwks: &Value, audience: &str, issuer: &str) -> Result<Value, String> {
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|e| e.to_string())?;
    let header = decode_header(token).map_err(|e| format!("header: {e}"))?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}
