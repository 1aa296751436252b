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
mod introspect;
mod join_token_api;
mod keys_api;
pub mod limits;
mod node_api;
pub mod operators;
mod operators_api;
mod outstanding;
pub mod peer;
pub mod rate;
mod revoke_api;
mod status;
pub mod workload;

pub use admin::AdminService;
pub use workload::WorkloadService;
