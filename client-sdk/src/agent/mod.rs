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
/// files keep the last valid credential.
pub async fn run(config: &AgentConfig) -> Result<(), AgentError> {
    let (client, mut held) = attest(config).await?;
    write(config, &held)?;
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
        tokio::time::sleep(wait).await;
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
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "renewal failed; keeping current credentials");
            }
        }
    }
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
