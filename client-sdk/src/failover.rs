//! Calls that fail over between broker replicas.
//!
//! A [`Pool`] holds one channel per target (each broker URL; each address
//! of a name with several, see [`crate::targets`]) and sends each call to
//! the one in use; while that one works every call goes there (sticky: no
//! flapping, one warm connection). A call that fails because the broker is
//! unreachable or unavailable moves on to the next, in list order,
//! skipping those that failed recently (each is benched for a jittered,
//! doubling while); if every one is benched they are tried anyway,
//! soonest back first, so a list never locks itself out. Refusals are the
//! broker's answer and are returned as they are.
//!
//! Whether a failed call may be sent again elsewhere is the caller's
//! choice ([`Retry`]): reads and issuance from a CSR or an SVID are safe to
//! repeat; attestation may spend a single-use join token, so it moves on
//! only when the request never left (the connection could not be made).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credbroker_proto::v1::workload_client::WorkloadClient as Grpc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::brokers::Brokers;
use crate::connector::BrokerTls;
use crate::error::ClientError;
use crate::targets::{Route, resolve};

/// First bench time of a failed target; doubles per consecutive failure.
const BENCH_MIN: Duration = Duration::from_secs(1);
/// Longest bench time.
const BENCH_MAX: Duration = Duration::from_secs(30);
/// Targets remembered at most (addresses come and go with DNS).
const MAX_REMEMBERED: usize = 256;

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

/// Which target is in use and which are benched, by label; shared by every
/// pool made for one broker list (the anonymous client and each SVID
/// session), so what one learns the others use.
#[derive(Debug, Default)]
pub(crate) struct Health {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    active: Option<String>,
    slots: HashMap<String, Slot>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    strikes: u32,
    benched_until: Option<Instant>,
}

impl Health {
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The label of the target in use, once one has worked.
    pub(crate) fn active(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.active.clone())
    }

    /// The order to try `labels`: the one in use, then the others in list
    /// order from there; benched ones last, soonest back first.
    pub(crate) fn order(&self, labels: &[&str]) -> Vec<usize> {
        let Ok(state) = self.state.lock() else {
            return (0..labels.len()).collect();
        };
        let n = labels.len();
        let start = state
            .active
            .as_deref()
            .and_then(|a| labels.iter().position(|l| *l == a))
            .unwrap_or(0);
        let now = Instant::now();
        let back_at = |i: &usize| {
            state
                .slots
                .get(labels[*i])
                .and_then(|s| s.benched_until)
                .filter(|t| *t > now)
        };
        let rotation: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        let mut order: Vec<usize> = rotation
            .iter()
            .copied()
            .filter(|i| back_at(i).is_none())
            .collect();
        let mut later: Vec<usize> = rotation
            .into_iter()
            .filter(|i| back_at(i).is_some())
            .collect();
        later.sort_by_key(back_at);
        order.extend(later);
        order
    }

    fn failed(&self, label: &str) {
        if let Ok(mut state) = self.state.lock() {
            if state.slots.len() >= MAX_REMEMBERED && !state.slots.contains_key(label) {
                state.slots.clear();
            }
            let slot = state.slots.entry(label.to_owned()).or_default();
            slot.strikes = slot.strikes.saturating_add(1);
            let bench = BENCH_MIN
                .saturating_mul(1u32 << (slot.strikes - 1).min(5))
                .min(BENCH_MAX);
            slot.benched_until = Some(Instant::now() + crate::source::timing::jitter(bench, 0.2));
        }
    }

    fn succeeded(&self, label: &str) {
        if let Ok(mut state) = self.state.lock() {
            state.slots.remove(label);
            state.active = Some(label.to_owned());
        }
    }
}

/// One target's channel.
#[derive(Debug, Clone)]
struct Member {
    label: String,
    grpc: Grpc<Channel>,
}

/// Channels to every target of a broker list, all with the same TLS
/// settings.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    members: Arc<[Member]>,
    health: Arc<Health>,
}

impl Pool {
    /// Channels to every target, connecting now to the first that answers
    /// (in the order `health` prefers) so that an unusable list fails here,
    /// naming why; the others connect when first needed.
    pub(crate) async fn open(
        brokers: &Brokers,
        tls: &BrokerTls,
        health: Arc<Health>,
    ) -> Result<Self, ClientError> {
        let targets = resolve(brokers).await;
        let routes = targets
            .iter()
            .map(|target| Route::new(brokers, target, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
        let (up, channel) = connect_first(brokers, &routes, &labels, &health).await?;
        let members = routes
            .iter()
            .zip(&targets)
            .enumerate()
            .map(|(i, (route, target))| Member {
                label: target.label.clone(),
                grpc: Grpc::new(if i == up {
                    channel.clone()
                } else {
                    route.connect_lazy()
                }),
            })
            .collect();
        Ok(Self { members, health })
    }

    fn labels(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.label.as_str()).collect()
    }

    /// The generated client of the target in use.
    pub(crate) fn grpc(&self) -> Grpc<Channel> {
        if self.members.len() == 1 {
            return self.members[0].grpc.clone();
        }
        let i = self.health.order(&self.labels())[0];
        self.members[i].grpc.clone()
    }

    /// Runs `call` on the target in use, moving on to the next on a
    /// failure that `retry` allows; returns the first answer, or the last
    /// failure once every target was tried.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        if self.members.len() == 1 {
            // Nowhere to move: no bookkeeping on the common path.
            return call(self.members[0].grpc.clone()).await;
        }
        let order = self.health.order(&self.labels());
        let mut last_err = None;
        for (n, &i) in order.iter().enumerate() {
            let member = &self.members[i];
            match call(member.grpc.clone()).await {
                Ok(answer) => {
                    self.health.succeeded(&member.label);
                    return Ok(answer);
                }
                Err(e) if broker_unusable(&e) => {
                    self.health.failed(&member.label);
                    let next = order.get(n + 1).map(|&j| &self.members[j]);
                    let Some(next) = next.filter(|_| retry == Retry::Idempotent || unsent(&e))
                    else {
                        return Err(e);
                    };
                    moved(&member.label, &e, &next.label);
                    last_err = Some(e);
                }
                Err(e) => {
                    // An answer: this broker works.
                    self.health.succeeded(&member.label);
                    return Err(e);
                }
            }
        }
        Err(last_err.expect("a broker list is never empty"))
    }
}

/// Connects now to the first of `routes` that answers, in the order
/// `health` prefers, benching those that do not; returns its index.
async fn connect_first(
    brokers: &Brokers,
    routes: &[Route],
    labels: &[&str],
    health: &Health,
) -> Result<(usize, Channel), ClientError> {
    let order = health.order(labels);
    let mut last_err = None;
    for (n, &i) in order.iter().enumerate() {
        match routes[i]
            .connect_now(labels[i], brokers.get_connect_timeout())
            .await
        {
            Ok(channel) => {
                health.succeeded(labels[i]);
                return Ok((i, channel));
            }
            Err(e) => {
                health.failed(labels[i]);
                if let Some(&next) = order.get(n + 1) {
                    moved(labels[i], &e, labels[next]);
                }
                last_err = Some(e);
            }
        }
    }
    Err(last_err.expect("a broker list is never empty"))
}

/// A channel to the first target of `brokers` that accepts a connection
/// with `tls` (see [`Brokers::connect_first`]).
pub(crate) async fn first_channel(
    brokers: &Brokers,
    tls: &BrokerTls,
) -> Result<Channel, ClientError> {
    let targets = resolve(brokers).await;
    let routes = targets
        .iter()
        .map(|target| Route::new(brokers, target, tls))
        .collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
    let (_, channel) = connect_first(brokers, &routes, &labels, &Health::default()).await?;
    Ok(channel)
}

/// Says that a call moved from `from` to `to`, and counts it.
fn moved(from: &str, error: &ClientError, to: &str) {
    FAILOVERS.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(failed = %from, now = %to, %error, "broker {from} failed; failing over to {to}");
}

/// The broker failed after the request may have reached it: its outcome
/// is unknown.
pub(crate) fn maybe_delivered(e: &ClientError) -> bool {
    broker_unusable(e) && !unsent(e)
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
        let lost = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
        assert!(maybe_delivered(&ClientError::Rejected(lost)));
        assert!(!maybe_delivered(&rejected(tonic::Code::PermissionDenied)));
    }

    #[tokio::test]
    async fn the_broker_in_use_stays_first_and_a_failed_one_goes_last() {
        let health = Health::new();
        let labels = ["a", "b", "c"];
        assert_eq!(health.order(&labels), [0, 1, 2]);
        health.failed("a");
        assert_eq!(health.order(&labels), [1, 2, 0]);
        health.succeeded("b");
        assert_eq!(
            health.order(&labels),
            [1, 2, 0],
            "sticky to the one that works"
        );
        health.failed("b");
        // Benched ones last (their order is by the jittered time each is back).
        assert_eq!(health.order(&labels)[0], 2);
        health.failed("c");
        assert_eq!(
            health.order(&labels).len(),
            3,
            "all benched: all still tried"
        );
        health.succeeded("a");
        assert_eq!(health.order(&labels)[0], 0);
        assert_eq!(health.active().as_deref(), Some("a"));
        // A pool of other targets (DNS changed) starts at its first.
        assert_eq!(health.order(&["x", "y"]), [0, 1]);
    }
}
