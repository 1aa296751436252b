//! The broker's domain model: validated names and identities.

mod duration;
mod identity;
mod name_set;
mod names;

pub use duration::{
    DURATION_FORMS, deserialize_duration, format_duration, parse_duration, rfc3339,
};
pub use identity::{Identity, IdentityKey, IdentityStatus, OnAnomaly, Selector};
#[cfg(test)]
pub(crate) use identity::{test_identity, test_selector};
pub use name_set::NameSet;
pub use names::{Audience, EnvName, IdentityName, NameError, Scope, SpiffeId, TrustDomain};

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Now as unix milliseconds.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
