//! `[[attestors]]` configuration: one table per platform attestor, checked
//! once at start-up so a typo is a start-up error, not a refusal at 3 a.m.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Environment};

/// Which attestation method a table configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestorKind {
    /// Kubernetes projected service-account tokens.
    Kubernetes,
    /// Any OIDC issuer (GitHub Actions, GitLab CI, cloud identity tokens).
    Oidc,
    /// AWS EC2 instance identity documents.
    AwsIid,
}

impl AttestorKind {
    /// The lowercase name used in config, logs and audit.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kubernetes => "kubernetes",
            Self::Oidc => "oidc",
            Self::AwsIid => "aws_iid",
        }
    }
}

/// Selector prefix reserved for the node agent's workload selectors
/// (`unix:uid`, `unix:path`, …); no attestor may be named so.
pub const RESERVED_PREFIX: &str = "unix";

/// One `[[attestors]]` table, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestorConfig {
    /// `kubernetes`, `oidc` or `aws_iid`.
    pub kind: AttestorKind,
    /// The selector prefix (`NAME:KEY=VALUE`); `[a-z0-9-]+`, unique.
    pub name: String,
    /// The environment whose identities this attestor may attest.
    pub environment: String,
    /// JWT kinds: the token's `iss`, matched exactly.
    pub issuer: Option<String>,
    /// JWT kinds: a value the token's `aud` must contain.
    pub audience: Option<String>,
    /// JWT kinds: a local JWKS file (re-read on refresh).
    pub jwks_file: Option<PathBuf>,
    /// JWT kinds: the JWKS URL; without it and `jwks_file`, OIDC discovery
    /// at `{issuer}/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// JWT kinds: PEM CAs trusted for https discovery/JWKS; default the
    /// system bundle (`SSL_CERT_FILE` or /etc/ssl/certs/ca-certificates.crt).
    pub ca_file: Option<PathBuf>,
    /// JWT kinds: tokens whose `exp - iat` is longer are refused (default 24h).
    #[serde(default, with = "opt_duration")]
    pub max_token_lifetime: Option<Duration>,
    /// JWT kinds: shortest time between two JWKS fetches triggered by an
    /// unknown `kid` (default 30s).
    #[serde(default, with = "opt_duration")]
    pub jwks_min_refresh: Option<Duration>,
    /// `oidc`: remember each `jti` until its `exp` and refuse replays.
    #[serde(default)]
    pub single_use: bool,
    /// `aws_iid`: PEM file with the AWS public certificate(s) for the region(s).
    pub certificate_file: Option<PathBuf>,
    /// `aws_iid`: refuse documents whose `pendingTime` is older (default
    /// 24h; "0s" accepts any age).
    #[serde(default, with = "opt_duration")]
    pub max_document_age: Option<Duration>,
    /// `aws_iid`: let an instance attest again from a different key
    /// (default false: the first key an instance attests with is the only one).
    #[serde(default)]
    pub allow_reattestation: bool,
}

/// Default cap on `exp - iat` of JWT evidence.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Default rate limit of unknown-`kid` JWKS refreshes.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// Default maximum age of an AWS instance identity document.
pub const DEFAULT_MAX_DOCUMENT_AGE: Duration = Duration::from_secs(24 * 60 * 60);

fn invalid(name: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("attestor {name:?}: {why}"))
}

impl AttestorConfig {
    fn jwt_keys_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.issuer.is_some() {
            set.push("issuer");
        }
        if self.audience.is_some() {
            set.push("audience");
        }
        if self.jwks_file.is_some() {
            set.push("jwks_file");
        }
        if self.jwks_url.is_some() {
            set.push("jwks_url");
        }
        if self.ca_file.is_some() {
            set.push("ca_file");
        }
        if self.max_token_lifetime.is_some() {
            set.push("max_token_lifetime");
        }
        if self.jwks_min_refresh.is_some() {
            set.push("jwks_min_refresh");
        }
        set
    }

    fn aws_keys_set(&self) -> Vec<&'static str> {
        let mut set = Vec::new();
        if self.certificate_file.is_some() {
            set.push("certificate_file");
        }
        if self.max_document_age.is_some() {
            set.push("max_document_age");
        }
        if self.allow_reattestation {
            set.push("allow_reattestation");
        }
        set
    }

    /// Checks this table on its own (names, required and misplaced keys).
    fn validate(&self, envs: &[Environment]) -> Result<(), ConfigError> {
        let name = &self.name;
        if !valid_name(name) {
            return Err(invalid(
                name,
                "name must be non-empty and use only a-z 0-9 -",
            ));
        }
        if name == RESERVED_PREFIX {
            return Err(invalid(
                name,
                "the name `unix` is reserved for the node agent's workload selectors",
            ));
        }
        if !envs.iter().any(|e| e.name.as_str() == self.environment) {
            return Err(invalid(
                name,
                format!(
                    "environment {:?} is not served by this broker",
                    self.environment
                ),
            ));
        }
        let kind = self.kind.as_str();
        let misplaced = |keys: Vec<&'static str>| -> Result<(), ConfigError> {
            match keys.first() {
                Some(key) => Err(invalid(
                    name,
                    format!("{key} does not apply to kind {kind}"),
                )),
                None => Ok(()),
            }
        };
        match self.kind {
            AttestorKind::Kubernetes | AttestorKind::Oidc => {
                misplaced(self.aws_keys_set())?;
                if self.single_use && self.kind == AttestorKind::Kubernetes {
                    return Err(invalid(
                        name,
                        "single_use applies to kind oidc only (kubelet tokens are reused until rotated)",
                    ));
                }
                let issuer = self
                    .issuer
                    .as_deref()
                    .ok_or_else(|| invalid(name, "issuer is required"))?;
                if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
                    return Err(invalid(name, "issuer must be an http(s) URL"));
                }
                match self.audience.as_deref() {
                    Some(a) if !a.trim().is_empty() => {}
                    _ => return Err(invalid(name, "audience is required")),
                }
                if self.jwks_file.is_some() && self.jwks_url.is_some() {
                    return Err(invalid(name, "set jwks_file or jwks_url, not both"));
                }
                if let Some(url) = &self.jwks_url
                    && !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    return Err(invalid(name, "jwks_url must be an http(s) URL"));
                }
                if self.max_token_lifetime.is_some_and(|d| d.is_zero()) {
                    return Err(invalid(name, "max_token_lifetime must be positive"));
                }
            }
            AttestorKind::AwsIid => {
                misplaced(self.jwt_keys_set())?;
                if self.single_use {
                    return Err(invalid(name, "single_use does not apply to kind aws_iid"));
                }
                if self.certificate_file.is_none() {
                    return Err(invalid(name, "certificate_file is required"));
                }
            }
        }
        Ok(())
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks every table and that names and issuers are unique.
pub fn validate_attestors(
    attestors: &[AttestorConfig],
    envs: &[Environment],
) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut issuers = HashSet::new();
    for a in attestors {
        a.validate(envs)?;
        if !names.insert(a.name.as_str()) {
            return Err(invalid(&a.name, "name is used twice"));
        }
        if let Some(issuer) = &a.issuer
            && !issuers.insert(issuer.as_str())
        {
            return Err(invalid(
                &a.name,
                format!(
                    "issuer {issuer:?} is already configured; JWT evidence is routed by its iss, which must name one attestor"
                ),
            ));
        }
    }
    Ok(())
}

/// Serde adapter for optional humantime durations.
mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        crate::model::parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(toml: &str) -> Result<(), ConfigError> {
        let mut config: Config =
            toml::from_str(toml).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.environments = vec![crate::config::EnvironmentConfig {
            name: "prod".into(),
            trust_domain: None,
        }];
        config.validate()
    }

    const K8S: &str = r#"
        [[attestors]]
        kind = "kubernetes"
        name = "prod-cluster"
        environment = "prod"
        issuer = "https://kubernetes.default.svc.cluster.local"
        audience = "credbroker"
        jwks_file = "/etc/jwks.json"
    "#;

    #[test]
    fn accepts_a_valid_table_and_refuses_each_mistake() {
        parse(K8S).unwrap();
        let cases = [
            (K8S.replace("prod-cluster", "Prod"), "name must be"),
            (K8S.replace("prod-cluster", "unix"), "reserved"),
            (
                K8S.replace("environment = \"prod\"", "environment = \"dev\""),
                "not served",
            ),
            (
                K8S.replace("audience = \"credbroker\"", ""),
                "audience is required",
            ),
            (
                K8S.replace("jwks_file", "certificate_file"),
                "certificate_file does not apply",
            ),
            (
                format!("{K8S}single_use = true"),
                "single_use applies to kind oidc",
            ),
            (format!("{K8S}jwks_url = \"http://x\""), "not both"),
            (format!("{K8S}{K8S}"), "used twice"),
            (
                format!("{K8S}{}", K8S.replace("prod-cluster", "other")),
                "already configured",
            ),
            (
                r#"
                [[attestors]]
                kind = "aws_iid"
                name = "aws"
                environment = "prod"
                "#
                .to_owned(),
                "certificate_file is required",
            ),
        ];
        for (toml, needle) in cases {
            let err = parse(&toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: got {err}");
        }
        assert!(
            parse(&format!("{K8S}colour = \"red\"")).is_err(),
            "unknown key"
        );
    }
}
