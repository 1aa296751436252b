//! A minimal HTTP/1.1 GET over loopback, enough to read the broker's
//! JSON endpoints without pulling an HTTP client into the test build.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` and returns the raw body bytes (for DER), failing on non-200.
/// The broker sends fixed-length bodies for binary content.
pub async fn get_bytes(port: u16, path: &str) -> Vec<u8> {
    let raw = fetch(port, path).await.expect("HTTP GET");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..end]);
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    raw[end + 4..].to_vec()
}

async fn fetch(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    Ok(raw)
}

/// GETs `path` from 127.0.0.1:`port`; returns status and body.
pub async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let raw = fetch(port, path).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GETs JSON, panicking on a non-200 answer.
pub async fn get_json(port: u16, path: &str) -> serde_json::Value {
    let (status, body) = get(port, path).await.expect("HTTP GET");
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}
