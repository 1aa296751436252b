//! Several brokers on one store acting as one.
//!
//! Each broker caches identities, revocations, keys and operators in
//! memory. [`follow`] keeps those caches in step with what other brokers
//! commit (the store's change feed, woken by notifications, read by
//! sequence number so nothing is lost when a notification is), and
//! [`campaign`] elects the one broker that runs periodic work (key
//! rotation, purges). On the embedded SQLite store there is one broker:
//! nothing to follow, and it always leads.

mod follow;
mod leader;

pub use follow::{FOLLOW_POLL, follow};
pub use leader::{LEADER_CHECK, Leadership, campaign};
