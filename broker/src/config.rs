//! Broker configuration: a typed struct loaded from TOML, then overridden by
//! `CREDBROKER_*` environment variables. Every field has a default, so
//! `credbroker serve` with no file runs a working `dev` broker.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

pub use crate::anomaly::AnomaliesConfig;
pub use crate::api::bounded::ConnectionsConfig;
use crate::attest::{AttestorConfig, validate_attestors};
pub use crate::keys::KeysConfig;
use crate::model::{EnvName, NameError, TrustDomain, format_duration};
pub use crate::policy::rate_limit::RateLimitsConfig;
pub use crate::ui::UiConfig;

/// Why the configuration could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: Box<toml::de::Error>,
    },
    /// An environment variable override could not be parsed.
    #[error("environment variable {var}: {why}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What was wrong.
        why: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An environment or trust domain name is invalid.
    #[error("invalid configuration: {0}")]
    Name(#[from] NameError),
}

/// One environment: its own trust domain, CA, JWT keys and OIDC issuer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// Environment name (`dev`, `prod`, …).
    pub name: String,
    /// SPIFFE trust domain; default `{name}.{base_domain}`.
    pub trust_domain: Option<String>,
    /// An upstream root certificate (PEM) that signs this environment's CAs,
    /// which then are intermediates; requires `upstream_ca_key`.
    pub upstream_ca_cert: Option<PathBuf>,
    /// The upstream root's private key (PKCS#8 PEM).
    pub upstream_ca_key: Option<PathBuf>,
}

/// Lifetimes and their bounds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TtlConfig {
    /// JWT lifetime of a new identity when none is given.
    #[serde(deserialize_with = "ttl_keys::default_jwt")]
    pub default_jwt: Duration,
    /// X.509 lifetime of a new identity when none is given.
    #[serde(deserialize_with = "ttl_keys::default_x509")]
    pub default_x509: Duration,
    /// No identity TTL may be shorter.
    #[serde(deserialize_with = "ttl_keys::floor")]
    pub floor: Duration,
    /// No identity JWT TTL may be longer.
    #[serde(deserialize_with = "ttl_keys::jwt_ceiling")]
    pub jwt_ceiling: Duration,
    /// No identity X.509 TTL may be longer.
    #[serde(deserialize_with = "ttl_keys::x509_ceiling")]
    pub x509_ceiling: Duration,
    /// Join token lifetime when none is given.
    #[serde(deserialize_with = "ttl_keys::join_token_default")]
    pub join_token_default: Duration,
    /// Longest join token lifetime.
    #[serde(deserialize_with = "ttl_keys::join_token_ceiling")]
    pub join_token_ceiling: Duration,
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            default_jwt: Duration::from_secs(5 * 60),
            default_x509: Duration::from_secs(60 * 60),
            floor: Duration::from_secs(60),
            jwt_ceiling: Duration::from_secs(60 * 60),
            x509_ceiling: Duration::from_secs(24 * 60 * 60),
            join_token_default: Duration::from_secs(10 * 60),
            join_token_ceiling: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// The whole broker configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite database, the KEK (if generated), `broker-ca.pem` and
    /// `admin/` live.
    pub data_dir: PathBuf,
    /// Base of default trust domains: `{env}.{base_domain}`.
    pub base_domain: String,
    /// Environments served; default just `dev`.
    pub environments: Vec<EnvironmentConfig>,
    /// gRPC (TLS) listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address (OIDC discovery, JWKS, bundles, health).
    pub http_listen: SocketAddr,
    /// URL under which the HTTP endpoints are reachable; each environment's
    /// OIDC issuer is `{public_url}/{env}`. Default `http://{http_listen}`.
    pub public_url: Option<String>,
    /// DNS names and IP addresses put in the broker's TLS certificate.
    pub tls_names: Vec<String>,
    /// File holding the 32-byte key-encryption key (base64). Without one a
    /// KEK is generated under `data_dir` with a warning.
    pub kek_file: Option<PathBuf>,
    /// Store URL; default `sqlite://{data_dir}/credbroker.db`.
    pub store_url: Option<String>,
    /// Lifetimes.
    pub ttl: TtlConfig,
    /// Rotation of each environment's CA and JWT signing key (`[keys]`).
    pub keys: KeysConfig,
    /// Platform attestors (`[[attestors]]`); join tokens need none.
    pub attestors: Vec<AttestorConfig>,
    /// Per-peer and per-identity request rates (`[rate_limits]`).
    pub rate_limits: RateLimitsConfig,
    /// Connection and stream bounds (`[connections]`).
    pub connections: ConnectionsConfig,
    /// The web inventory (`[ui]`).
    pub ui: UiConfig,
    /// Anomaly detection thresholds (`[anomalies]`).
    pub anomalies: AnomaliesConfig,
    /// How long audit entries are kept (`audit_retention = "90d"`; at
    /// least [`MIN_AUDIT_RETENTION`]); older ones are exported to
    /// `audit_export_dir` and deleted. `None` (the default) keeps them all.
    #[serde(deserialize_with = "audit_retention")]
    pub audit_retention: Option<Duration>,
    /// Where retention writes its exports; default `DATA_DIR/audit-export`.
    pub audit_export_dir: Option<PathBuf>,
}

/// The shortest `audit_retention`: shorter is almost surely a unit typo
/// (`90m` for ninety minutes, not months).
pub const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

fn audit_retention<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::model::deserialize_duration(d, "audit_retention").map(Some)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./credbroker-data"),
            base_domain: "example.org".to_owned(),
            environments: vec![EnvironmentConfig {
                name: "dev".to_owned(),
                trust_domain: None,
                upstream_ca_cert: None,
                upstream_ca_key: None,
            }],
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            public_url: None,
            tls_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            kek_file: None,
            store_url: None,
            ttl: TtlConfig::default(),
            keys: KeysConfig::default(),
            attestors: Vec::new(),
            rate_limits: RateLimitsConfig::default(),
            connections: ConnectionsConfig::default(),
            ui: UiConfig::default(),
            anomalies: AnomaliesConfig::default(),
            audit_retention: None,
            audit_export_dir: None,
        }
    }
}

/// A validated environment: name and trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Environment name.
    pub name: EnvName,
    /// Its SPIFFE trust domain.
    pub trust_domain: TrustDomain,
}

impl Config {
    /// Reads `path` (if any), applies `CREDBROKER_*` overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(|var| std::env::var(var).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML file without applying overrides.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies overrides read through `get` (the process environment in
    /// production, a map in tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn addr(var: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
            value.parse().map_err(|e| ConfigError::Env {
                var,
                why: format!("{value:?} is not an address: {e}"),
            })
        }
        if let Some(v) = get("CREDBROKER_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CREDBROKER_KEK_FILE") {
            self.kek_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CREDBROKER_BASE_DOMAIN") {
            self.base_domain = v;
        }
        if let Some(v) = get("CREDBROKER_GRPC_LISTEN") {
            self.grpc_listen = addr("CREDBROKER_GRPC_LISTEN", &v)?;
        }
        if let Some(v) = get("CREDBROKER_HTTP_LISTEN") {
            self.http_listen = addr("CREDBROKER_HTTP_LISTEN", &v)?;
        }
        if let Some(v) = get("CREDBROKER_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = get("CREDBROKER_STORE_URL") {
            self.store_url = Some(v);
        }
        if let Some(v) = get("CREDBROKER_ENVIRONMENTS") {
            self.environments = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|name| EnvironmentConfig {
                    name: name.to_owned(),
                    trust_domain: None,
                    upstream_ca_cert: None,
                    upstream_ca_key: None,
                })
                .collect();
        }
        Ok(())
    }

    /// Checks names and TTL bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for env in &self.environments {
            if env.upstream_ca_cert.is_some() != env.upstream_ca_key.is_some() {
                return Err(ConfigError::Invalid(format!(
                    "environment {}: upstream_ca_cert and upstream_ca_key go together",
                    env.name
                )));
            }
        }
        let envs = self.environments()?;
        if envs.is_empty() {
            return Err(ConfigError::Invalid(
                "at least one environment is required".into(),
            ));
        }
        for (i, a) in envs.iter().enumerate() {
            for b in &envs[i + 1..] {
                if a.name == b.name {
                    return Err(ConfigError::Invalid(format!(
                        "environment {} is listed twice",
                        a.name
                    )));
                }
                if a.trust_domain == b.trust_domain {
                    return Err(ConfigError::Invalid(format!(
                        "environments {} and {} share trust domain {}; each needs its own",
                        a.name, b.name, a.trust_domain
                    )));
                }
            }
        }
        let t = &self.ttl;
        let check = |name: &str, value: Duration, min: Duration, max: Duration| {
            if value < min || value > max {
                Err(ConfigError::Invalid(format!(
                    "ttl.{name} = {} must lie within [{}, {}]",
                    format_duration(value),
                    format_duration(min),
                    format_duration(max)
                )))
            } else {
                Ok(())
            }
        };
        if t.floor.is_zero() {
            return Err(ConfigError::Invalid("ttl.floor must be positive".into()));
        }
        check("default_jwt", t.default_jwt, t.floor, t.jwt_ceiling)?;
        check("default_x509", t.default_x509, t.floor, t.x509_ceiling)?;
        check(
            "join_token_default",
            t.join_token_default,
            Duration::from_secs(1),
            t.join_token_ceiling,
        )?;
        self.keys
            .validate(t)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "public_url {url:?} must start with http:// or https://"
            )));
        }
        self.connections.validate().map_err(ConfigError::Invalid)?;
        self.ui.validate().map_err(ConfigError::Invalid)?;
        self.anomalies.validate().map_err(ConfigError::Invalid)?;
        if let Some(keep) = self.audit_retention
            && keep < MIN_AUDIT_RETENTION
        {
            return Err(ConfigError::Invalid(format!(
                "audit_retention = {} is shorter than the minimum of {}",
                format_duration(keep),
                format_duration(MIN_AUDIT_RETENTION)
            )));
        }
        validate_attestors(&self.attestors, &envs)?;
        Ok(())
    }

    /// The configured environments, validated.
    pub fn environments(&self) -> Result<Vec<Environment>, ConfigError> {
        self.environments
            .iter()
            .map(|e| {
                let name = EnvName::new(&e.name)?;
                let td = match &e.trust_domain {
                    Some(td) => TrustDomain::new(td)?,
                    None => TrustDomain::new(&format!("{}.{}", e.name, self.base_domain))?,
                };
                Ok(Environment {
                    name,
                    trust_domain: td,
                })
            })
            .collect()
    }

    /// `public_url` without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.http_listen),
        }
    }

    /// Where the audit log's signed checkpoints are appended.
    pub fn audit_checkpoint_file(&self) -> std::path::PathBuf {
        self.data_dir.join("audit.checkpoints")
    }

    /// Where audit retention writes its exports.
    pub fn audit_export_dir(&self) -> PathBuf {
        self.audit_export_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-export"))
    }

    /// The store URL, defaulting to SQLite under `data_dir`.
    pub fn store_url(&self) -> String {
        match &self.store_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("credbroker.db").display()),
        }
    }
}

/// Serde adapter for durations ("90s", "5m", "1h", "30d") whose errors
/// say which forms are accepted.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Parses a humantime duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        crate::model::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

/// One deserializer per `[ttl]` key, so a bad value names its key and the
/// accepted forms.
mod ttl_keys {
    macro_rules! keys {
        ($($field:ident),*) => {$(
            pub fn $field<'de, D: serde::Deserializer<'de>>(
                d: D,
            ) -> Result<std::time::Duration, D::Error> {
                crate::model::deserialize_duration(d, concat!("ttl.", stringify!($field)))
            }
        )*};
    }
    keys!(
        default_jwt,
        default_x509,
        floor,
        jwt_ceiling,
        x509_ceiling,
        join_token_default,
        join_token_ceiling
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().unwrap();
        let envs = config.environments().unwrap();
        assert_eq!(envs.len(), 1);
        assert_eq!(envs[0].trust_domain.as_str(), "dev.example.org");
        assert_eq!(config.public_url(), "http://127.0.0.1:7080");
    }

    #[test]
    fn toml_and_env_overrides() {
        let mut config: Config = toml::from_str(
            r#"
            base_domain = "corp.test"
            [[environments]]
            name = "prod"
            [[environments]]
            name = "staging"
            trust_domain = "stage.corp.test"
            [ttl]
            default_jwt = "2m"
            "#,
        )
        .unwrap();
        assert_eq!(config.ttl.default_jwt, Duration::from_secs(120));
        config
            .apply_env(|v| (v == "CREDBROKER_GRPC_LISTEN").then(|| "127.0.0.1:9443".into()))
            .unwrap();
        assert_eq!(config.grpc_listen.port(), 9443);
        config.validate().unwrap();
        let envs = config.environments().unwrap();
        assert_eq!(config.audit_retention, None, "retention is off by default");
        assert_eq!(envs[0].trust_domain.as_str(), "prod.corp.test");
        assert_eq!(envs[1].trust_domain.as_str(), "stage.corp.test");
    }

    #[test]
    fn sample_config_in_deploy_is_valid() {
        let sample: Config = toml::from_str(include_str!("../../deploy/credbroker.toml")).unwrap();
        sample.validate().unwrap();
        assert_eq!(sample.environments().unwrap().len(), 3);
        assert_eq!(sample.ttl, TtlConfig::default());
        assert_eq!(sample.rate_limits, RateLimitsConfig::default());
        assert_eq!(sample.connections, ConnectionsConfig::default());
        assert_eq!(sample.ui, UiConfig::default());
        assert_eq!(sample.anomalies, AnomaliesConfig::default());
        assert_eq!(sample.attestors.len(), 2);
        // The commented aws_iid table parses too, once uncommented.
        let text = include_str!("../../deploy/credbroker.toml");
        let aws = &text[text.find("# [[attestors]]").unwrap()..];
        let aws: String = aws
            .lines()
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n");
        let with_aws: Config = toml::from_str(&format!("{text}\n{aws}")).unwrap();
        with_aws.validate().unwrap();
        assert_eq!(with_aws.attestors.len(), 3);
    }

    #[test]
    fn duration_errors_name_the_key_and_the_accepted_forms() {
        for (text, shows) in [
            ("[ttl]\njoin_token_ceiling = \"a week\"", "\"a week\""),
            ("[ttl]\njoin_token_ceiling = 7", "7 has no unit"),
        ] {
            let err = toml::from_str::<Config>(text).unwrap_err().to_string();
            assert!(
                err.contains("ttl.join_token_ceiling")
                    && err.contains(shows)
                    && err.contains("\"30d\""),
                "{err}"
            );
        }
        let mut c = Config::default();
        c.ttl.x509_ceiling = Duration::from_secs(60 * 86_400);
        c.ttl.default_x509 = Duration::from_secs(61 * 86_400);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("= 61d must lie within [1m, 60d]"), "{err}");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(toml::from_str::<Config>("unknown_key = 1").is_err());
        let mut c = Config::default();
        c.ttl.default_jwt = Duration::from_secs(5);
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.environments[0].name = "Prod".into();
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.environments.push(c.environments[0].clone());
        assert!(c.validate().is_err());
        let mut c = Config::default();
        assert!(
            c.apply_env(|v| (v == "CREDBROKER_HTTP_LISTEN").then(|| "nope".into()))
                .is_err()
        );
    }

    #[test]
    fn audit_retention_is_a_duration_of_at_least_a_day() {
        let config: Config = toml::from_str("audit_retention = \"90d\"").unwrap();
        assert_eq!(
            config.audit_retention,
            Some(Duration::from_secs(90 * 24 * 60 * 60))
        );
        config.validate().unwrap();
        assert_eq!(
            config.audit_export_dir(),
            config.data_dir.join("audit-export")
        );
        let typo: Config = toml::from_str("audit_retention = \"90m\"").unwrap();
        let e = typo.validate().unwrap_err().to_string();
        assert!(
            e.contains("audit_retention = 90m") && e.contains("24h"),
            "{e}"
        );
        let e = toml::from_str::<Config>("audit_retention = \"ninety days\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit_retention"), "{e}");
    }
}
