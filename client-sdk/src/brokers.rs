//! The broker endpoints a client may use: one URL or several replicas of
//! one broker, in order of preference, with the timeouts that bound each
//! attempt.
//!
//! Replicas share one TLS CA, so one bundle verifies all of them. Each URL
//! is verified against its own host name (or, for an IP literal, the IP
//! SAN), so every name used here must be in the brokers' `tls_names`. A host
//! name that resolves to several addresses counts as one broker per address
//! (see `targets.rs`), each still verified against the name.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ClientError;

/// How long reaching one broker (TCP connect and TLS handshake) may take
/// before the next one is tried: a host that drops packets must not eat
/// the whole deadline of a call.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call to one broker may take.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Most broker URLs in one list.
pub const MAX_BROKERS: usize = 16;

/// Broker URLs in order of preference, and the per-attempt timeouts.
///
/// A client uses the first broker that answers and stays with it while it
/// works; when a call fails because that broker is unreachable or
/// unavailable (connection refused or lost, TLS failure, `UNAVAILABLE`, a
/// timeout) it moves on to the next, and the failed one is skipped for a
/// jittered, growing while. Refusals (`PERMISSION_DENIED`,
/// `INVALID_ARGUMENT`, `NOT_FOUND`, `RESOURCE_EXHAUSTED` with its retry
/// hint, …) are answers, returned as they are: another replica would give
/// the same one.
///
/// ```
/// use credbroker_client::Brokers;
/// let brokers: Brokers = "https://broker-a:7443, https://broker-b:7443".parse()?;
/// assert_eq!(brokers.urls().len(), 2);
/// # Ok::<(), credbroker_client::ClientError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Brokers {
    urls: Vec<String>,
    connect_timeout: Duration,
    rpc_timeout: Duration,
}

impl Brokers {
    /// Brokers from a list of URLs; each entry may itself be a
    /// comma-separated list (so repeated flags and `a,b` mix freely).
    /// Every URL must be `https://`; duplicates and empty lists are
    /// refused, naming the culprit.
    pub fn new<I, S>(urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list: Vec<String> = Vec::new();
        for entry in urls {
            for url in entry.as_ref().split(',').map(str::trim) {
                let url = url.trim_end_matches('/');
                let invalid = |why: &str| ClientError::InvalidUrl {
                    url: url.to_owned(),
                    why: why.to_owned(),
                };
                if url.is_empty() {
                    return Err(ClientError::InvalidUrl {
                        url: entry.as_ref().to_owned(),
                        why: "empty entry in the broker list".into(),
                    });
                }
                check_url(url)?;
                if list.iter().any(|u| u == url) {
                    return Err(invalid("listed twice"));
                }
                list.push(url.to_owned());
            }
        }
        if list.is_empty() {
            return Err(ClientError::InvalidUrl {
                url: String::new(),
                why: "no broker URL given".into(),
            });
        }
        if list.len() > MAX_BROKERS {
            return Err(ClientError::InvalidUrl {
                url: list.join(","),
                why: format!("at most {MAX_BROKERS} broker URLs"),
            });
        }
        Ok(Self {
            urls: list,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
        })
    }

    /// Sets how long reaching one broker may take (TCP and TLS) before the
    /// next is tried (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets how long one call to one broker may take (default 30 s).
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// The URLs, in order of preference.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The connect timeout per broker.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The timeout of one call to one broker.
    pub fn get_rpc_timeout(&self) -> Duration {
        self.rpc_timeout
    }

    /// A channel to the first broker, in order, that accepts a connection
    /// with `tls` (TCP and TLS within the connect timeout), for services
    /// the SDK does not wrap, such as the admin API. Calls on it do not fail
    /// over: use it where a request must be sent at most once.
    pub async fn connect_first(
        &self,
        tls: &crate::BrokerTls,
    ) -> Result<tonic::transport::Channel, ClientError> {
        crate::failover::first_channel(self, tls).await
    }
}

/// An `https://` URL that tonic can connect to.
fn check_url(url: &str) -> Result<(), ClientError> {
    let invalid = |why: String| ClientError::InvalidUrl {
        url: url.to_owned(),
        why,
    };
    if !url.starts_with("https://") {
        return Err(invalid(
            "the broker speaks gRPC over TLS only: use an https:// URL such as \
             https://127.0.0.1:7443"
                .into(),
        ));
    }
    let uri: http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    Ok(())
}

impl FromStr for Brokers {
    type Err = ClientError;

    /// One URL, or several separated by commas.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new([s])
    }
}

impl fmt::Display for Brokers {
    /// The URLs separated by commas (what [`FromStr`] reads back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_mix_repeated_entries_and_commas_in_order() {
        let b = Brokers::new(["https://a:1, https://b:2/", "https://c:3"]).unwrap();
        assert_eq!(b.urls(), ["https://a:1", "https://b:2", "https://c:3"]);
        assert_eq!(b.to_string().parse::<Brokers>().unwrap(), b);
        assert_eq!(b.get_connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry() {
        let why = |s: &str| s.parse::<Brokers>().unwrap_err().to_string();
        assert!(
            why("http://a:1").contains("https://"),
            "{}",
            why("http://a:1")
        );
        assert!(why("https://a:1,,https://b:2").contains("empty entry"));
        assert!(why("https://a:1,https://a:1").contains("listed twice"));
        assert!(why("").contains("empty entry"));
        assert!(why("https://a:1,ftp://b").contains("\"ftp://b\""));
        let many: Vec<String> = (0..17).map(|i| format!("https://h{i}:1")).collect();
        assert!(
            Brokers::new(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 16")
        );
        assert!(
            Brokers::new(Vec::<String>::new())
                .unwrap_err()
                .to_string()
                .contains("no broker URL")
        );
    }
}
