//! The broker's domain model: validated names and identities.

mod identity;
mod names;

#[cfg(test)]
pub(crate) use identity::test_identity;
pub use identity::{Identity, IdentityKey, IdentityStatus, Selector};
pub use names::{Audience, EnvName, IdentityName, NameError, Scope, SpiffeId, TrustDomain};

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
