//! The way to a broker: TCP, then TLS with a rustls configuration made
//! here, handed to tonic as its connector.
//!
//! tonic's own TLS (`Endpoint::tls_config`) builds a rustls `ClientConfig`
//! for every endpoint, each with an in-memory cache for 256 resumable
//! sessions (about 14 KB), and every workload source holds its own. Here
//! one configuration serves all endpoints of one client certificate, and it
//! resumes nothing: a source keeps one connection open for hours, and a
//! broker keeps its resumable sessions in memory (256 of them, for all its
//! clients), gone when it restarts, so a reconnect could rarely resume
//! anyway. A reconnect is a full handshake, which also means the broker
//! sees the certificate presented now, never one from an older handshake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::ClientError;

/// The ALPN protocol gRPC runs on.
const ALPN_H2: &[u8] = b"h2";

/// How the SDK talks TLS to brokers: the CAs that vouch for them and,
/// for calls that need it, the client certificate to present.
///
/// Build one with [`BrokerTls::new`], add a client certificate with
/// [`BrokerTls::with_client_pem`]. Cloning is cheap: clones share one
/// configuration.
#[derive(Clone)]
pub struct BrokerTls {
    roots: Arc<rustls::RootCertStore>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerTls")
            .field("roots", &self.roots.len())
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl BrokerTls {
    /// Trusts the CA certificates in `bundle_pem` (the broker's
    /// `broker-ca.pem`) and presents no client certificate.
    pub fn new(bundle_pem: &[u8]) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(bundle_pem) {
            let cert = cert.map_err(|e| ClientError::Bundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Bundle(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Bundle("no PEM certificate found".into()));
        }
        let roots = Arc::new(roots);
        let config = finish(
            builder()
                .with_root_certificates(Arc::clone(&roots))
                .with_no_client_auth(),
        );
        Ok(Self { roots, config })
    }

    /// The same trust, presenting `chain` (leaf first) with `key`.
    pub fn with_client_cert(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, ClientError> {
        let config = builder()
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(chain, key)
            .map_err(|e| ClientError::ClientCertificate(e.to_string()))?;
        Ok(Self {
            roots: Arc::clone(&self.roots),
            config: finish(config),
        })
    }

    /// The same trust, presenting the certificate chain in `cert_pem` with
    /// the private key in `key_pem` (an operator's or an SVID's).
    pub fn with_client_pem(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, ClientError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::ClientCertificate(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(ClientError::ClientCertificate(
                "no PEM certificate found".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ClientError::ClientCertificate(format!("private key: {e}")))?;
        self.with_client_cert(chain, key)
    }

    /// A connector to the broker that must prove it is `name`.
    pub(crate) fn connector(&self, name: ServerName<'static>) -> Connector {
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&self.config)),
            name,
        }
    }
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    /// One provider for every configuration (each source has its own).
    static RING: std::sync::LazyLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    ClientConfig::builder_with_provider(Arc::clone(&RING))
        .with_safe_default_protocol_versions()
        .expect("ring's provider has cipher suites for TLS 1.2 and 1.3")
}

fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// Connects to the address of the URI it is called with and verifies the
/// broker's certificate against a fixed name, which may differ from that
/// address (a target expanded from a host name).
#[derive(Clone)]
pub(crate) struct Connector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish()
    }
}

/// Why a connection was not made; tonic wraps it for the caller.
type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("the URI has no host")?;
            let host = host.trim_matches(['[', ']']).to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            // gRPC messages are small and latency-bound.
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                return Err("the broker did not agree to HTTP/2 (ALPN h2)".into());
            }
            Ok(TokioIo::new(stream))
        })
    }
}
