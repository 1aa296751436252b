//! The sidecar agent: attest, write credentials to files, keep them fresh.

mod files;

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

pub use files::{OutputDir, audience_file_name, write_atomic};

use crate::client::{Client, WorkloadClient};
use crate::error::ClientError;
use crate::request::{Evidence, JwtRequest};
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// What the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Broker URL.
    pub broker: String,
    /// PEM bundle trusted for the broker's TLS certificate.
    pub bundle_pem: Vec<u8>,
    /// Attestation evidence.
    pub evidence: Evidence,
    /// Where to write.
    pub out_dir: OutputDir,
    /// One JWT is kept per audience.
    pub jwt_audiences: Vec<String>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A broker call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing output failed.
    #[error("cannot write credentials: {0}")]
    Io(#[from] std::io::Error),
    /// The SVID expired before it could be renewed; join tokens are single
    /// use, so the agent cannot re-attest by itself.
    #[error(
        "the X.509-SVID expired before the broker could renew it; \
         re-attestation needs new evidence (a join token is single-use)"
    )]
    Expired,
    /// The SVID was revoked; its files were removed.
    #[error("the X.509-SVID was revoked ({0}); credentials removed")]
    Revoked(String),
}

/// Credentials currently held.
struct Held {
    svid: X509Svid,
    bundle: TrustBundle,
    jwts: Vec<JwtSvid>,
}

fn jwt_requests(audiences: &[String]) -> Vec<JwtRequest> {
    audiences.iter().map(JwtRequest::audience).collect()
}

async fn attest(config: &AgentConfig) -> Result<(Client, Held), AgentError> {
    let client = Client::connect(&config.broker, &config.bundle_pem).await?;
    let attested = client
        .attest(&config.evidence, &jwt_requests(&config.jwt_audiences))
        .await?;
    tracing::info!(
        spiffe_id = %attested.svid.spiffe_id,
        serial = %attested.svid.serial,
        jwts = attested.jwts.len(),
        "attested"
    );
    Ok((
        client,
        Held {
            svid: attested.svid,
            bundle: attested.bundle,
            jwts: attested.jwts,
        },
    ))
}

fn write(config: &AgentConfig, held: &Held) -> std::io::Result<()> {
    config.out_dir.write_svid(&held.svid, &held.bundle)?;
    for jwt in &held.jwts {
        config.out_dir.write_jwt(jwt)?;
    }
    Ok(())
}

/// Attests, writes every file once and returns.
pub async fn run_once(config: &AgentConfig) -> Result<(), AgentError> {
    let (_, held) = attest(config).await?;
    write(config, &held)?;
    Ok(())
}

/// Attests, writes the files, then keeps them fresh until an unrecoverable
/// error: each credential is renewed at half its remaining lifetime, and a
/// failed renewal is retried with jittered exponential backoff while the
/// files keep the last valid credential. The agent also follows the broker's
/// revocation stream: a revoked JWT is replaced (if the identity still
/// allows it) or removed, and a revoked SVID removes every credential file
/// and stops the agent, since a revoked SVID cannot renew.
pub async fn run(config: &AgentConfig) -> Result<(), AgentError> {
    let (client, mut held) = attest(config).await?;
    write(config, &held)?;
    let mut session = client.authenticated(&held.svid).await?;
    let mut revocations = Revocations::default();
    revocations.subscribe(&session).await;
    let mut failures = 0u32;
    loop {
        let soonest = std::iter::once(held.svid.remaining())
            .chain(held.jwts.iter().map(JwtSvid::remaining))
            .min()
            .unwrap_or_default();
        let wait = if failures == 0 {
            jitter(soonest / 2, 10)
        } else {
            backoff(failures)
                .min(soonest / 2)
                .max(Duration::from_millis(100))
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            event = revocations.next() => {
                match event {
                    Some(_) => handle_revocation(config, &session, &mut held).await?,
                    None => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        revocations.subscribe(&session).await;
                    }
                }
                continue;
            }
        }
        if held.svid.remaining().is_zero() {
            return Err(AgentError::Expired);
        }
        match refresh(&client, config, &held).await {
            Ok(next) => {
                write(config, &next)?;
                tracing::info!(
                    serial = %next.svid.serial,
                    expires_in = ?next.svid.remaining(),
                    jwts = next.jwts.len(),
                    "rotated credentials"
                );
                held = next;
                failures = 0;
                match client.authenticated(&held.svid).await {
                    Ok(s) => {
                        session = s;
                        revocations.subscribe(&session).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot reconnect with the new SVID"),
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "renewal failed; keeping current credentials");
            }
        }
    }
}

/// The agent's subscription to the broker's revocation stream, resumed from
/// the last event seen.
#[derive(Default)]
struct Revocations {
    stream: Option<tonic::Streaming<crate::Revocation>>,
    last_seq: i64,
}

impl Revocations {
    async fn subscribe(&mut self, session: &WorkloadClient) {
        self.stream = match session.watch_revocations(self.last_seq).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, "cannot follow revocations; will retry");
                None
            }
        };
    }

    /// The next event; `None` when the stream broke (resubscribe). Pending
    /// forever while there is no stream.
    async fn next(&mut self) -> Option<crate::Revocation> {
        let Some(stream) = self.stream.as_mut() else {
            return std::future::pending().await;
        };
        match stream.message().await {
            Ok(Some(event)) => {
                self.last_seq = self.last_seq.max(event.seq);
                Some(event)
            }
            _ => {
                self.stream = None;
                None
            }
        }
    }
}

/// Checks what the agent holds against the broker after a revocation event.
async fn handle_revocation(
    config: &AgentConfig,
    session: &WorkloadClient,
    held: &mut Held,
) -> Result<(), AgentError> {
    let Some(leaf) = held.svid.cert_chain.first() else {
        return Ok(());
    };
    let svid = session.introspect_certificate(leaf).await?;
    if !svid.active {
        config.out_dir.remove_credentials()?;
        tracing::error!(serial = %held.svid.serial, reason = %svid.reason, "SVID revoked; removed credentials");
        return Err(AgentError::Revoked(svid.reason));
    }
    for i in 0..held.jwts.len() {
        let answer = session.introspect_token(&held.jwts[i].token).await?;
        if answer.active {
            continue;
        }
        tracing::warn!(jti = %held.jwts[i].jti, reason = %answer.reason, "JWT revoked; replacing it");
        let request = JwtRequest {
            audiences: held.jwts[i].audiences.clone(),
            ..JwtRequest::default()
        };
        match session.fetch_jwt(&request).await {
            Ok(jwt) => {
                config.out_dir.write_jwt(&jwt)?;
                held.jwts[i] = jwt;
            }
            Err(e) => {
                config.out_dir.remove_jwt(&held.jwts[i])?;
                tracing::error!(error = %e, "no replacement JWT; removed the revoked one");
            }
        }
    }
    Ok(())
}

async fn refresh(client: &Client, config: &AgentConfig, held: &Held) -> Result<Held, ClientError> {
    let session: WorkloadClient = client.authenticated(&held.svid).await?;
    let (svid, bundle) = session.renew().await?;
    let mut jwts = Vec::with_capacity(config.jwt_audiences.len());
    for request in jwt_requests(&config.jwt_audiences) {
        jwts.push(session.fetch_jwt(&request).await?);
    }
    Ok(Held { svid, bundle, jwts })
}

/// `base` varied by up to ±`percent`%.
fn jitter(base: Duration, percent: u64) -> Duration {
    let mut byte = [0u8; 2];
    let _ = SystemRandom::new().fill(&mut byte);
    let r = u64::from(u16::from_le_bytes(byte)) % (2 * percent + 1);
    base * (100 - percent as u32 + r as u32) / 100
}

/// 1s, 2s, 4s … capped at 60s, with ±20% jitter.
fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(6);
    jitter(Duration::from_secs(secs.min(60)), 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..200 {
            let d = jitter(Duration::from_secs(100), 10);
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
        assert!(backoff(1) <= Duration::from_millis(1200));
        assert!(backoff(30) <= Duration::from_secs(72));
    }
}
