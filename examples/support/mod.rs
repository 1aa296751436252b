//! Harness code shared by the load generators `loadgen` and
//! `revocation_bench`: a real broker started in this process, the Admin API
//! calls an operator would make to register workloads, and the small helpers
//! behind argument checks and the printed tables.
//!
//! Each example includes this module with
//! `#[path = "support/mod.rs"] mod support;`, so it is compiled into both
//! and everything here is used by both.

mod admin;
mod broker;
mod report;

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{Result, ensure};

pub use admin::{NewIdentity, admin_client, create_identity, join_token};
pub use broker::{Endpoint, InProcessBroker, runtime};
pub use report::{cpus, millis, percentile};

/// Environment the benchmark identities live in (served by default).
pub const ENV: &str = "dev";

/// Longest a single call may take before it counts as an error.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks a command-line value: fails with "`flag` must be between `a` and
/// `b`" unless `value` lies in `range` (`a..=b`).
pub fn check_range<T: PartialOrd + Display>(
    flag: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<()> {
    ensure!(
        range.contains(&value),
        "{flag} must be between {} and {}",
        range.start(),
        range.end()
    );
    Ok(())
}
