//! Plain HTTP endpoints: per-environment OIDC discovery, JWKS and SPIFFE
//! bundle, plus health checks. Everything here is public key material.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::broker::Broker;
use crate::keys::EnvironmentKeys;
use crate::model::{EnvName, unix_now};
use crate::revocation::crl;

/// How long relying parties may cache key material (seconds).
const CACHE_SECONDS: u32 = 300;
const CACHE_CONTROL: &str = "public, max-age=300";

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

/// A readiness probe commits a write; it may take this long.
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// One probe's verdict answers every `/readyz` for this long, so polling
/// the endpoint cannot turn into a stream of fsyncs.
const READY_PROBE_REUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The last probe (when, verdict); the lock also makes concurrent
/// requests wait for one probe instead of each running their own.
static LAST_PROBE: tokio::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>> =
    tokio::sync::Mutex::const_new(None);

/// Ready when the store can commit a write within [`READY_PROBE_TIMEOUT`].
async fn readyz(State(broker): State<Arc<Broker>>) -> Response {
    let mut last = LAST_PROBE.lock().await;
    let verdict = match last.as_ref() {
        Some((at, verdict)) if at.elapsed() < READY_PROBE_REUSE => verdict.clone(),
        _ => {
            let verdict = match tokio::time::timeout(READY_PROBE_TIMEOUT, broker.store.ping()).await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no commit within {}",
                    humantime::format_duration(READY_PROBE_TIMEOUT)
                )),
            };
            *last = Some((std::time::Instant::now(), verdict.clone()));
            verdict
        }
    };
    drop(last);
    match verdict {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: the store cannot commit");
            (StatusCode::SERVICE_UNAVAILABLE, "store cannot commit\n").into_response()
        }
    }
}

fn env_keys<'a>(broker: &'a Broker, env: &str) -> Option<&'a Arc<EnvironmentKeys>> {
    EnvName::new(env)
        .ok()
        .and_then(|name| broker.keys.env(&name))
}

fn unknown_env(env: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("environment {} is not served here", super::limits::quote(env))})),
    )
        .into_response()
}

fn cached_json(value: Value, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        value.to_string(),
    )
        .into_response()
}

async fn discovery(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    if env_keys(&broker, &env).is_none() {
        return unknown_env(&env);
    }
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
    )
}

async fn jwks(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    match env_keys(&broker, &env) {
        Some(keys) => cached_json(
            json!({ "keys": [keys.jwt.jwk("sig")] }),
            "application/jwk-set+json",
        ),
        None => unknown_env(&env),
    }
}

/// SPIFFE trust bundle in JWKS form (SPIFFE Trust Domain and Bundle §4).
async fn bundle(State(broker): State<Arc<Broker>>, Path(env): Path<String>) -> Response {
    match env_keys(&broker, &env) {
        Some(keys) => {
            let ca = json!({
                "kty": "EC",
                "crv": "P-256",
                "use": "x509-svid",
                "x5c": [STANDARD.encode(keys.ca.cert_der())],
            });
            let mut ca = ca;
            if let (Some(obj), Some(point)) = (ca.as_object_mut(), ec_point(keys)) {
                obj.insert("x".into(), point.0.into());
                obj.insert("y".into(), point.1.into());
            }
            cached_json(
                json!({
                    "keys": [ca, keys.jwt.jwk("jwt-svid")],
                    "spiffe_refresh_hint": CACHE_SECONDS,
                    "spiffe_sequence": 1,
                }),
                "application/json",
            )
        }
        None => unknown_env(&env),
    }
}

/// The CA's public point as base64url x and y, read from its certificate.
fn ec_point(keys: &EnvironmentKeys) -> Option<(String, String)> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (_, cert) = x509_parser::parse_x509_certificate(keys.ca.cert_der()).ok()?;
    let point = cert.public_key().subject_public_key.data.as_ref();
    (point.len() == 65 && point[0] == 4).then(|| {
        (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        )
    })
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
        None => {
            // One build at a time; whoever waited finds it in the cache.
            let _building = broker.crls.building.lock().await;
            match broker.crls.current(&env, version, now) {
                Some(der) => der,
                None => match build_crl(&broker, keys, now).await {
                    Ok(der) => broker.crls.store(&env, version, now, der),
                    Err(e) => {
                        tracing::error!(error = %e, env, "cannot build CRL");
                        return (StatusCode::SERVICE_UNAVAILABLE, "CRL unavailable\n")
                            .into_response();
                    }
                },
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        // Shared, not copied: the cached CRL can be megabytes.
        der,
    )
        .into_response()
}

async fn build_crl(broker: &Broker, keys: &EnvironmentKeys, now: i64) -> Result<Vec<u8>, String> {
    // Certificates issued a moment ago are in the audit log once it flushes.
    broker.audit.flush().await.map_err(|e| e.to_string())?;
    let live = broker.revocations.after(0);
    let revoked = broker
        .crls
        .covered
        .revoked_in(broker.store.as_ref(), &live, keys.env.name.as_str(), now)
        .await
        .map_err(|e| e.to_string())?;
    let number = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    crl::build(&keys.ca, &revoked, number, now).map_err(|e| e.to_string())
}
