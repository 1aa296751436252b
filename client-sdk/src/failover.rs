//! Calls that fail over between broker replicas.
//!
//! A [`Pool`] holds one channel per broker URL and sends each call to the
//! broker in use; while that one works every call goes there (sticky: no
//! flapping, one warm connection). A call that fails because the broker is
//! unreachable or unavailable moves on to the next broker, in list order,
//! skipping those that failed recently (each is benched for a jittered,
//! doubling while); if every broker is benched they are tried anyway,
//! soonest back first, so a list never locks itself out. Refusals are the
//! broker's answer and are returned as they are.
//!
//! Whether a failed call may be sent again elsewhere is the caller's
//! choice ([`Retry`]): reads and issuance from a CSR or an SVID are safe to
//! repeat; attestation may spend a single-use join token, so it moves on
//! only when the request never left (the connection could not be made).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credbroker_proto::v1::workload_client::WorkloadClient as Grpc;
use tokio::time::Instant;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::brokers::Brokers;
use crate::error::ClientError;

/// First bench time of a failed broker; doubles per consecutive failure.
const BENCH_MIN: Duration = Duration::from_secs(1);
/// Longest bench time.
const BENCH_MAX: Duration = Duration::from_secs(30);

/// How often an open connection is pinged, and how long an answer may take
/// before the connection counts as lost.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failovers made by this process (the agent's metric).
static FAILOVERS: AtomicU64 = AtomicU64::new(0);

/// How many times a call moved to another broker since the process began.
pub(crate) fn failovers() -> u64 {
    FAILOVERS.load(Ordering::Relaxed)
}

/// Whether a failed call may be sent to another broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Safe to repeat (FetchJwt, RenewX509, Introspect, streams, mints).
    Idempotent,
    /// Only if the request was certainly not sent (Attest).
    UnlessSent,
}

/// Which broker is in use and which are benched; shared by every pool
/// made for one broker list (the anonymous client and each SVID session),
/// so what one learns the others use.
#[derive(Debug)]
pub(crate) struct Health {
    active: AtomicUsize,
    slots: Mutex<Vec<Slot>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    strikes: u32,
    benched_until: Option<Instant>,
}

impl Health {
    pub(crate) fn new(brokers: usize) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            slots: Mutex::new(vec![Slot::default(); brokers]),
        })
    }

    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The order to try: the one in use, then the others in list order
    /// from there; benched ones last, soonest back first.
    pub(crate) fn order(&self) -> Vec<usize> {
        let slots = self.slots.lock().map(|s| s.clone()).unwrap_or_default();
        let n = slots.len().max(1);
        let start = self.active() % n;
        let now = Instant::now();
        let rotation: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let benched = |i: &usize| {
            slots
                .get(*i)
                .and_then(|s| s.benched_until)
                .is_some_and(|t| t > now)
        };
        let mut order: Vec<usize> = rotation.iter().copied().filter(|i| !benched(i)).collect();
        let mut later: Vec<usize> = rotation.into_iter().filter(benched).collect();
        later.sort_by_key(|i| slots.get(*i).and_then(|s| s.benched_until));
        order.extend(later);
        order
    }

    fn failed(&self, i: usize) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(i)
        {
            slot.strikes = slot.strikes.saturating_add(1);
            let bench = BENCH_MIN
                .saturating_mul(1u32 << (slot.strikes - 1).min(5))
                .min(BENCH_MAX);
            slot.benched_until = Some(Instant::now() + crate::source::timing::jitter(bench, 0.2));
        }
    }

    fn succeeded(&self, i: usize) {
        if let Ok(mut slots) = self.slots.lock()
            && let Some(slot) = slots.get_mut(i)
        {
            *slot = Slot::default();
        }
        self.active.store(i, Ordering::Relaxed);
    }
}

/// One broker's channel.
#[derive(Debug, Clone)]
struct Member {
    url: String,
    grpc: Grpc<Channel>,
}

/// Channels to every broker of a list, all with the same TLS settings.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    members: Arc<[Member]>,
    health: Arc<Health>,
}

fn endpoint(brokers: &Brokers, url: &str, tls: ClientTlsConfig) -> Result<Endpoint, ClientError> {
    let connect_err = |source| ClientError::Connect {
        url: url.to_owned(),
        source,
    };
    Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::InvalidUrl {
            url: url.to_owned(),
            why: e.to_string(),
        })?
        .connect_timeout(brokers.get_connect_timeout())
        .timeout(brokers.get_rpc_timeout())
        // A broker whose host vanished sends no reset: without pings a
        // revocation stream to it would wait forever instead of moving on.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .tls_config(tls)
        .map_err(connect_err)
}

/// Connects to `endpoint` now, bounding the TLS handshake too (tonic's
/// connect timeout covers only TCP: a stopped process whose kernel still
/// accepts connections would otherwise hold the caller forever).
async fn connect_now(
    endpoint: &Endpoint,
    url: &str,
    limit: Duration,
) -> Result<Channel, ClientError> {
    match tokio::time::timeout(limit, endpoint.connect()).await {
        Ok(result) => result.map_err(|source| ClientError::Connect {
            url: url.to_owned(),
            source,
        }),
        Err(_) => Err(ClientError::Rejected(tonic::Status::from_error(Box::new(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{url}: connection timed out: no TLS handshake within {limit:?}"),
            ),
        )))),
    }
}

impl Pool {
    /// Channels to every broker, connecting now to the first that answers
    /// (in the order `health` prefers) so that an unusable list fails here,
    /// naming why; the others connect when first needed.
    pub(crate) async fn open(
        brokers: &Brokers,
        tls: &ClientTlsConfig,
        health: Arc<Health>,
    ) -> Result<Self, ClientError> {
        let endpoints = brokers
            .urls()
            .iter()
            .map(|url| endpoint(brokers, url, tls.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connected = None;
        let mut last_err = None;
        let order = health.order();
        for (n, &i) in order.iter().enumerate() {
            let url = &brokers.urls()[i];
            match connect_now(&endpoints[i], url, brokers.get_connect_timeout()).await {
                Ok(channel) => {
                    connected = Some((i, channel));
                    break;
                }
                Err(e) => {
                    health.failed(i);
                    if let Some(&next) = order.get(n + 1) {
                        moved(url, &e, &brokers.urls()[next]);
                    }
                    last_err = Some(e);
                }
            }
        }
        let Some((up, channel)) = connected else {
            return Err(last_err.expect("a broker list is never empty"));
        };
        health.succeeded(up);
        let members = endpoints
            .iter()
            .zip(brokers.urls())
            .enumerate()
            .map(|(i, (endpoint, url))| Member {
                url: url.clone(),
                grpc: Grpc::new(if i == up {
                    channel.clone()
                } else {
                    endpoint.connect_lazy()
                }),
            })
            .collect();
        Ok(Self { members, health })
    }

    /// The generated client of the broker in use.
    pub(crate) fn grpc(&self) -> Grpc<Channel> {
        let i = self.health.active() % self.members.len();
        self.members[i].grpc.clone()
    }

    /// Runs `call` on the broker in use, moving on to the next on a
    /// failure that `retry` allows; returns the first answer, or the last
    /// failure once every broker was tried.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let order = self.health.order();
        let mut last_err = None;
        for (n, &i) in order.iter().enumerate() {
            let member = &self.members[i];
            match call(member.grpc.clone()).await {
                Ok(answer) => {
                    self.health.succeeded(i);
                    return Ok(answer);
                }
                Err(e) if broker_unusable(&e) => {
                    self.health.failed(i);
                    let next = order.get(n + 1).map(|&j| &self.members[j]);
                    let Some(next) = next.filter(|_| retry == Retry::Idempotent || unsent(&e))
                    else {
                        return Err(e);
                    };
                    moved(&member.url, &e, &next.url);
                    last_err = Some(e);
                }
                Err(e) => {
                    // An answer: this broker works.
                    self.health.succeeded(i);
                    return Err(e);
                }
            }
        }
        Err(last_err.expect("a broker list is never empty"))
    }
}

/// Says that a call moved from `from` to `to`, and counts it.
fn moved(from: &str, error: &ClientError, to: &str) {
    FAILOVERS.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(failed = %from, now = %to, %error, "broker {from} failed; failing over to {to}");
}

/// The request never reached a broker: the connection (TCP or TLS) could
/// not be made.
fn unsent(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Rejected(status) => {
            let mut next: Option<&(dyn std::error::Error + 'static)> = Some(status);
            while let Some(err) = next {
                if err.is::<tonic::ConnectError>() {
                    return true;
                }
                next = err.source();
            }
            false
        }
        _ => false,
    }
}

/// The failure is the broker's (gone, unreachable, overloaded, timed out),
/// not an answer about the request: another broker may do better.
fn broker_unusable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Rejected(status) => match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
            // A status made here from a transport failure (a connection
            // lost mid-call, tonic's own timeout) carries its cause; one
            // the broker sent does not.
            tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal => {
                std::error::Error::source(status).is_some()
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: tonic::Code) -> ClientError {
        ClientError::Rejected(tonic::Status::new(code, "x"))
    }

    #[test]
    fn only_unavailability_moves_a_call_never_an_answer() {
        assert!(broker_unusable(&rejected(tonic::Code::Unavailable)));
        assert!(broker_unusable(&rejected(tonic::Code::DeadlineExceeded)));
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::InvalidArgument,
            tonic::Code::NotFound,
            tonic::Code::ResourceExhausted,
            tonic::Code::Unauthenticated,
            tonic::Code::FailedPrecondition,
            // Sent by the broker (no local cause): an answer.
            tonic::Code::Unknown,
            tonic::Code::Internal,
        ] {
            assert!(!broker_unusable(&rejected(code)), "{code:?}");
        }
        let lost = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(broker_unusable(&ClientError::Rejected(lost)));
    }

    #[test]
    fn attestation_moves_on_only_when_nothing_was_sent() {
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(unsent(&ClientError::Rejected(refused)));
        assert!(!unsent(&rejected(tonic::Code::Unavailable)));
        let lost = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(!unsent(&ClientError::Rejected(lost)));
    }

    #[tokio::test]
    async fn the_broker_in_use_stays_first_and_a_failed_one_goes_last() {
        let health = Health::new(3);
        assert_eq!(health.order(), [0, 1, 2]);
        health.failed(0);
        assert_eq!(health.order(), [1, 2, 0]);
        health.succeeded(1);
        assert_eq!(health.order(), [1, 2, 0], "sticky to the one that works");
        health.failed(1);
        // Benched ones last (their order is by the jittered time each is back).
        assert_eq!(health.order()[0], 2);
        health.failed(2);
        assert_eq!(health.order().len(), 3, "all benched: all still tried");
        health.succeeded(0);
        assert_eq!(health.order()[0], 0);
    }
}
