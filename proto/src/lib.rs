//! Generated gRPC types and services of credbroker (`credbroker.v1`).
//!
//! This crate holds nothing but the `.proto` files and the code tonic and
//! prost generate from them, so the broker, the SDK and third-party clients
//! share one definition.

pub mod codec;

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
