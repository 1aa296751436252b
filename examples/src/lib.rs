//! The logic of the examples a newcomer copies, one module each, so the
//! examples' thin `main`s and the tests run exactly the same code:
//!
//! * [`mtls_pair`] — two services talking mTLS with X.509-SVIDs that
//!   rotate while requests keep flowing (`--example mtls_pair`);
//! * [`jwt_call`] — a call authenticated with a JWT-SVID that the service
//!   verifies with the SDK's [`credbroker_client::JwtVerifier`]
//!   (`--example jwt_call`);
//! * [`agent_files`] — a plain program reading what `credbroker-agent`
//!   writes (`--example read_agent_files`).
//!
//! [`load`] drives a running broker with issuing calls for the external load
//! generator (`--example issue_bench`).
//!
//! [`scale`] plays a fleet of node agents for the scale benchmark
//! (`--example scale_bench`); [`report`] holds the tables' arithmetic.
//!
//! [`soak`] is the soak and abuse suite (`--example soak`): bounded jobs
//! against the real broker binary that fail when a bound is broken.
//!
//! [`broker`] holds what the first two need to reach a running broker as an
//! operator: its URL, its TLS CA and the admin client certificate.

#![warn(missing_docs)]

pub mod agent_files;
pub mod broker;
pub mod jwt_call;
pub mod load;
pub mod mtls_pair;
pub mod procfs;
pub mod report;
pub mod scale;
pub mod soak;

use anyhow::{Context, Result};

/// An example's exit code for what its `run` returned: success, or failure
/// with the error and its causes on stderr after the example's `name`.
pub fn exit_code(name: &str, result: Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A benchmark's exit code: success when it ran and no call failed
/// (`Ok(true)`), failure when a call failed or it could not run.
pub fn bench_exit_code(name: &str, result: Result<bool>) -> std::process::ExitCode {
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{name}: some calls failed");
            std::process::ExitCode::FAILURE
        }
        Err(e) => exit_code(name, Err(e)),
    }
}

/// The serial of a DER certificate as upper-case hex, the form the broker
/// reports and `credbroker revoke --serial` takes.
pub fn serial_of(cert_der: &[u8]) -> Result<String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).context("parsing a certificate")?;
    Ok(format!("{:X}", cert.tbs_certificate.serial))
}
