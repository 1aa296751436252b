//! The agent's Prometheus metrics, served as `GET /metrics` on
//! `--health-addr`: seconds until the SVID expires, rotations, failures,
//! broker failovers, and Workload API calls by method and result.
//!
//! One agent runs per process, so the counters are process-wide atomics:
//! the credential source counts its rotations and failures, a tower layer
//! on the Workload API server counts calls; nothing takes a lock.

use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use crate::source::SourceState;

/// SPIFFE Workload API methods (the `method` label); anything else is
/// `other`.
const METHODS: [&str; 6] = [
    "FetchX509SVID",
    "FetchX509Bundles",
    "FetchJWTSVID",
    "FetchJWTBundles",
    "ValidateJWTSVID",
    "other",
];

/// gRPC status codes by number (the `result` label).
const CODES: [&str; 17] = credbroker_proto::GRPC_CODE_NAMES;

struct AgentMetrics {
    rotations: AtomicU64,
    failures: AtomicU64,
    calls: [[AtomicU64; CODES.len()]; METHODS.len()],
}

static METRICS: AgentMetrics = AgentMetrics {
    rotations: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    calls: [const { [const { AtomicU64::new(0) }; CODES.len()] }; METHODS.len()],
};

/// The credential source renewed its X.509-SVID.
pub(crate) fn rotated() {
    METRICS.rotations.fetch_add(1, Ordering::Relaxed);
}

/// A connection, attestation or renewal attempt failed.
pub(crate) fn failed() {
    METRICS.failures.fetch_add(1, Ordering::Relaxed);
}

fn method_slot(path: &str) -> usize {
    let method = path.rsplit('/').next().unwrap_or_default();
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// The exposition, with the SVID expiry read from `state`.
pub(crate) fn render(state: &SourceState) -> String {
    let mut out = String::with_capacity(4096);
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut out,
        "credbroker_agent_svid_expiry_seconds",
        "gauge",
        "Seconds until the agent's X.509-SVID expires (absent without one).",
    );
    if let SourceState::Ready(creds) = state {
        let left = match creds.svid.expires_at.duration_since(SystemTime::now()) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let _ = writeln!(out, "credbroker_agent_svid_expiry_seconds {left:.3}");
    }
    family(
        &mut out,
        "credbroker_agent_rotations_total",
        "counter",
        "X.509-SVID renewals that replaced the certificate.",
    );
    let _ = writeln!(
        out,
        "credbroker_agent_rotations_total {}",
        METRICS.rotations.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "credbroker_agent_failures_total",
        "counter",
        "Failed attempts to reach the broker, attest or renew.",
    );
    let _ = writeln!(
        out,
        "credbroker_agent_failures_total {}",
        METRICS.failures.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "credbroker_agent_broker_failovers_total",
        "counter",
        "Calls moved to another broker because the one in use was unreachable or unavailable.",
    );
    let _ = writeln!(
        out,
        "credbroker_agent_broker_failovers_total {}",
        crate::failover::failovers()
    );
    family(
        &mut out,
        "credbroker_agent_workload_api_calls_total",
        "counter",
        "SPIFFE Workload API calls by method and result (gRPC code; streams: when opened).",
    );
    for (method, codes) in METHODS.iter().zip(&METRICS.calls) {
        for (code, n) in CODES.iter().zip(codes) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 || *code == "OK" {
                let _ = writeln!(
                    out,
                    "credbroker_agent_workload_api_calls_total{{method=\"{method}\",result=\"{code}\"}} {n}"
                );
            }
        }
    }
    out
}

/// Counts the calls of the Workload API server it wraps.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallsLayer;

impl<S> tower_layer::Layer<S> for CallsLayer {
    type Service = Calls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Calls(inner)
    }
}

/// A Workload API service whose calls are counted.
#[derive(Debug, Clone)]
pub struct Calls<S>(S);

impl<S, B, RB> tower_service::Service<http::Request<B>> for Calls<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_slot(request.uri().path());
        Counted {
            inner: self.0.call(request),
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of one counted call.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        method: usize,
    }
}

impl<F, RB, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let code = credbroker_proto::grpc_code_of(&result);
        METRICS.calls[*this.method][code.min(CODES.len() - 1)].fetch_add(1, Ordering::Relaxed);
        Poll::Ready(result)
    }
}
