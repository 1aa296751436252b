//! JWT-SVID minting: ES256 compact JWS, signed with the environment's key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;

use crate::keys::{JwtSigningKey, KeyError};
use crate::model::{Audience, EnvName, Scope, SpiffeId};

/// Proof-of-possession confirmation (RFC 8705 §3.1).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Confirmation {
    /// base64url SHA-256 of the DER client certificate the JWT is bound to.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

impl Confirmation {
    /// Binds to the DER certificate `cert`.
    pub fn for_certificate(cert: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(digest.as_ref());
        Self::from_sha256(&sha256)
    }

    /// Binds to the certificate whose SHA-256 is `digest`.
    pub fn from_sha256(digest: &[u8; 32]) -> Self {
        Self {
            x5t_s256: URL_SAFE_NO_PAD.encode(digest),
        }
    }
}

/// The claims of a JWT-SVID.
#[derive(Debug, Clone, Serialize)]
pub struct JwtClaims {
    /// Issuer: `{public_url}/{env}`.
    pub iss: String,
    /// Subject: the SPIFFE ID.
    pub sub: String,
    /// Audiences, always an array.
    pub aud: Vec<String>,
    /// Expiry (unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Unique id, for revocation and audit.
    pub jti: String,
    /// Environment.
    pub env: String,
    /// Space-separated scopes (RFC 8693 §4.2); omitted when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Certificate binding when issued over mTLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// What to put in a JWT; [`mint`] fills in the rest.
#[derive(Debug, Clone)]
pub struct JwtSpec<'a> {
    /// Issuer URL.
    pub issuer: &'a str,
    /// Subject.
    pub spiffe_id: &'a SpiffeId,
    /// Environment.
    pub env: &'a EnvName,
    /// Granted audiences.
    pub audiences: &'a [Audience],
    /// Granted scopes.
    pub scopes: &'a [Scope],
    /// Lifetime in seconds.
    pub ttl_seconds: i64,
    /// Certificate binding.
    pub cnf: Option<Confirmation>,
}

/// A signed JWT with the claims it carries.
#[derive(Debug, Clone)]
pub struct MintedJwt {
    /// The compact JWS.
    pub token: String,
    /// Its claims.
    pub claims: JwtClaims,
}

/// Signs a JWT-SVID at unix time `now`.
pub fn mint(key: &JwtSigningKey, spec: JwtSpec<'_>, now: i64) -> Result<MintedJwt, KeyError> {
    let jti = super::ids::time_ordered_id(crate::model::unix_now_ms())?;
    let claims = JwtClaims {
        iss: spec.issuer.to_owned(),
        sub: spec.spiffe_id.to_string(),
        aud: spec.audiences.iter().map(|a| a.to_string()).collect(),
        exp: now + spec.ttl_seconds,
        iat: now,
        nbf: now,
        jti: URL_SAFE_NO_PAD.encode(jti),
        env: spec.env.to_string(),
        scope: (!spec.scopes.is_empty()).then(|| {
            spec.scopes
                .iter()
                .map(Scope::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        }),
        cnf: spec.cnf,
    };
    let mut token = key.encoded_header().to_owned();
    token.push('.');
    let payload = serde_json::to_vec(&claims).map_err(|e| KeyError::BadKey(e.to_string()))?;
    token.push_str(&URL_SAFE_NO_PAD.encode(payload));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(MintedJwt { token, claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_has_expected_shape() {
        let (key, _) = JwtSigningKey::generate().unwrap();
        let id = SpiffeId::parse("spiffe://dev.example.org/api").unwrap();
        let env = EnvName::new("dev").unwrap();
        let aud = [Audience::new("billing").unwrap()];
        let scopes = [Scope::new("a").unwrap(), Scope::new("b").unwrap()];
        let minted = mint(
            &key,
            JwtSpec {
                issuer: "http://127.0.0.1:7080/dev",
                spiffe_id: &id,
                env: &env,
                audiences: &aud,
                scopes: &scopes,
                ttl_seconds: 300,
                cnf: Some(Confirmation::for_certificate(b"cert")),
            },
            1000,
        )
        .unwrap();
        let parts: Vec<&str> = minted.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "spiffe://dev.example.org/api");
        assert_eq!(claims["scope"], "a b");
        assert_eq!(claims["exp"], 1300);
        assert!(claims["cnf"]["x5t#S256"].is_string());
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
    }
}
