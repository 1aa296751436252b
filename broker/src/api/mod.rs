//! The broker's network faces: the gRPC `Workload` and `Admin` services and
//! the HTTP endpoints.

pub mod admin;
mod admin_auth;
mod audit_api;
pub mod bounded;
pub mod grpc_idle;
pub mod grpc_tls;
pub mod http;
pub mod http_serve;
pub mod identity_change;
mod introspect;
mod join_token_api;
pub(crate) mod keys_api;
pub mod limits;
mod node_api;
pub mod operators;
mod operators_api;
pub(crate) mod outstanding;
pub mod peer;
pub mod rate;
pub(crate) mod revoke_api;
pub(crate) mod status;
pub mod workload;

pub use admin::AdminService;
pub use workload::WorkloadService;
