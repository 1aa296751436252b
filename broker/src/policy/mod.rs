//! Authorization: which identities exist (cached in memory), whether one may
//! receive credentials now, and what a request may be granted.

mod grant;
mod new_identity;
pub mod node;
mod registry;

pub use grant::{JwtGrant, PolicyError, TtlLimits, check_active, grant_jwt};
pub use new_identity::{IdentityRequest, validate_new_identity};
pub use registry::{IdentityRegistry, IdentityView, UpdateError};
