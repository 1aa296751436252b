//! The agent's health endpoint: `GET /healthz` answers 200 while the
//! source holds valid credentials and 503 (with the reason) otherwise;
//! `GET /metrics` is the Prometheus exposition ([`super::metrics`]).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::source::{SourceState, usable};

/// Answers health checks on `listener` until the process ends.
pub async fn serve(listener: TcpListener, state: watch::Receiver<SourceState>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let mut content_type = "text/plain";
            let (status, body) = if request.starts_with("GET /metrics ") {
                content_type = "text/plain; version=0.0.4; charset=utf-8";
                ("200 OK", super::metrics::render(&state.borrow()))
            } else if !request.starts_with("GET /healthz ") {
                ("404 Not Found", "not found\n".to_owned())
            } else {
                match usable(&state.borrow()) {
                    Ok(creds) => ("200 OK", format!("ok {}\n", creds.svid.spiffe_id)),
                    Err(e) => ("503 Service Unavailable", format!("{e}\n")),
                }
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
