//! `[ui]`: the web inventory's switch and lifetimes.

use std::time::Duration;

use serde::Deserialize;

/// `[ui]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UiConfig {
    /// Serve `/ui` on the HTTP port (and answer `credbroker ui`).
    pub enabled: bool,
    /// How long a one-time login link from `credbroker ui` stays usable.
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub login_link_ttl: Duration,
    /// How long a browser session lasts after login (no sliding renewal:
    /// a stolen cookie dies at this age whatever happens).
    #[serde(with = "crate::config::humantime_serde_compat")]
    pub session_ttl: Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_link_ttl: Duration::from_secs(5 * 60),
            session_ttl: Duration::from_secs(8 * 60 * 60),
        }
    }
}

impl UiConfig {
    /// Checks the lifetimes: a link between 1 s and 1 h, a session
    /// between 1 min and 7 days.
    pub fn validate(&self) -> Result<(), String> {
        if self.login_link_ttl < Duration::from_secs(1)
            || self.login_link_ttl > Duration::from_secs(60 * 60)
        {
            return Err("ui.login_link_ttl must lie within [1s, 1h]".into());
        }
        if self.session_ttl < Duration::from_secs(60)
            || self.session_ttl > Duration::from_secs(7 * 24 * 60 * 60)
        {
            return Err("ui.session_ttl must lie within [1m, 7d]".into());
        }
        Ok(())
    }
}
