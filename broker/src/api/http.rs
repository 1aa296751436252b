//! Plain HTTP endpoints: per-environment OIDC discovery, JWKS and SPIFFE
//! bundle, plus health checks: public key material. The operators' web
//! inventory (`/ui`, signed-in sessions only) is merged in from [`crate::ui`].

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
use crate::revocation::crl;

/// The HTTP router.
pub fn router(broker: Arc<Broker>) -> Router {
    let public_url = broker.config.public_url();
    let ui = match crate::ui::config::unavailable(
        &broker.config.ui,
        broker.config.http_listen,
        &public_url,
    ) {
        None => crate::ui::router(),
        Some(why) => {
            tracing::warn!("{why}");
            Router::new()
        }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/{env}/.well-known/openid-configuration", get(discovery))
        .route("/{env}/jwks.json", get(jwks))
        .route("/{env}/bundle", get(bundle))
        .route("/{env}/crl", get(crl))
        .route("/metrics", get(crate::metrics::render::handler))
        .merge(ui)
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

fn env_keys(broker: &Broker, env: &str) -> Option<Arc<EnvironmentKeys>> {
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
        None => {
            // One build at a time; whoever waited finds it in the cache.
            let _building = broker.crls.building.lock().await;
            match broker.crls.current(&env, version, now) {
                Some(der) => der,
                None => match build_crl(&broker, &keys, now).await {
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
    let ca = keys.signing_ca(now).map_err(|e| e.to_string())?;
    crl::build(ca, &revoked, number, now).map_err(|e| e.to_string())
}
