//! A gRPC call written frame by frame with h2, so a request can claim —
//! and start sending — a message far larger than any client could hold in
//! memory, or carry bytes no protobuf encoder would produce.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::codegen::http;

/// What the broker answered.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The `grpc-status` code (`None`: the stream was reset or never
    /// answered).
    pub code: Option<i32>,
    /// `grpc-message`, percent-decoded only as far as it is ASCII.
    pub message: String,
    /// From the first byte sent to the answer.
    pub elapsed: Duration,
    /// Request bytes sent before the answer came.
    pub sent: u64,
}

/// Longest the answer may take before the call is abandoned.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Calls `path` on the broker at `127.0.0.1:port` (trusting `bundle_pem`)
/// with a message whose gRPC prefix claims `claimed` bytes, followed by
/// `chunk` repeated until `max_send` bytes went out or the broker answered.
pub async fn call(
    port: u16,
    bundle_pem: &[u8],
    path: &str,
    claimed: u32,
    chunk: Bytes,
    max_send: u64,
) -> Result<RawAnswer> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle_pem) {
        roots.add(cert.context("reading broker-ca.pem")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let (client, connection) = h2::client::handshake(stream).await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("https://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let began = Instant::now();
    let (response, mut body) = client.send_request(request, false)?;
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&claimed.to_be_bytes());
    body.send_data(Bytes::from(prefix), false)?;
    let mut sent = 5u64;
    tokio::pin!(response);
    let answer = loop {
        if sent >= max_send {
            break tokio::time::timeout(ANSWER_TIMEOUT, &mut response)
                .await
                .ok();
        }
        // Send while the broker lets us (flow control), stop at its answer.
        body.reserve_capacity(chunk.len());
        tokio::select! {
            answer = &mut response => break Some(answer),
            capacity = std::future::poll_fn(|cx| body.poll_capacity(cx)) => {
                match capacity {
                    Some(Ok(n)) if n > 0 => {
                        let n = n.min(chunk.len());
                        if body.send_data(chunk.slice(..n), false).is_err() {
                            break tokio::time::timeout(ANSWER_TIMEOUT, &mut response).await.ok();
                        }
                        sent += n as u64;
                    }
                    Some(Ok(_)) => {}
                    _ => break tokio::time::timeout(ANSWER_TIMEOUT, &mut response).await.ok(),
                }
            }
        }
    };
    let elapsed = began.elapsed();
    let (code, message) = match answer {
        Some(Ok(response)) => {
            let mut headers = response.headers().clone();
            let mut recv = response.into_body();
            if !headers.contains_key("grpc-status") {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
                if let Ok(Some(trailers)) = recv.trailers().await {
                    headers = trailers;
                }
            }
            let text = |k: &str| {
                headers
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            (
                text("grpc-status").and_then(|s| s.parse().ok()),
                text("grpc-message").unwrap_or_default(),
            )
        }
        Some(Err(e)) => (None, format!("stream error: {e}")),
        None => (None, "no answer".to_owned()),
    };
    Ok(RawAnswer {
        code,
        message,
        elapsed,
        sent,
    })
}
