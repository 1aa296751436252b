//! `[keys]`: how long each environment's CA and JWT signing key live, and
//! the rotation schedule that follows from it.

use std::time::Duration;

use serde::Deserialize;

use crate::config::TtlConfig;
use crate::config::humantime_serde_compat;

/// Shortest lifetime accepted for a rotating key: the schedule works in
/// whole seconds and needs room for prepare → activate → retire.
const MIN_LIFETIME: Duration = Duration::from_secs(6);
/// Longest `spiffe_refresh_hint` published.
const MAX_REFRESH_HINT: Duration = Duration::from_secs(300);

/// Lifetimes of the rotating keys.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeysConfig {
    /// Validity of each environment CA certificate. A CA signs from five
    /// sixths of its predecessor's life to five sixths of its own.
    #[serde(with = "humantime_serde_compat")]
    pub ca_lifetime: Duration,
    /// Lifetime of each JWT signing key, on the same schedule.
    #[serde(with = "humantime_serde_compat")]
    pub jwt_key_lifetime: Duration,
    /// Validity of each admin CA (signing operator certificates), on the
    /// same schedule; at least six times the longest operator certificate
    /// (90 days).
    #[serde(with = "humantime_serde_compat")]
    pub admin_ca_lifetime: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            ca_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            jwt_key_lifetime: Duration::from_secs(24 * 60 * 60),
            admin_ca_lifetime: Duration::from_secs(730 * 24 * 60 * 60),
        }
    }
}

impl KeysConfig {
    /// Checks the lifetimes against each other and against the credential
    /// TTL ceilings.
    pub fn validate(&self, ttl: &TtlConfig) -> Result<(), String> {
        for (name, value) in [
            ("ca_lifetime", self.ca_lifetime),
            ("jwt_key_lifetime", self.jwt_key_lifetime),
        ] {
            if value < MIN_LIFETIME {
                return Err(format!(
                    "keys.{name} = {} must be at least {}",
                    crate::model::format_duration(value),
                    crate::model::format_duration(MIN_LIFETIME)
                ));
            }
        }
        // An active CA has at least a sixth of its life left, and no
        // X.509-SVID may outlive its CA: a sixth must hold the longest SVID.
        if self.ca_lifetime < ttl.x509_ceiling * 6 {
            return Err(format!(
                "keys.ca_lifetime = {} must be at least 6 x ttl.x509_ceiling ({}), so that no \\
                 X.509-SVID is cut short by its CA's expiry",
                crate::model::format_duration(self.ca_lifetime),
                crate::model::format_duration(ttl.x509_ceiling)
            ));
        }
        let longest_operator = Duration::from_secs(90 * 24 * 60 * 60);
        if self.admin_ca_lifetime < longest_operator * 6 {
            return Err(format!(
                "keys.admin_ca_lifetime = {} must be at least 540d (6 x the longest operator \
                 certificate, 90d)",
                crate::model::format_duration(self.admin_ca_lifetime)
            ));
        }
        Ok(())
    }

    /// The `spiffe_refresh_hint`: how often relying parties should re-read
    /// the key sets. Well inside the third of a lifetime between a key's
    /// publication and its first signature.
    pub fn refresh_hint(&self) -> Duration {
        (self.ca_lifetime.min(self.jwt_key_lifetime) / 12)
            .clamp(Duration::from_secs(1), MAX_REFRESH_HINT)
    }
}
