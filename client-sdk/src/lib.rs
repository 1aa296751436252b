//! credbroker client SDK.
//!
//! A workload links this crate to obtain short-lived credentials from a
//! credbroker broker: it generates its key pair locally (the private key
//! never leaves the process), attests once with evidence such as a join
//! token, then fetches JWTs and renews its X.509-SVID over mTLS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), credbroker_client::ClientError> {
//! use credbroker_client::{Client, Evidence, JwtRequest};
//! let bundle = std::fs::read("credbroker-data/broker-ca.pem").unwrap();
//! let client = Client::connect("https://127.0.0.1:7443", &bundle).await?;
//! let attested = client
//!     .attest(&Evidence::JoinToken("cbjt_…".into()), &[JwtRequest::audience("billing")])
//!     .await?;
//! let jwt = client
//!     .authenticated(&attested.svid)
//!     .await?
//!     .fetch_jwt(&JwtRequest::audience("billing").scope("charge"))
//!     .await?;
//! # let _ = jwt; Ok(()) }
//! ```
//!
//! The `credbroker-agent` binary ([`agent`]) does the same for programs that
//! read credentials from files.

#![warn(missing_docs)]

pub mod agent;
mod brokers;
mod client;
mod connector;
pub mod diagnose;
mod error;
mod evidence;
mod failover;
pub mod http;
pub mod interceptor;
pub mod logging;
pub mod node;
mod request;
pub mod revocations;
pub mod source;
mod svid;
mod targets;
pub mod tls;
pub mod uds;
pub mod verifier;
pub mod workload_api;

pub use brokers::{Brokers, DEFAULT_CONNECT_TIMEOUT, DEFAULT_RPC_TIMEOUT, MAX_BROKERS};
pub use client::{Attestation, Client, IdleClient, WorkloadClient};
pub use connector::BrokerTls;
pub use credbroker_proto::v1::{IntrospectResponse, Revocation};
pub use error::ClientError;
pub use evidence::{DEFAULT_IMDS_URL, Evidence};
pub use interceptor::BearerInterceptor;
pub use request::JwtRequest;
pub use revocations::RevocationWatcher;
pub use source::{
    CredentialSource, Credentials, RefreshPolicy, SourceConfig, SourceError, SourceState,
};
pub use svid::{JwtSvid, TrustBundle, X509Svid, authority_key_id, pem_encode, uri_sans};
pub use verifier::{JwtVerifier, VerifiedJwt, VerifyError};
