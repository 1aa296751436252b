//! A call authenticated with a JWT-SVID, verified by the service it is for.
//!
//! The caller keeps one JWT per audience fresh with a [`CredentialSource`]
//! and sends it as `Authorization: Bearer <jwt>`. The service, a small
//! HTTP/1.1 server on 127.0.0.1, accepts only tokens for its own audience
//! ([`AUDIENCE`]): it checks each one with the SDK's [`JwtVerifier`] (ES256
//! only, a `kid` from the environment's JWKS fetched from the broker, the
//! signature, issuer, environment, audience, expiry and a subject in the
//! trust domain), answers 200 with the caller's SPIFFE ID, or 401 with the
//! verifier's reason.
//!
//! Three calls are made: with the caller's token for [`AUDIENCE`]
//! (accepted); with its token for [`OTHER_AUDIENCE`], as if another service
//! that received it replayed it here (refused: audience); and with the first
//! token after its `sub` claim was changed (refused: signature).
//!
//! A long-running service would also refuse revoked tokens as soon as the
//! broker announces them, by giving the verifier an SVID-authenticated
//! session of its own ([`JwtVerifier::follow_revocations`]); this example
//! keeps to one call of each kind.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{
    Client, CredentialSource, Evidence, JwtVerifier, RefreshPolicy, SourceConfig,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::broker::{Broker, ENV, Registration};

/// Name of the calling identity.
pub const CALLER: &str = "example-caller";
/// The audience the service accepts.
pub const AUDIENCE: &str = "example-api";
/// Another audience the caller holds a token for.
pub const OTHER_AUDIENCE: &str = "other-api";
/// Longest the caller may take to get its first credentials, and one call.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head the service reads.
const MAX_HEAD: u64 = 16 * 1024;

/// One call to the service and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which token was sent.
    pub token: &'static str,
    /// The status this call should get: 200 or 401.
    pub expected: u16,
    /// The HTTP status the service answered.
    pub status: u16,
    /// The response body: the caller's SPIFFE ID, or why it was refused.
    pub body: String,
}

/// Registers the caller (or reuses it), starts the service, makes the three
/// calls and prints each outcome.
pub async fn run(broker: &Broker) -> Result<Vec<Call>> {
    let mut admin = broker.admin().await?;
    admin
        .register(&Registration {
            name: CALLER,
            purpose: "jwt_call example: calls example-api with a JWT-SVID",
            audiences: &[AUDIENCE, OTHER_AUDIENCE],
            x509_ttl: None,
        })
        .await?;
    let caller = CredentialSource::start(SourceConfig {
        broker: broker.url.clone(),
        bundle_pem: broker.bundle_pem.clone(),
        evidence: Evidence::JoinToken(admin.join_token(CALLER).await?),
        jwt_audiences: vec![AUDIENCE.into(), OTHER_AUDIENCE.into()],
        policy: RefreshPolicy::default(),
    });
    let creds = timeout(TIMEOUT, caller.ready())
        .await
        .map_err(|_| anyhow!("the caller got no credentials within {TIMEOUT:?}"))?
        .context("the caller's credentials")?;
    let token = |audience: &str| {
        creds
            .jwts
            .get(audience)
            .map(|jwt| jwt.token.clone())
            .with_context(|| format!("the caller holds no JWT for {audience}"))
    };
    let for_us = token(AUDIENCE)?;

    // The service side: verifies with the environment's keys from the broker.
    let client = Client::connect(&broker.url, &broker.bundle_pem).await?;
    let verifier = JwtVerifier::new(&client, ENV, AUDIENCE)
        .await
        .context("loading the environment's JWT keys")?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(serve(listener, verifier));
    println!("service for audience {AUDIENCE} listens on http://{addr}");

    let attempts = [
        ("its token for example-api", 200, for_us.clone()),
        ("its token for other-api", 401, token(OTHER_AUDIENCE)?),
        (
            "its example-api token with sub changed",
            401,
            with_other_subject(&for_us)?,
        ),
    ];
    let mut calls = Vec::new();
    for (what, expected, jwt) in attempts {
        let (status, body) = timeout(TIMEOUT, call(addr, &jwt))
            .await
            .map_err(|_| anyhow!("no answer within {TIMEOUT:?}"))??;
        println!("{CALLER} sends {what}: {status} {body}");
        calls.push(Call {
            token: what,
            expected,
            status,
            body,
        });
    }
    serving.abort();
    Ok(calls)
}

/// `token` with its `sub` claim replaced by another identity of the same
/// trust domain, signature untouched: what a forger would try.
fn with_other_subject(token: &str) -> Result<String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(anyhow!("the caller's JWT is not a compact JWS"));
    };
    let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    let sub = claims["sub"].as_str().unwrap_or_default();
    let forged = match sub.rsplit_once('/') {
        Some((trust_domain, _)) => format!("{trust_domain}/payments/admin"),
        None => return Err(anyhow!("the caller's JWT has no SPIFFE ID subject")),
    };
    claims["sub"] = forged.into();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?);
    Ok(format!("{header}.{payload}.{signature}"))
}

/// Answers every connection with 200 and the caller's SPIFFE ID when its
/// bearer token verifies, 401 and the reason otherwise.
async fn serve(listener: TcpListener, verifier: JwtVerifier) {
    while let Ok((tcp, _)) = listener.accept().await {
        let verifier = verifier.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(tcp, &verifier).await {
                eprintln!("service: {e:#}");
            }
        });
    }
}

/// Reads one request head (at most [`MAX_HEAD`] bytes) and answers it.
async fn answer(tcp: TcpStream, verifier: &JwtVerifier) -> Result<()> {
    let mut reader = BufReader::new(tcp.take(MAX_HEAD));
    let mut bearer = None;
    // The request line, then headers up to the empty line.
    loop {
        let mut line = String::new();
        ensure!(
            reader.read_line(&mut line).await? > 0,
            "the request head ended early or exceeded {MAX_HEAD} bytes"
        );
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            bearer = value.trim().strip_prefix("Bearer ").map(str::to_owned);
        }
    }
    let (status, body) = match bearer {
        None => ("401 Unauthorized", "no bearer token".to_owned()),
        Some(token) => match verifier.verify(&token).await {
            Ok(verified) => ("200 OK", format!("hello {}", verified.spiffe_id)),
            Err(e) => ("401 Unauthorized", e.to_string()),
        },
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut tcp = reader.into_inner().into_inner();
    tcp.write_all(response.as_bytes()).await?;
    tcp.shutdown().await?;
    Ok(())
}

/// `GET /hello` with `jwt` as bearer token; returns the status and body.
async fn call(addr: SocketAddr, jwt: &str) -> Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.context("connecting")?;
    let request = format!(
        "GET /hello HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {jwt}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    tcp.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed response {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}
