//! Mapping of domain errors to gRPC status codes. Messages say what was
//! wrong; internal failures are logged in full and answered generically.

use tonic::{Code, Status};

use crate::attest::AttestError;
use crate::audit::AuditError;
use crate::issue::CsrError;
use crate::keys::KeyError;
use crate::policy::{PolicyError, UpdateError};
use crate::store::StoreError;

pub(crate) fn policy(e: PolicyError) -> Status {
    match e {
        PolicyError::Invalid(msg) => Status::invalid_argument(msg),
        e @ (PolicyError::Denied(_) | PolicyError::Inactive { .. }) => {
            Status::permission_denied(e.to_string())
        }
    }
}

pub(crate) fn attest(e: AttestError) -> Status {
    match e {
        AttestError::Invalid(msg) => Status::invalid_argument(msg),
        e @ (AttestError::Unknown { .. }
        | AttestError::Expired { .. }
        | AttestError::Spent { .. }
        | AttestError::Rejected { .. }) => Status::unauthenticated(e.to_string()),
        AttestError::Unavailable(msg) => Status::unavailable(msg),
        AttestError::Store(e) => store(e),
    }
}

pub(crate) fn audit(e: AuditError) -> Status {
    tracing::error!(error = %e, "audit log unavailable");
    Status::unavailable(format!(
        "{e}: nothing was issued or changed that is not recorded; retry later"
    ))
}

pub(crate) fn csr(e: CsrError) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(crate) fn store(e: StoreError) -> Status {
    match e {
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
        e => {
            tracing::error!(error = %e, "store failure");
            Status::unavailable("the broker's store is unavailable; retry later")
        }
    }
}

pub(crate) fn update(e: UpdateError) -> Status {
    match e {
        UpdateError::Policy(e) => match e {
            PolicyError::Invalid(msg) => Status::failed_precondition(msg),
            other => policy(other),
        },
        UpdateError::Store(e) => store(e),
    }
}

pub(crate) fn key(e: KeyError) -> Status {
    if let KeyError::NoUsableKey(why) = &e {
        // Between keys (a retirement a moment ago, a broker that was down
        // past a key's life): the schedule creates one; retry.
        tracing::error!(error = %e, "no usable signing key");
        return Status::unavailable(format!("{why}; retry shortly"));
    }
    tracing::error!(error = %e, "signing failure");
    Status::internal("the broker could not sign the credential")
}

/// A short reason for the audit record.
pub(crate) fn reason(status: &Status) -> String {
    let code = match status.code() {
        Code::InvalidArgument => "invalid_argument",
        Code::Unauthenticated => "unauthenticated",
        Code::PermissionDenied => "permission_denied",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::FailedPrecondition => "failed_precondition",
        Code::Unavailable => "unavailable",
        _ => "error",
    };
    format!("{code}: {}", status.message())
}
