//! Validation of a new identity: every field checked, with an error naming
//! the field, before anything is stored.

use std::time::Duration;

use super::{Cidr, PolicyError, TtlLimits};
use crate::attest::{AttestorInfo, RESERVED_PREFIX};
use crate::config::Environment;
use crate::model::{
    Audience, EnvName, Identity, IdentityKey, IdentityName, NameSet, Scope, Selector, SpiffeId,
};

/// The fields an operator supplies for a new identity.
#[derive(Debug, Clone, Default)]
pub struct IdentityRequest {
    /// Environment.
    pub env: String,
    /// Name.
    pub name: String,
    /// Owner (required).
    pub owner: String,
    /// Purpose (required).
    pub purpose: String,
    /// `key=value` selectors.
    pub selectors: Vec<(String, String)>,
    /// Allowed audiences.
    pub audiences: Vec<String>,
    /// Allowed scopes.
    pub scopes: Vec<String>,
    /// JWT TTL; `None` = default.
    pub jwt_ttl: Option<Duration>,
    /// X.509 TTL; `None` = default.
    pub x509_ttl: Option<Duration>,
    /// Retirement date (unix seconds).
    pub expires_at: Option<i64>,
    /// `env/name` of the node that serves it, if any.
    pub parent: Option<String>,
    /// Peer networks (CIDR) credential calls may come from; empty = any.
    pub allow_cidrs: Vec<String>,
    /// JWTs bound to the caller's certificate (`cnf`), refused as bearer
    /// tokens.
    pub require_binding: bool,
    /// `alert` or `disable` (empty: `alert`).
    pub on_anomaly: String,
}

fn invalid(msg: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(msg.into())
}

fn text_field(field: &str, value: &str, max: usize) -> Result<String, PolicyError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(value.to_owned())
}

fn ttl(
    field: &str,
    value: Option<Duration>,
    default: Duration,
    floor: Duration,
    ceiling: Duration,
) -> Result<Duration, PolicyError> {
    let value = value.unwrap_or(default);
    if value < floor || value > ceiling {
        return Err(invalid(format!(
            "{field} {} must lie within [{}, {}]",
            crate::model::format_duration(value),
            crate::model::format_duration(floor),
            crate::model::format_duration(ceiling)
        )));
    }
    Ok(value)
}

/// Turns a request into an [`Identity`] created at `now`, or says which
/// field is wrong.
pub fn validate_new_identity(
    req: &IdentityRequest,
    envs: &[Environment],
    limits: &TtlLimits,
    now: i64,
) -> Result<Identity, PolicyError> {
    let env_name = EnvName::new(&req.env).map_err(|e| invalid(e.to_string()))?;
    let env = envs.iter().find(|e| e.name == env_name).ok_or_else(|| {
        invalid(format!(
            "unknown environment {:?}; this broker serves: {}",
            req.env,
            envs.iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let name = IdentityName::new(&req.name).map_err(|e| invalid(e.to_string()))?;
    let owner = text_field("owner", &req.owner, 256)?;
    let purpose = text_field("purpose", &req.purpose, 1024)?;
    let mut selectors = Vec::new();
    for (key, value) in &req.selectors {
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '-' | '/'))
        {
            return Err(invalid(format!(
                "selector key {key:?} must be non-empty and use A-Z a-z 0-9 : _ . - /"
            )));
        }
        let value = text_field(&format!("selector {key} value"), value, 512)?;
        selectors.push(Selector {
            key: key.clone(),
            value,
        });
    }
    selectors.sort();
    selectors.dedup();
    let audiences = req
        .audiences
        .iter()
        .map(|a| Audience::new(a))
        .collect::<Result<NameSet<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let scopes = req
        .scopes
        .iter()
        .map(|s| Scope::new(s))
        .collect::<Result<NameSet<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    let jwt_ttl = ttl(
        "JWT TTL",
        req.jwt_ttl,
        limits.default_jwt,
        limits.floor,
        limits.jwt_ceiling,
    )?;
    let x509_ttl = ttl(
        "X.509 TTL",
        req.x509_ttl,
        limits.default_x509,
        limits.floor,
        limits.x509_ceiling,
    )?;
    if let Some(at) = req.expires_at
        && at <= now
    {
        return Err(invalid("expires_at must be in the future"));
    }
    let parent = req
        .parent
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| IdentityKey::parse(p).map_err(|e| invalid(format!("parent: {e}"))))
        .transpose()?;
    let mut allow_cidrs = req
        .allow_cidrs
        .iter()
        .map(|c| c.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("allow_cidr {e}")))?;
    allow_cidrs.sort();
    allow_cidrs.dedup();
    if req.require_binding && parent.is_some() {
        // A node's workloads take their JWTs from the SPIFFE Workload API,
        // which hands out bearer tokens: no certificate to bind them to.
        return Err(invalid(
            "require_binding cannot be combined with a parent: workloads served by a node agent \
             receive JWTs through the Workload API as bearer tokens",
        ));
    }
    Ok(Identity {
        key: IdentityKey {
            env: env.name.clone(),
            name: name.clone(),
        },
        spiffe_id: SpiffeId::new(env.trust_domain.clone(), name),
        owner,
        purpose,
        selectors,
        parent,
        allow_cidrs,
        audiences,
        scopes,
        jwt_ttl,
        x509_ttl,
        expires_at: req.expires_at,
        enabled: true,
        require_binding: req.require_binding,
        on_anomaly: crate::model::OnAnomaly::parse(&req.on_anomaly).map_err(invalid)?,
        retired_at: None,
        created_at: now,
        updated_at: now,
        last_issued_at: None,
        last_seen_at: None,
    })
}

/// Checks that every selector of a new identity in `env` can be proven:
/// its prefix (before the first `:`) names a configured attestor serving
/// `env`, or is `unix` (the node agent's workload selectors, reserved); and
/// the platform selectors all name one attestor, since one piece of
/// evidence comes from one attestor.
pub fn check_selector_prefixes(
    env: &str,
    selectors: &[(String, String)],
    attestors: &[AttestorInfo],
) -> Result<(), PolicyError> {
    let configured = || {
        if attestors.is_empty() {
            "none are configured".to_owned()
        } else {
            format!(
                "configured: {}",
                attestors
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    let mut named: Option<&str> = None;
    for (key, _) in selectors {
        let Some((prefix, rest)) = key.split_once(':') else {
            return Err(invalid(format!(
                "selector {key:?} must be ATTESTOR:KEY (e.g. prod-cluster:ns)"
            )));
        };
        if rest.is_empty() {
            return Err(invalid(format!(
                "selector {key:?} has no key after the attestor"
            )));
        }
        if prefix == RESERVED_PREFIX {
            continue;
        }
        let Some(attestor) = attestors.iter().find(|a| a.name == prefix) else {
            return Err(invalid(format!(
                "selector {key:?} names attestor {prefix:?}, which is not configured ({})",
                configured()
            )));
        };
        if attestor.env.as_str() != env {
            return Err(invalid(format!(
                "selector {key:?}: attestor {prefix:?} attests for environment {}, not {env}",
                attestor.env
            )));
        }
        match named {
            Some(other) if other != prefix => {
                return Err(invalid(format!(
                    "selectors name attestors {other:?} and {prefix:?}; one attestation comes from one attestor, so no workload could match"
                )));
            }
            _ => named = Some(prefix),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ok_request() -> IdentityRequest {
        IdentityRequest {
            env: "dev".into(),
            name: "payments/api".into(),
            owner: "team-payments".into(),
            purpose: "charges cards".into(),
            selectors: vec![("k8s:ns".into(), "payments".into())],
            audiences: vec!["billing".into()],
            scopes: vec!["charge".into()],
            ..Default::default()
        }
    }

    #[test]
    fn validates_every_field() {
        let config = Config::default();
        let envs = config.environments().unwrap();
        let limits = TtlLimits::from(&config.ttl);
        let id = validate_new_identity(&ok_request(), &envs, &limits, 100).unwrap();
        assert_eq!(
            id.spiffe_id.to_string(),
            "spiffe://dev.example.org/payments/api"
        );
        assert_eq!(id.jwt_ttl, Duration::from_secs(300));

        type Mutation = Box<dyn Fn(&mut IdentityRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("unknown environment", Box::new(|r| r.env = "prod".into())),
            ("owner is required", Box::new(|r| r.owner = "  ".into())),
            (
                "purpose is required",
                Box::new(|r| r.purpose = String::new()),
            ),
            ("identity name", Box::new(|r| r.name = "../x".into())),
            ("audience", Box::new(|r| r.audiences = vec!["a b".into()])),
            ("scope", Box::new(|r| r.scopes = vec!["\"".into()])),
            (
                "JWT TTL",
                Box::new(|r| r.jwt_ttl = Some(Duration::from_secs(5))),
            ),
            (
                "X.509 TTL",
                Box::new(|r| r.x509_ttl = Some(Duration::from_secs(999_999))),
            ),
            ("expires_at", Box::new(|r| r.expires_at = Some(50))),
            (
                "selector key",
                Box::new(|r| r.selectors = vec![("".into(), "v".into())]),
            ),
            (
                "allow_cidr",
                Box::new(|r| r.allow_cidrs = vec!["10.0.0.1/8".into()]),
            ),
            (
                "require_binding cannot be combined with a parent",
                Box::new(|r| {
                    r.require_binding = true;
                    r.parent = Some("dev/node-1".into());
                }),
            ),
        ];
        for (needle, mutate) in cases {
            let mut req = ok_request();
            mutate(&mut req);
            let err = validate_new_identity(&req, &envs, &limits, 100).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: got {err}");
        }
    }

    #[test]
    fn selector_prefixes_must_name_an_attestor_of_the_environment() {
        use crate::attest::AttestorKind;
        let info = |name: &str, env: &str| AttestorInfo {
            name: name.into(),
            kind: AttestorKind::Kubernetes,
            env: EnvName::new(env).unwrap(),
        };
        let attestors = [
            info("prod-cluster", "prod"),
            info("gha", "prod"),
            info("dev-cluster", "dev"),
        ];
        let sel = |k: &str| (k.to_owned(), "v".to_owned());
        check_selector_prefixes(
            "prod",
            &[sel("prod-cluster:ns"), sel("prod-cluster:sa")],
            &attestors,
        )
        .unwrap();
        check_selector_prefixes("prod", &[sel("unix:uid")], &attestors).unwrap();
        let cases = [
            (vec![sel("k8s:ns")], "not configured"),
            (vec![sel("nsonly")], "must be ATTESTOR:KEY"),
            (vec![sel("prod-cluster:")], "no key after"),
            (vec![sel("dev-cluster:ns")], "attests for environment dev"),
            (
                vec![sel("prod-cluster:ns"), sel("gha:repository")],
                "one attestor",
            ),
        ];
        for (selectors, needle) in cases {
            let err = check_selector_prefixes("prod", &selectors, &attestors).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}
