//! An environment's ES256 JWT signing key. Signing uses ring directly with
//! the key parsed once, which keeps issuance at roughly one signature's cost.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

use super::KeyError;

/// An ES256 signing key with its `kid` (the RFC 7638 JWK thumbprint, so the
/// same key always has the same `kid`).
pub struct JwtSigningKey {
    key_pair: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
    /// The base64url JWS header, the same for every token this key signs.
    encoded_header: String,
    x: String,
    y: String,
}

impl std::fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtSigningKey {
    /// Generates a key, returning it with its PKCS#8 encoding.
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| KeyError::Random)?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Loads a stored PKCS#8 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let key_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = key_pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(KeyError::BadKey(
                "unexpected P-256 public key encoding".into(),
            ));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let kid = thumbprint(&x, &y);
        let header = serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        let encoded_header = URL_SAFE_NO_PAD.encode(header.to_string());
        Ok(Self {
            key_pair,
            rng,
            kid,
            encoded_header,
            x,
            y,
        })
    }

    /// The key id put in the JWT header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The base64url-encoded JWS header (`alg`, `kid`, `typ`) for this key.
    pub fn encoded_header(&self) -> &str {
        &self.encoded_header
    }

    /// Signs `message`, returning the 64-byte `r || s` form JWS wants.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key_pair
            .sign(&self.rng, message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| KeyError::Random)
    }

    /// Whether `signature` (64-byte `r || s`) is this key's over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.key_pair.public_key().as_ref(),
        )
        .verify(message, signature)
        .is_ok()
    }

    /// The public key as a JWK.
    pub fn jwk(&self, use_: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC",
            "crv": "P-256",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "use": use_,
            "alg": "ES256",
        })
    }
}

/// RFC 7638 thumbprint of a P-256 JWK: SHA-256 over the required members in
/// lexicographic order, base64url.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn kid_is_stable_and_signatures_verify() {
        let (key, pkcs8) = JwtSigningKey::generate().unwrap();
        let again = JwtSigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.kid(), again.kid());
        assert_eq!(key.kid().len(), 43);
        let sig = key.sign(b"header.payload").unwrap();
        assert_eq!(sig.len(), 64);
        let public = key.key_pair.public_key().as_ref().to_vec();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
            .verify(b"header.payload", &sig)
            .unwrap();
    }
}
