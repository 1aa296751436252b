//! SDK errors.

use thiserror::Error;

/// Why an SDK call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The broker URL is not a valid URI.
    #[error("invalid broker URL {url:?}: {why}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What was wrong.
        why: String,
    },
    /// The trust bundle holds no usable certificate.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// TLS or connection failure.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// Broker URL.
        url: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The broker refused or failed the call.
    #[error("broker refused: {code:?}: {message}", code = .0.code(), message = .0.message())]
    Rejected(#[from] tonic::Status),
    /// The broker's answer is unusable.
    #[error("invalid response from broker: {0}")]
    InvalidResponse(String),
    /// Platform evidence could not be read (token file, runner, metadata
    /// service).
    #[error("attestation evidence: {0}")]
    Evidence(String),
    /// Key generation or CSR creation failed.
    #[error("key generation failed: {0}")]
    Key(#[from] rcgen::Error),
}

impl ClientError {
    /// The gRPC code when the broker answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rejected(status) => Some(status.code()),
            _ => None,
        }
    }
}
