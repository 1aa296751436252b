//! RPC latency by method and gRPC code: a tower layer on the gRPC server.
//!
//! The method is looked up in a fixed table of this broker's RPCs (anything
//! else is `other`), the code read from the response's `grpc-status`
//! header (errors are trailers-only responses; a response without it
//! started successfully, `OK`). Latency runs until the response headers:
//! for unary calls the whole handler, for streams until the stream opens.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Request, Response};

use super::Metrics;

/// Every RPC the broker serves, as `Service/Method` (the `method` label).
pub const METHODS: [&str; 28] = [
    "Admin/CreateIdentity",
    "Admin/GetIdentity",
    "Admin/ListIdentities",
    "Admin/DisableIdentity",
    "Admin/EnableIdentity",
    "Admin/RetireIdentity",
    "Admin/CreateJoinToken",
    "Admin/Revoke",
    "Admin/ListRevocations",
    "Admin/QueryAudit",
    "Admin/VerifyAudit",
    "Admin/VerifyAuditExport",
    "Admin/ListKeys",
    "Admin/RotateKeys",
    "Admin/RetireKey",
    "Admin/CreateOperator",
    "Admin/ListOperators",
    "Admin/RevokeOperator",
    "Admin/CreateUiLogin",
    "Workload/Attest",
    "Workload/FetchJwt",
    "Workload/RenewX509",
    "Workload/GetJwks",
    "Workload/Introspect",
    "Workload/WatchRevocations",
    "Workload/WatchNodeEntries",
    "Workload/MintWorkloadSvid",
    "Workload/MintWorkloadJwt",
];

/// The `method` label of calls to anything not in [`METHODS`].
pub const OTHER_METHOD: &str = "other";

/// gRPC status codes by number (the `code` label).
pub const CODES: [&str; 17] = credbroker_proto::GRPC_CODE_NAMES;

/// The slot of a gRPC path (`/credbroker.v1.Workload/FetchJwt`).
fn method_slot(path: &str) -> usize {
    path.strip_prefix("/credbroker.v1.")
        .and_then(|m| METHODS.iter().position(|known| *known == m))
        .unwrap_or(METHODS.len())
}

/// The `method` label of a slot.
pub(crate) fn method_label(slot: usize) -> &'static str {
    METHODS.get(slot).copied().unwrap_or(OTHER_METHOD)
}

/// Wraps the gRPC services to time every call.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

/// A service timed by [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower_service::Service<Request<B>> for RpcMetrics<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let method = method_slot(request.uri().path());
        Timed {
            inner: self.inner.call(request),
            method,
            start: Instant::now(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of one timed call.
    pub struct Timed<F> {
        #[pin]
        inner: F,
        method: usize,
        start: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F, RB, E> Future for Timed<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let code = credbroker_proto::grpc_code_of(&result);
        this.metrics
            .rpc_done(*this.method, code, this.start.elapsed());
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table follows the protos: a new RPC must get its label here.
    #[test]
    fn every_rpc_in_the_protos_has_a_label() {
        for (service, proto) in [
            (
                "Admin",
                include_str!("../../../proto/credbroker/v1/admin.proto"),
            ),
            (
                "Workload",
                include_str!("../../../proto/credbroker/v1/workload.proto"),
            ),
        ] {
            for line in proto.lines() {
                let Some(rest) = line.trim().strip_prefix("rpc ") else {
                    continue;
                };
                let name = rest
                    .split(|c: char| c == '(' || c.is_whitespace())
                    .next()
                    .unwrap();
                let label = format!("{service}/{name}");
                assert!(
                    METHODS.contains(&label.as_str()),
                    "{label} is missing from metrics::rpc::METHODS"
                );
            }
        }
        let fetch = method_slot("/credbroker.v1.Workload/FetchJwt");
        assert_eq!(method_label(fetch), "Workload/FetchJwt");
        assert_eq!(method_label(method_slot("/x.Y/Z")), OTHER_METHOD);
    }
}
