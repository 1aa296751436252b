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
    /// Serve `/ui` even when browsers would reach it over plain HTTP on a
    /// non-loopback address (session cookies in clear on the network).
    pub allow_plain_http: bool,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login_link_ttl: Duration::from_secs(5 * 60),
            session_ttl: Duration::from_secs(8 * 60 * 60),
            allow_plain_http: false,
        }
    }
}

/// Why `/ui` is not served, if it is not.
pub fn unavailable(
    ui: &UiConfig,
    http_listen: std::net::SocketAddr,
    public_url: &str,
) -> Option<String> {
    if !ui.enabled {
        return Some("the web inventory is off on this broker ([ui] enabled = false)".into());
    }
    // Over https (a TLS proxy named by public_url) or on loopback (reached
    // on this host, or through an SSH tunnel) a session cookie never
    // crosses a network in clear.
    if public_url.starts_with("https://") || http_listen.ip().is_loopback() || ui.allow_plain_http {
        return None;
    }
    Some(format!(
        "the web inventory is off: the HTTP port listens on {http_listen} in plain HTTP and \
         public_url {public_url} is not https://, so sessions would cross the network in \
         clear; put a TLS proxy in front and set public_url to its https:// URL, listen on \
         loopback, or set [ui] allow_plain_http = true"
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_beyond_loopback_needs_consent() {
        let ui = UiConfig::default();
        let lo = "127.0.0.1:7080".parse().unwrap();
        let any = "0.0.0.0:7080".parse().unwrap();
        assert_eq!(unavailable(&ui, lo, "http://127.0.0.1:7080"), None);
        assert_eq!(unavailable(&ui, any, "https://broker.example.org"), None);
        let why = unavailable(&ui, any, "http://broker:7080").unwrap();
        assert!(why.contains("allow_plain_http"), "{why}");
        let consent = UiConfig {
            allow_plain_http: true,
            ..ui
        };
        assert_eq!(unavailable(&consent, any, "http://broker:7080"), None);
        let off = UiConfig {
            enabled: false,
            ..ui
        };
        assert!(unavailable(&off, lo, "http://127.0.0.1:7080").is_some());
    }
}
