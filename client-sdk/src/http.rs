//! A small HTTP/1.1 client on hyper (already in the graph through tonic)
//! for OIDC discovery and JWKS: one request per connection, bounded in
//! time and size, `http://` or `https://` (rustls, trusting `ca_file` or
//! the system bundle).
//!
//! One client for both sides: the broker fetches OIDC discovery and JWKS
//! with it, the SDK the GitHub Actions token endpoint and the EC2 metadata
//! service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::net::TcpStream;

/// Largest response body read.
pub const MAX_BODY: usize = 1 << 20;
/// Longest a whole request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// System CA bundle used for https when no CA file is configured.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("invalid URL {0:?}")]
    Url(String),
    /// Connecting, TLS or HTTP failed.
    #[error("{url}: {why}")]
    Io {
        /// The URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The server answered with a non-2xx status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// No trust roots for https.
    #[error("https needs CA certificates: {0}")]
    Trust(String),
}

/// One HTTP client configuration (its trust roots for https).
#[derive(Clone)]
pub struct HttpFetcher {
    tls: Option<tokio_rustls::TlsConnector>,
    tls_error: Option<String>,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("https", &self.tls.is_some())
            .finish()
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        // Bundles carry the odd certificate rustls cannot use; skip those.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    Ok(roots)
}

impl HttpFetcher {
    /// A client trusting `ca_file` for https, or the system bundle
    /// (`SSL_CERT_FILE`, else /etc/ssl/certs/ca-certificates.crt). When no
    /// roots can be loaded, plain http still works and https requests fail
    /// saying why.
    pub fn new(ca_file: Option<&Path>) -> Self {
        let path = ca_file.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE))
        });
        match load_roots(&path) {
            Ok(roots) => {
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth());
                match config {
                    Ok(config) => Self {
                        tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
                        tls_error: None,
                    },
                    Err(e) => Self {
                        tls: None,
                        tls_error: Some(e.to_string()),
                    },
                }
            }
            Err(e) => Self {
                tls: None,
                tls_error: Some(e),
            },
        }
    }

    /// Whether https requests can be made.
    pub fn https_ready(&self) -> Result<(), FetchError> {
        match &self.tls {
            Some(_) => Ok(()),
            None => Err(FetchError::Trust(
                self.tls_error.clone().unwrap_or_default(),
            )),
        }
    }

    /// GETs `url`; the body of a 2xx answer.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        self.request("GET", url, &[]).await
    }

    /// Sends `method url` with `headers` and no body; the body of a 2xx answer.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, FetchError> {
        tokio::time::timeout(TIMEOUT, self.request_inner(method, url, headers))
            .await
            .map_err(|_| FetchError::Io {
                url: url.to_owned(),
                why: format!("no answer within {}s", TIMEOUT.as_secs()),
            })?
    }

    async fn request_inner(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, FetchError> {
        let io_err = |why: String| FetchError::Io {
            url: url.to_owned(),
            why,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Url(url.to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Url(url.to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| io_err(format!("connect: {e}")))?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "credbroker");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| io_err(e.to_string()))?;
        let response = if https {
            self.https_ready()?;
            let connector = self.tls.as_ref().expect("checked above");
            let name =
                ServerName::try_from(host.clone()).map_err(|_| FetchError::Url(url.to_owned()))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| io_err(format!("TLS: {e}")))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
        .map_err(io_err)?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(FetchError::Status {
                url: url.to_owned(),
                status,
            });
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| io_err(format!("body: {e}")))?;
        Ok(body.to_bytes().to_vec())
    }
}

async fn send<T>(
    io: TokioIo<T>,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}
