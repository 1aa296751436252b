//! A credential source: one background task that attests, then keeps an
//! X.509-SVID and one JWT per audience fresh, publishing them through a
//! `tokio::sync::watch` channel.
//!
//! Each credential is renewed once `fraction` (default ½) of the lifetime it
//! had when received has passed, ±`jitter` (default 10 %) so a fleet that
//! started together does not renew together. A failed renewal is retried
//! with jittered exponential backoff while the last valid credentials stay
//! published; an outage shorter than half a lifetime is therefore invisible.
//! Nothing expired is ever handed out: once the SVID expires the source
//! publishes [`SourceState::Unavailable`] and tries to re-attest with its
//! evidence: platform evidence (a Kubernetes or OIDC token file, GitHub
//! Actions, AWS instance identity) is read afresh every time and refusals
//! are retried, so the source recovers by itself; a join token works again
//! only if created with `--uses N`, and its refusal is final.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

mod revocation;
pub(crate) mod timing;

use revocation::{Revocations, Verdict, check_revoked, signed_by_retired_ca};
use timing::{backoff, honour_hint, renew_after};

use crate::client::{Client, IdleClient, WorkloadClient};
use crate::error::ClientError;
use crate::evidence::Evidence;
use crate::request::JwtRequest;
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// When and how credentials are renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefreshPolicy {
    /// Renew after this fraction of the lifetime remaining at receipt.
    pub fraction: f64,
    /// Random spread around that point, as a fraction of it (±).
    pub jitter: f64,
    /// First retry delay after a failure.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl RefreshPolicy {
    /// How long after receiving a credential with `remaining` lifetime a
    /// source or node agent renews it: `fraction` of it, ±`jitter`. The
    /// spread matters: with lifetimes in whole seconds, renewing at exactly
    /// half of what remains halves every credential's offset within its
    /// second each round, until a fleet renews in bursts.
    pub fn renew_after(&self, remaining: Duration) -> Duration {
        timing::renew_after(remaining, self)
    }
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            jitter: 0.1,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// What a source needs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Broker URL, or several replicas separated by commas (used in
    /// order, failing over as [`Brokers`](crate::Brokers) describes).
    pub broker: String,
    /// PEM bundle trusted for the broker's TLS certificate.
    pub bundle_pem: Vec<u8>,
    /// Attestation evidence.
    pub evidence: Evidence,
    /// One JWT is kept fresh per audience.
    pub jwt_audiences: Vec<String>,
    /// Refresh timing.
    pub policy: RefreshPolicy,
}

/// The credentials a source holds; every one unexpired when published.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `(env, name)` of the identity.
    pub identity: (String, String),
    /// The certificate and its locally generated key.
    pub svid: X509Svid,
    /// CAs of the identity's trust domain.
    pub bundle: TrustBundle,
    /// One JWT per audience.
    pub jwts: BTreeMap<String, JwtSvid>,
}

impl Credentials {
    /// The soonest expiry among all credentials.
    pub fn expires_at(&self) -> SystemTime {
        self.jwts
            .values()
            .map(|j| j.expires_at)
            .chain(std::iter::once(self.svid.expires_at))
            .min()
            .unwrap_or(self.svid.expires_at)
    }
}

/// What a source currently has to offer.
#[derive(Debug, Clone)]
pub enum SourceState {
    /// Not attested yet.
    Starting,
    /// Valid credentials.
    Ready(Arc<Credentials>),
    /// No valid credentials (expired during an outage, revoked, or
    /// attestation refused); `reason` says why and whether it is retrying.
    Unavailable {
        /// Human-readable cause.
        reason: String,
        /// Whether the source keeps trying by itself.
        retrying: bool,
    },
}

/// Why no credential can be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Still attesting.
    #[error("credentials are not available yet")]
    NotReady,
    /// None valid now.
    #[error("no valid credentials: {0}")]
    Unavailable(String),
    /// The source task has stopped.
    #[error("the credential source has stopped")]
    Stopped,
}

/// Handle to a running source. Dropping it stops the background task.
#[derive(Debug)]
pub struct CredentialSource {
    state: watch::Receiver<SourceState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CredentialSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CredentialSource {
    /// Starts the background task. Use [`CredentialSource::ready`] to wait
    /// for the first credentials.
    pub fn start(config: SourceConfig) -> Self {
        let (tx, rx) = watch::channel(SourceState::Starting);
        let task = tokio::spawn(run(config, tx));
        Self { state: rx, task }
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<SourceState> {
        self.state.clone()
    }

    /// The current credentials, checked for expiry at the time of the call.
    pub fn current(&self) -> Result<Arc<Credentials>, SourceError> {
        usable(&self.state.borrow())
    }

    /// Waits until credentials are available (or the source gives up).
    pub async fn ready(&self) -> Result<Arc<Credentials>, SourceError> {
        let mut rx = self.state.clone();
        loop {
            match &*rx.borrow_and_update() {
                SourceState::Starting => {}
                SourceState::Unavailable { retrying: true, .. } => {}
                state => return usable(state),
            }
            rx.changed().await.map_err(|_| SourceError::Stopped)?;
        }
    }
}

/// Credentials from `state`, refusing anything expired.
pub fn usable(state: &SourceState) -> Result<Arc<Credentials>, SourceError> {
    match state {
        SourceState::Starting => Err(SourceError::NotReady),
        SourceState::Unavailable { reason, .. } => Err(SourceError::Unavailable(reason.clone())),
        SourceState::Ready(c) if c.svid.remaining().is_zero() => Err(SourceError::Unavailable(
            "the X.509-SVID has expired".into(),
        )),
        SourceState::Ready(c) => Ok(Arc::clone(c)),
    }
}

/// The held credentials plus when each is due.
struct Held {
    creds: Credentials,
    svid_due: Instant,
    jwt_due: BTreeMap<String, Instant>,
    session: WorkloadClient,
}

async fn attest(client: &Client, config: &SourceConfig) -> Result<Held, ClientError> {
    let requests: Vec<JwtRequest> = config
        .jwt_audiences
        .iter()
        .map(JwtRequest::audience)
        .collect();
    let attested = client.attest(&config.evidence, &requests).await?;
    let now = Instant::now();
    let svid_due = now + renew_after(attested.svid.remaining(), &config.policy);
    let mut jwts = BTreeMap::new();
    let mut jwt_due = BTreeMap::new();
    for (audience, jwt) in config.jwt_audiences.iter().zip(attested.jwts) {
        jwt_due.insert(
            audience.clone(),
            now + renew_after(jwt.remaining(), &config.policy),
        );
        jwts.insert(audience.clone(), jwt);
    }
    let session = client.authenticated(&attested.svid).await?;
    tracing::info!(spiffe_id = %attested.svid.spiffe_id, serial = %attested.svid.serial, "attested");
    Ok(Held {
        creds: Credentials {
            identity: attested.identity,
            svid: attested.svid,
            bundle: attested.bundle,
            jwts,
        },
        svid_due,
        jwt_due,
        session,
    })
}

/// How the source reaches the brokers to attest: connected while it
/// attests, and put aside (no connection, no TLS state) once it holds an
/// SVID, until it must attest again.
struct Attester {
    idle: IdleClient,
    connected: Option<Client>,
}

impl Attester {
    fn new(client: Client) -> Self {
        Self {
            idle: client.idle(),
            connected: Some(client),
        }
    }

    async fn attest(&mut self, config: &SourceConfig) -> Result<Held, ClientError> {
        let client = match &self.connected {
            Some(client) => client,
            None => self.connected.insert(self.idle.connect().await?),
        };
        attest(client, config).await
    }

    fn set_aside(&mut self) {
        self.connected = None;
    }

    fn current_broker(&self) -> String {
        self.idle.current_broker()
    }
}

/// Renews whatever is due; on success the held state is updated in place.
async fn refresh_due(held: &mut Held, policy: &RefreshPolicy) -> Result<bool, ClientError> {
    let now = Instant::now();
    let mut changed = false;
    if held.svid_due <= now {
        let (svid, bundle) = held.session.renew().await?;
        let session = held.session.with_svid(&svid).await?;
        held.svid_due = Instant::now() + renew_after(svid.remaining(), policy);
        tracing::info!(serial = %svid.serial, expires_in = ?svid.remaining(), "renewed X.509-SVID");
        held.creds.svid = svid;
        held.creds.bundle = bundle;
        held.session = session;
        changed = true;
    }
    let due: Vec<String> = held
        .jwt_due
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(a, _)| a.clone())
        .collect();
    for audience in due {
        let jwt = held
            .session
            .fetch_jwt(&JwtRequest::audience(&audience))
            .await?;
        held.jwt_due.insert(
            audience.clone(),
            Instant::now() + renew_after(jwt.remaining(), policy),
        );
        held.creds.jwts.insert(audience, jwt);
        changed = true;
    }
    Ok(changed)
}

/// Evidence the broker will never accept again: retrying is pointless.
fn is_permanent(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument
        )
    )
}

/// The source's task, one per source for as long as it runs. Every call
/// it makes is boxed: a task is as large as the largest future it may hold
/// inline, and a process may run thousands of sources that spend nearly all
/// their time asleep; boxed, each call's state exists only while it runs.
async fn run(config: SourceConfig, tx: watch::Sender<SourceState>) {
    let policy = config.policy;
    let mut failures = 0u32;
    let client = loop {
        match Box::pin(Client::connect(&config.broker, &config.bundle_pem)).await {
            Ok(client) => break client,
            Err(e) => {
                failures += 1;
                crate::agent::metrics::failed();
                let delay = backoff(failures, &policy);
                // Said at every attempt: an agent that waits in silence
                // looks hung to whoever started it.
                tracing::warn!(
                    broker = %config.broker,
                    attempt = failures,
                    retry_in = ?delay,
                    "cannot reach the broker ({e}); retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                let _ = tx.send(SourceState::Unavailable {
                    reason: format!("cannot reach the broker: {e}"),
                    retrying: true,
                });
                tokio::time::sleep(delay).await;
            }
        }
    };
    let mut attester = Attester::new(client);
    let mut held: Option<Held> = None;
    // The broker an attestation reached before failing: a join token may
    // have been spent there, which a later "already used" should say.
    let mut sent_to: Option<String> = None;
    let mut revocations = Revocations::default();
    // The wait the broker last asked for (rate limits), honoured on retry.
    let mut hint = Duration::ZERO;
    loop {
        let Some(current) = held.as_mut() else {
            match Box::pin(attester.attest(&config)).await {
                Ok(h) => {
                    failures = 0;
                    // From here the SVID session is the one connection.
                    attester.set_aside();
                    let _ = tx.send(SourceState::Ready(Arc::new(h.creds.clone())));
                    Box::pin(revocations.subscribe(&h.session)).await;
                    held = Some(h);
                }
                Err(e) if is_permanent(&e) && !config.evidence.is_rereadable() => {
                    let earlier = sent_to.as_deref().map_or(String::new(), |broker| {
                        format!(
                            "; an earlier attempt reached {broker} before failing and may have spent it"
                        )
                    });
                    tracing::error!(error = %e, "attestation refused{earlier}; giving up");
                    let _ = tx.send(SourceState::Unavailable {
                        reason: format!(
                            "attestation refused ({e}){earlier}; new evidence is needed"
                        ),
                        retrying: false,
                    });
                    return;
                }
                Err(e) => {
                    if crate::failover::maybe_delivered(&e) {
                        sent_to = Some(attester.current_broker());
                    }
                    // Platform evidence is read afresh each time (a rotated
                    // token file, a new CI token), so a refusal may not last.
                    failures += 1;
                    crate::agent::metrics::failed();
                    if is_permanent(&e) {
                        // Say why the broker refuses (transport errors keep
                        // the state they found, e.g. "expired").
                        let _ = tx.send(SourceState::Unavailable {
                            reason: format!("attestation refused ({e}); retrying"),
                            retrying: true,
                        });
                    }
                    let delay = honour_hint(backoff(failures, &policy), &e);
                    tracing::warn!(
                        error = %e,
                        attempt = failures,
                        retry_in = ?delay,
                        "attestation failed; retrying in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
            continue;
        };
        // Sleep until something is due, or until the soonest expiry (to stop
        // publishing it), or until the next retry.
        let expiry = current.creds.expires_at();
        let until_expiry = expiry.duration_since(SystemTime::now()).unwrap_or_default();
        let next_due = current
            .jwt_due
            .values()
            .copied()
            .chain(std::iter::once(current.svid_due))
            .min()
            .unwrap_or(current.svid_due);
        let wake = if failures == 0 {
            next_due
        } else {
            // Never let backoff sleep through the rest of the lifetime: retry
            // at least four times before the SVID expires.
            let left = current.creds.svid.remaining();
            Instant::now()
                + backoff(failures, &policy)
                    .min((left / 4).max(policy.min_backoff))
                    .max(hint)
        };
        let wake = wake.min(Instant::now() + until_expiry);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            event = revocations.next() => {
                let Some(event) = event else {
                    // Broken or never established: `next` already waited a
                    // jittered delay, so a fleet does not reconnect at once.
                    Box::pin(revocations.subscribe(&current.session)).await;
                    continue;
                };
                if signed_by_retired_ca(&current.creds.svid, &event) {
                    // The CA that signed our SVID was retired: renew now
                    // from its successor (the broker still renews a
                    // certificate it issued, and nothing else, for it).
                    tracing::warn!(serial = %current.creds.svid.serial, reason = %event.reason, "the CA of this SVID was retired; renewing now");
                    current.svid_due = Instant::now();
                    continue;
                }
                match Box::pin(check_revoked(current)).await {
                    Ok(Verdict::SvidRevoked(reason)) => {
                        tracing::error!(serial = %current.creds.svid.serial, %reason, "SVID revoked");
                        let _ = tx.send(SourceState::Unavailable {
                            reason: format!("the X.509-SVID was revoked ({reason})"),
                            retrying: false,
                        });
                        return;
                    }
                    Ok(Verdict::Keep) => {
                        let _ = tx.send(SourceState::Ready(Arc::new(current.creds.clone())));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot check credentials after a revocation"),
                }
            }
        }

        if current.creds.svid.remaining().is_zero() {
            let _ = tx.send(SourceState::Unavailable {
                reason: "the X.509-SVID expired before it could be renewed; re-attesting".into(),
                retrying: true,
            });
            tracing::warn!("SVID expired; trying to re-attest with the same evidence");
            held = None;
            continue;
        }
        // A JWT that expired during an outage is withdrawn, not handed out.
        let now = SystemTime::now();
        let before = current.creds.jwts.len();
        current.creds.jwts.retain(|_, j| j.expires_at > now);
        if current.creds.jwts.len() != before {
            let _ = tx.send(SourceState::Ready(Arc::new(current.creds.clone())));
        }
        let serial_before = current.creds.svid.serial.clone();
        match Box::pin(refresh_due(current, &policy)).await {
            Ok(changed) => {
                failures = 0;
                hint = Duration::ZERO;
                if changed {
                    let _ = tx.send(SourceState::Ready(Arc::new(current.creds.clone())));
                }
                if current.creds.svid.serial != serial_before {
                    crate::agent::metrics::rotated();
                    // The old session's certificate is on its way out.
                    Box::pin(revocations.subscribe(&current.session)).await;
                }
            }
            Err(e) => {
                failures += 1;
                crate::agent::metrics::failed();
                hint = e.retry_after().unwrap_or_default();
                tracing::warn!(error = %e, attempt = failures, "renewal failed; keeping current credentials");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Thousands of sources share a process and sleep nearly all the time:
    /// what each task holds while asleep is its whole future, as large as
    /// the largest call it might make inline.
    #[test]
    fn a_sleeping_source_task_is_small() {
        let config = SourceConfig {
            broker: "https://127.0.0.1:1".into(),
            bundle_pem: Vec::new(),
            evidence: Evidence::JoinToken("token".into()),
            jwt_audiences: vec!["a".into()],
            policy: RefreshPolicy::default(),
        };
        let (tx, _rx) = watch::channel(SourceState::Starting);
        let task = run(config, tx);
        // 7,248 bytes when its calls were held inline; 2,416 boxed.
        let size = std::mem::size_of_val(&task);
        assert!(size <= 3072, "the source task's future is {size} bytes");
    }
}
