//! Plain HTTP endpoints: per-environment OIDC discovery, JWKS and SPIFFE
//! bundle, plus health checks. Everything here is public key material.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::broker::Broker;
use crate::keys::EnvironmentKeys;
use crate::model::{EnvName, unix_now};
use crate::revocation::crl::{self, RevokedCert};
use crate::revocation::{CredentialFacts, Target};

/// The HTTP router.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/{env}/.well-known/openid-configuration", get(discovery))
        .route("/{env}/jwks.json", get(jwks))
        .route("/{env}/bundle", get(bundle))
        .route("/{env}/crl", get(crl))
        .with_state(broker)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(broker): State<Arc<Broker>>) -> Response {
    match broker.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

fn env_keys(broker: &Broker, env: &str) -> Option<Arc<EnvironmentKeys>> {
    EnvName::new(env)
        .ok()
        .and_then(|name| broker.keys.env(&name))
}

fn unknown_env(env: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("environment {env:?} is not served here")})),
    )
        .into_response()
}

/// Key material relying parties may cache for the environment's refresh
/// hint: short enough that a prepared key is known before it signs.
fn cached_json(value: Value, content_type: &'static str, keys: &EnvironmentKeys) -> Response {
    let cache_control = format!("public, max-age={}", keys.refresh_hint.as_secs());
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, cache_control),
        ],
        value.to_string(),
    )
        .into_response()
}

async fn discovery(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    let Some(keys) = env_keys(&broker, &env) else {
        return unknown_env(&env);
    };
    let issuer = broker.issuer(&env);
    cached_json(
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks.json"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "env", "scope", "cnf"],
        }),
        "application/json",
        &keys,
    )
}

async fn jwks(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    match env_keys(&broker, &env) {
        Some(keys) => cached_json(keys.jwks("sig"), "application/jwk-set+json", &keys),
        None => unknown_env(&env),
    }
}

/// SPIFFE trust bundle in JWKS form (SPIFFE Trust Domain and Bundle §4).
async fn bundle(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    match env_keys(&broker, &env) {
        Some(keys) => cached_json(keys.spiffe_bundle(), "application/json", &keys),
        None => unknown_env(&env),
    }
}

/// The environment's CRL (DER), signed by its CA.
async fn crl(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    let Some(keys) = env_keys(&broker, &env) else {
        return unknown_env(&env);
    };
    let now = unix_now();
    let version = broker.revocations.version();
    let der = match broker.crls.current(&env, version, now) {
        Some(der) => der,
        None => match build_crl(&broker, &keys, now).await {
            Ok(der) => broker.crls.store(&env, version, now, der),
            Err(e) => {
                tracing::error!(error = %e, env, "cannot build CRL");
                return (StatusCode::SERVICE_UNAVAILABLE, "CRL unavailable\n").into_response();
            }
        },
    };
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        der.as_ref().clone(),
    )
        .into_response()
}

async fn build_crl(broker: &Broker, keys: &EnvironmentKeys, now: i64) -> Result<Vec<u8>, String> {
    // Certificates issued a moment ago are in the audit log once it flushes.
    broker.audit.flush().await.map_err(|e| e.to_string())?;
    let issued = broker
        .store
        .issued_certificates(keys.env.name.as_str(), now)
        .await
        .map_err(|e| e.to_string())?;
    let revoked: Vec<RevokedCert> = issued
        .iter()
        .filter_map(|cert| {
            let Ok(Target::Identity(identity)) = Target::parse("identity", &cert.identity) else {
                return None;
            };
            let owner = broker.registry.get(&identity).map(|i| i.owner.clone());
            let rev = broker.revocations.covers(&CredentialFacts {
                jti: None,
                serial: Some(&cert.serial),
                identity: &identity,
                owner: owner.as_deref(),
                issued_at: cert.issued_at,
                signed_by: None,
            })?;
            Some(RevokedCert {
                serial: cert.serial.clone(),
                revoked_at: rev.revoked_at,
            })
        })
        .collect();
    let number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let ca = keys.signing_ca(now).map_err(|e| e.to_string())?;
    crl::build(ca, &revoked, number, now).map_err(|e| e.to_string())
}
