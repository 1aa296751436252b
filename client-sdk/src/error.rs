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
    /// The client certificate or its private key cannot be used for TLS.
    #[error("client certificate: {0}")]
    ClientCertificate(String),
    /// TLS or connection failure (the message names the cause; see
    /// [`crate::diagnose`]).
    #[error("{}", crate::diagnose::explain_connect_error(.url, .source))]
    Connect {
        /// Broker URL.
        url: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The broker refused or failed the call.
    #[error("{}", rejected(.0))]
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

/// A refusal, or — when the status only wraps a transport failure of a
/// lazily made connection — the connection failure explained.
fn rejected(status: &tonic::Status) -> String {
    let transport = std::error::Error::source(status).is_some()
        && matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Unavailable
        );
    // An http:// URL: the TLS listener answers the cleartext HTTP/2 preface
    // with a protocol error, which tonic reports as INTERNAL.
    let cleartext =
        status.code() == tonic::Code::Internal && status.message().starts_with("h2 protocol error");
    if transport || cleartext {
        crate::diagnose::explain_connect_error("the broker", status)
    } else {
        format!("broker refused: {:?}: {}", status.code(), status.message())
    }
}

/// Metadata key of the broker's retry hint on RESOURCE_EXHAUSTED.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl ClientError {
    /// How long the broker asked the caller to wait before retrying (a
    /// rate limit's RESOURCE_EXHAUSTED carries `retry-after-ms`), capped at
    /// a minute so a bad hint cannot park a client.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let Self::Rejected(status) = self else {
            return None;
        };
        let ms: u64 = status
            .metadata()
            .get(RETRY_AFTER_MS)?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        Some(std::time::Duration::from_millis(ms.min(60_000)))
    }

    /// The gRPC code when the broker answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Rejected(status) => Some(status.code()),
            _ => None,
        }
    }
}
