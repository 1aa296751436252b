//! `[anomalies]`: thresholds of each rule; 0 turns a rule off.

use std::time::Duration;

use serde::Deserialize;

/// `[anomalies]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomaliesConfig {
    /// Flag an SVID presented from an address never seen for its identity
    /// (addresses it attested or was issued from count as seen).
    pub new_peer: bool,
    /// Flag one certificate presented from two addresses within this
    /// window (a cloned SVID); 0 turns it off.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub cloned_svid_window: Duration,
    /// Length of the windows issuance is counted in.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub issuance_window: Duration,
    /// Flag an identity issued more than this many times its trailing
    /// baseline (per window, averaged over past windows); 0 turns it off.
    pub issuance_spike_factor: f64,
    /// …and at least this many credentials in one window.
    pub issuance_spike_min: u32,
    /// Flag this many denials for one identity or one peer address within
    /// `denial_window`; 0 turns it off.
    pub denial_burst: u32,
    /// Window of `denial_burst`.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub denial_window: Duration,
    /// Flag a peer address asking for identities of this many different
    /// environments within `cross_env_window`; 0 turns it off.
    pub cross_env_threshold: u32,
    /// Window of `cross_env_threshold`.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub cross_env_window: Duration,
    /// Flag an identity issued a credential after nothing for this long
    /// (stale, as `identity list --stale`, suddenly active); 0 turns it off.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub stale_after: Duration,
    /// Most identities, addresses or certificates each rule tracks.
    pub max_tracked: usize,
}

impl Default for AnomaliesConfig {
    fn default() -> Self {
        Self {
            new_peer: true,
            cloned_svid_window: Duration::from_secs(60),
            issuance_window: Duration::from_secs(60),
            issuance_spike_factor: 10.0,
            issuance_spike_min: 100,
            denial_burst: 20,
            denial_window: Duration::from_secs(60),
            cross_env_threshold: 2,
            cross_env_window: Duration::from_secs(10 * 60),
            stale_after: Duration::from_secs(30 * 24 * 60 * 60),
            max_tracked: 100_000,
        }
    }
}

impl AnomaliesConfig {
    /// Checks that windows are usable and the caps positive.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in [
            ("issuance_window", self.issuance_window),
            ("denial_window", self.denial_window),
            ("cross_env_window", self.cross_env_window),
        ] {
            if d < Duration::from_secs(1) {
                return Err(format!("anomalies.{name} must be at least 1s"));
            }
        }
        if !(self.issuance_spike_factor >= 0.0 && self.issuance_spike_factor.is_finite()) {
            return Err("anomalies.issuance_spike_factor must be a number ≥ 0".into());
        }
        if self.max_tracked == 0 || self.max_tracked > 10_000_000 {
            return Err("anomalies.max_tracked must lie within [1, 10000000]".into());
        }
        Ok(())
    }
}
