//! Authorization: which identities exist (cached in memory), whether one may
//! receive credentials now, and what a request may be granted.

mod cidr;
mod context;
mod grant;
mod new_identity;
pub mod node;
pub mod rate_limit;
mod registry;
mod registry_index;
#[cfg(test)]
mod registry_tests;
pub mod roles;
pub mod selectors;
mod usage;

pub use cidr::{Cidr, CidrError};
pub use context::check_peer;
pub use grant::{JwtGrant, PolicyError, TtlLimits, check_active, grant_jwt};
pub use new_identity::{IdentityRequest, check_selector_prefixes, validate_new_identity};
pub use registry::{IdentityRegistry, IdentityView, UpdateError};
