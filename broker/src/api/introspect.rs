//! `Introspect`: is a JWT-SVID or X.509-SVID active right now? RFC 7662
//! semantics (an inactive answer carries no claims), plus the reason.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_proto::v1::{IntrospectResponse, introspect_request};
use serde_json::Value;

use super::peer::{issued_at, serial_hex, spiffe_id_of};
use crate::broker::Broker;
use crate::issue::Confirmation;
use crate::model::{EnvName, IdentityKey, IdentityStatus, SpiffeId};
use crate::revocation::CredentialFacts;

fn inactive(reason: impl Into<String>) -> IntrospectResponse {
    IntrospectResponse {
        active: false,
        reason: reason.into(),
        ..IntrospectResponse::default()
    }
}

/// Answers for `credential` at unix time `now`, for a caller that may see
/// credentials of `scope` only (`None`: the admin, who sees all). A token
/// bound to a certificate is inactive when `presented` (the DER certificate
/// it came with) is another one.
pub(super) fn introspect(
    broker: &Broker,
    credential: Option<introspect_request::Credential>,
    presented: Option<&[u8]>,
    now: i64,
    scope: Option<&EnvName>,
) -> IntrospectResponse {
    let answer = match credential {
        Some(introspect_request::Credential::Token(token)) => {
            token_status(broker, &token, presented, now)
        }
        Some(introspect_request::Credential::Certificate(der)) => cert_status(broker, &der, now),
        None => inactive("no credential given"),
    };
    // A workload learns nothing about another environment's credentials,
    // not even whether they exist.
    match scope {
        Some(env) if answer.active && answer.env != env.as_str() => {
            inactive("not a credential of the caller's environment")
        }
        _ => answer,
    }
}

/// Why the identity behind an otherwise valid credential is not in service
/// — including a workload whose node is out of service: what a disabled
/// node's agent holds is dead too.
fn identity_inactive(broker: &Broker, identity: &IdentityKey, now: i64) -> Option<String> {
    let id = match broker.registry.get(identity) {
        None => return Some(format!("identity {identity} no longer exists")),
        Some(id) => id,
    };
    if let status @ (IdentityStatus::Disabled | IdentityStatus::Retired | IdentityStatus::Expired) =
        id.status(now)
    {
        return Some(format!("identity {identity} is {status}"));
    }
    let node = id.parent.as_ref()?;
    match broker.registry.get(node).map(|n| n.status(now)) {
        Some(IdentityStatus::Active) => None,
        Some(status) => Some(format!("its node {node} is {status}")),
        None => Some(format!("its node {node} no longer exists")),
    }
}

fn decode_json(part: &str) -> Option<Value> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
}

fn revoked(broker: &Broker, facts: CredentialFacts<'_>) -> Option<String> {
    broker
        .revocations
        .covers(&facts)
        .map(|r| format!("revoked: {}", r.reason))
}

fn token_status(
    broker: &Broker,
    token: &str,
    presented: Option<&[u8]>,
    now: i64,
) -> IntrospectResponse {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return inactive("not a compact JWS");
    };
    let Some(header) = decode_json(header) else {
        return inactive("malformed header");
    };
    if header["alg"] != "ES256" {
        return inactive(format!("algorithm {} is not accepted", header["alg"]));
    }
    let Some(env) = header["kid"].as_str().and_then(|kid| {
        broker
            .keys
            .envs()
            .into_iter()
            .find_map(|e| e.jwt_key(kid).cloned().map(|key| (e, key)))
    }) else {
        return inactive("unknown signing key");
    };
    let (env, key) = env;
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return inactive("malformed signature");
    };
    let signed = &token[..token.len() - parts[2].len() - 1];
    if !key.verify(signed.as_bytes(), &signature) {
        return inactive("invalid signature");
    }
    let Some(claims) = decode_json(payload) else {
        return inactive("malformed claims");
    };
    let env_name = env.env.name.as_str();
    if claims["env"] != env_name || claims["iss"] != broker.issuer(env_name).as_str() {
        return inactive("issuer or environment does not match the signing key");
    }
    let (Some(exp), Some(nbf), Some(iat)) = (
        claims["exp"].as_i64(),
        claims["nbf"].as_i64(),
        claims["iat"].as_i64(),
    ) else {
        return inactive("missing exp, nbf or iat");
    };
    if exp <= now {
        return inactive("expired");
    }
    if nbf > now {
        return inactive("not yet valid");
    }
    let Some(spiffe_id) = claims["sub"].as_str().and_then(|s| SpiffeId::parse(s).ok()) else {
        return inactive("malformed subject");
    };
    if spiffe_id.trust_domain() != &env.env.trust_domain {
        return inactive("subject is not in the signing key's trust domain");
    }
    let identity = IdentityKey {
        env: env.env.name.clone(),
        name: spiffe_id.path().clone(),
    };
    let owner = broker.registry.get(&identity).map(|i| i.owner.clone());
    let jti = claims["jti"].as_str().unwrap_or_default();
    if let Some(reason) = revoked(
        broker,
        CredentialFacts {
            jti: Some(jti),
            serial: None,
            identity: &identity,
            owner: owner.as_deref(),
            issued_at: iat,
            signed_by: header["kid"].as_str(),
        },
    ) {
        return inactive(reason);
    }
    if let Some(reason) = identity_inactive(broker, &identity, now) {
        return inactive(reason);
    }
    let cnf = claims["cnf"]["x5t#S256"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(cert) = presented
        && !cnf.is_empty()
        && cnf != Confirmation::for_certificate(cert).x5t_s256
    {
        return inactive("bound to another certificate than the one presented");
    }
    let aud = match &claims["aud"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    };
    IntrospectResponse {
        active: true,
        reason: String::new(),
        sub: spiffe_id.to_string(),
        env: env_name.to_owned(),
        jti: jti.to_owned(),
        serial: String::new(),
        exp,
        aud,
        scope: claims["scope"].as_str().unwrap_or_default().to_owned(),
        cnf_x5t_s256: cnf,
    }
}

fn cert_status(broker: &Broker, der: &[u8], now: i64) -> IntrospectResponse {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return inactive("not a DER certificate");
    };
    let spiffe_id = match spiffe_id_of(&cert) {
        Ok(id) => id,
        Err(e) => return inactive(e),
    };
    let Some(env) = broker.keys.env_for_trust_domain(spiffe_id.trust_domain()) else {
        return inactive("trust domain is not served here");
    };
    let Some((signer, _)) = env.ca_that_signed(&cert) else {
        return inactive("not issued by the environment's CA");
    };
    let validity = cert.validity();
    if now >= validity.not_after.timestamp() {
        return inactive("expired");
    }
    if now < validity.not_before.timestamp() {
        return inactive("not yet valid");
    }
    let identity = IdentityKey {
        env: env.env.name.clone(),
        name: spiffe_id.path().clone(),
    };
    let owner = broker.registry.get(&identity).map(|i| i.owner.clone());
    let serial = serial_hex(&cert);
    if let Some(reason) = revoked(
        broker,
        CredentialFacts {
            jti: None,
            serial: Some(&serial),
            identity: &identity,
            owner: owner.as_deref(),
            issued_at: issued_at(&cert),
            signed_by: Some(&signer.id),
        },
    ) {
        return inactive(reason);
    }
    if let Some(reason) = identity_inactive(broker, &identity, now) {
        return inactive(reason);
    }
    IntrospectResponse {
        active: true,
        reason: String::new(),
        sub: spiffe_id.to_string(),
        env: env.env.name.to_string(),
        jti: String::new(),
        serial,
        exp: validity.not_after.timestamp(),
        aud: vec![],
        scope: String::new(),
        cnf_x5t_s256: String::new(),
    }
}
