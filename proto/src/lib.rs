//! Generated gRPC types and services of credbroker (`credbroker.v1`).
//!
//! This crate holds nothing but the `.proto` files and the code tonic and
//! prost generate from them, so the broker, the SDK and third-party clients
//! share one definition.

pub mod codec;

/// The gRPC status code (as a number) a server answered with: the
/// `grpc-status` header of a response (0 when absent: trailers carry it
/// for streams that opened fine), UNKNOWN (2) when the service failed.
pub fn grpc_code_of<B, E>(result: &Result<tonic::codegen::http::Response<B>, E>) -> usize {
    match result {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0),
        Err(_) => 2,
    }
}

/// gRPC status code names by number (`tonic::Code as usize`), as metrics
/// label them.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// `credbroker.v1`: the Workload and Admin services.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("credbroker.v1");
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package), served
/// by `credbroker-agent` so existing SPIFFE clients work unchanged.
pub mod spiffe {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}
