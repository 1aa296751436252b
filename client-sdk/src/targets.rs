//! Where each broker URL leads, and connecting there.
//!
//! A host name that resolves to several addresses (a DNS name for all
//! replicas, a headless Kubernetes Service) becomes one target per address,
//! so a dead address is skipped and benched like a dead URL; TLS still
//! verifies the certificate against the host name, never the address. The
//! name itself follows its addresses as a last target, resolved afresh at
//! each connection, so replicas that moved to new addresses are still
//! found. An IP-literal URL is one target, verified against its IP SAN.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

use crate::brokers::Brokers;
use crate::connector::{BrokerTls, Connector};
use crate::error::ClientError;

/// Addresses of one name used as separate targets, at most.
const MAX_ADDRESSES: usize = 8;

/// How often an open connection is pinged, and how long an answer may take
/// before the connection counts as lost.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One place to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// What logs and errors call it: the URL, with the address when the
    /// URL's name was expanded (`https://broker:7443 (10.0.0.7:7443)`).
    pub(crate) label: String,
    /// Where to connect.
    pub(crate) uri: String,
    /// The name TLS verifies, when `uri` holds an address instead.
    pub(crate) tls_name: Option<String>,
}

/// The targets of `url`, given what its host name resolved to (nothing
/// for an IP literal or a failed lookup).
pub(crate) fn expand(url: &str, resolved: &[SocketAddr]) -> Vec<Target> {
    let whole = Target {
        label: url.to_owned(),
        uri: url.to_owned(),
        tls_name: None,
    };
    let host = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned));
    let Some(host) = host.filter(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().is_err()) else {
        return vec![whole];
    };
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        if !addresses.contains(addr) && addresses.len() < MAX_ADDRESSES {
            addresses.push(*addr);
        }
    }
    if addresses.len() < 2 {
        // One address: the name is the same target, and keeps following DNS.
        return vec![whole];
    }
    let mut targets: Vec<Target> = addresses
        .iter()
        .map(|addr| Target {
            label: format!("{url} ({addr})"),
            uri: format!("https://{addr}"),
            tls_name: Some(host.clone()),
        })
        .collect();
    targets.push(whole);
    targets
}

/// Every target of `brokers`, in list order. A lookup is bounded by the
/// connect timeout; a name that cannot be resolved stays one target, whose
/// connection then fails with the resolver's reason.
pub(crate) async fn resolve(brokers: &Brokers) -> Vec<Target> {
    let mut targets = Vec::new();
    for url in brokers.urls() {
        let resolved = match url.parse::<http::Uri>() {
            Ok(uri) => match uri.host() {
                Some(host) if host.trim_matches(['[', ']']).parse::<IpAddr>().is_err() => {
                    let port = uri.port_u16().unwrap_or(443);
                    let lookup = tokio::net::lookup_host((host.to_owned(), port));
                    match tokio::time::timeout(brokers.get_connect_timeout(), lookup).await {
                        Ok(Ok(addrs)) => addrs.collect(),
                        _ => Vec::new(),
                    }
                }
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        targets.extend(expand(url, &resolved));
    }
    targets
}

/// One target, ready to connect: tonic's endpoint with the list's timeouts
/// and the connector that makes its TLS connection.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    endpoint: Endpoint,
    connector: Connector,
}

impl Route {
    /// The route to `target`, presenting what `tls` holds.
    pub(crate) fn new(
        brokers: &Brokers,
        target: &Target,
        tls: &BrokerTls,
    ) -> Result<Self, ClientError> {
        let invalid = |why: String| ClientError::InvalidUrl {
            url: target.label.clone(),
            why,
        };
        let uri: http::Uri = target.uri.parse().map_err(|e| invalid(format!("{e}")))?;
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("no host".into()))?
            .clone();
        let name = target
            .tls_name
            .clone()
            .unwrap_or_else(|| authority.host().trim_matches(['[', ']']).to_owned());
        let name = ServerName::try_from(name)
            .map_err(|e| invalid(format!("not a name TLS can verify: {e}")))?;
        // The connector does TLS itself; tonic sees a plain URI to hand it
        // and the `https` origin to put in every request.
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|e| invalid(e.to_string()))?
            .origin(uri)
            .connect_timeout(brokers.get_connect_timeout())
            .timeout(brokers.get_rpc_timeout())
            // A broker whose host vanished sends no reset: without pings a
            // revocation stream to it would wait forever instead of moving on.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(Self {
            endpoint,
            connector: tls.connector(name),
        })
    }

    /// A channel that connects when first used (and again after a loss).
    pub(crate) fn connect_lazy(&self) -> Channel {
        self.endpoint
            .connect_with_connector_lazy(self.connector.clone())
    }

    /// Connects now, TCP and TLS within `limit`.
    pub(crate) async fn connect_now(
        &self,
        label: &str,
        limit: Duration,
    ) -> Result<Channel, ClientError> {
        let connect = self.endpoint.connect_with_connector(self.connector.clone());
        match tokio::time::timeout(limit, connect).await {
            Ok(result) => result.map_err(|source| ClientError::Connect {
                url: label.to_owned(),
                source,
            }),
            Err(_) => Err(ClientError::Rejected(tonic::Status::from_error(Box::new(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{label}: connection timed out: no TLS handshake within {limit:?}"),
                ),
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_with_several_addresses_becomes_one_target_each_then_the_name() {
        let t = expand(
            "https://broker.internal:7443",
            &[
                addr("10.0.0.1:7443"),
                addr("[fd00::2]:7443"),
                addr("10.0.0.1:7443"),
            ],
        );
        let uris: Vec<&str> = t.iter().map(|t| t.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "https://10.0.0.1:7443",
                "https://[fd00::2]:7443",
                "https://broker.internal:7443"
            ]
        );
        assert_eq!(t[0].tls_name.as_deref(), Some("broker.internal"));
        assert_eq!(t[0].label, "https://broker.internal:7443 (10.0.0.1:7443)");
        assert_eq!(t[2].tls_name, None);
    }

    #[test]
    fn literals_single_addresses_and_failed_lookups_stay_one_target() {
        let one = |url: &str, resolved: &[SocketAddr]| {
            let t = expand(url, resolved);
            assert_eq!(t.len(), 1, "{t:?}");
            assert_eq!(t[0].uri, url);
            assert_eq!(t[0].tls_name, None);
        };
        one("https://127.0.0.1:7443", &[]);
        one("https://[::1]:7443", &[]);
        one("https://broker:7443", &[addr("10.0.0.1:7443")]);
        one("https://broker:7443", &[]);
        let many: Vec<SocketAddr> = (1..=20)
            .map(|i| addr(&format!("10.0.0.{i}:7443")))
            .collect();
        assert_eq!(
            expand("https://broker:7443", &many).len(),
            MAX_ADDRESSES + 1
        );
    }

    /// A TLS server speaking HTTP/2 on loopback with a certificate for
    /// `broker.test` only, offering `alpn` and keeping resumable sessions as
    /// rustls does by default; returns its port, its CA (PEM) and how each
    /// handshake went.
    async fn named_server(
        alpn: &[&[u8]],
    ) -> (
        u16,
        String,
        tokio::sync::mpsc::UnboundedReceiver<rustls::HandshakeKind>,
    ) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["broker.test".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (kinds, handshakes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let kinds = kinds.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(kind) = tls.get_ref().1.handshake_kind() {
                        let _ = kinds.send(kind);
                    }
                    if let Ok(mut h2) = h2::server::handshake(tls).await {
                        while h2.accept().await.is_some() {}
                    }
                });
            }
        });
        (port, ca_pem, handshakes)
    }

    fn target(port: u16, tls_name: Option<&str>) -> Target {
        Target {
            label: "test".into(),
            uri: format!("https://127.0.0.1:{port}"),
            tls_name: tls_name.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn an_address_target_is_verified_against_the_host_name() {
        let (port, ca, _) = named_server(&[b"h2"]).await;
        let brokers: Brokers = format!("https://broker.test:{port}").parse().unwrap();
        let tls = BrokerTls::new(ca.as_bytes()).unwrap();
        let limit = Duration::from_secs(5);
        Route::new(&brokers, &target(port, Some("broker.test")), &tls)
            .unwrap()
            .connect_now("named", limit)
            .await
            .expect("the certificate is valid for the name");
        let err = Route::new(&brokers, &target(port, None), &tls)
            .unwrap()
            .connect_now("bare", limit)
            .await
            .expect_err("the certificate is not valid for the address");
        assert!(
            err.to_string().contains("not valid for this host name"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_reconnect_is_a_full_handshake() {
        let (port, ca, mut handshakes) = named_server(&[b"h2"]).await;
        let brokers: Brokers = format!("https://broker.test:{port}").parse().unwrap();
        let tls = BrokerTls::new(ca.as_bytes()).unwrap();
        let route = Route::new(&brokers, &target(port, Some("broker.test")), &tls).unwrap();
        for _ in 0..2 {
            let channel = route
                .connect_now("named", Duration::from_secs(5))
                .await
                .unwrap();
            // The server sends its resumable sessions after the handshake.
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(channel);
        }
        for n in 0..2 {
            assert_eq!(
                handshakes.recv().await,
                Some(rustls::HandshakeKind::Full),
                "handshake {n}"
            );
        }
    }

    #[tokio::test]
    async fn a_broker_that_does_not_agree_to_http2_is_refused() {
        let (port, ca, _) = named_server(&[]).await;
        let brokers: Brokers = format!("https://broker.test:{port}").parse().unwrap();
        let tls = BrokerTls::new(ca.as_bytes()).unwrap();
        let err = Route::new(&brokers, &target(port, Some("broker.test")), &tls)
            .unwrap()
            .connect_now("no-alpn", Duration::from_secs(5))
            .await
            .expect_err("no ALPN agreement");
        assert!(err.to_string().contains("HTTP/2 (ALPN h2)"), "{err}");
    }
}
