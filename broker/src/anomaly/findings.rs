//! Recent findings per identity, for the inventory's flag: a short ring
//! per registered identity, so memory is bounded by the registry.

use std::collections::VecDeque;

use dashmap::DashMap;

use super::Finding;
use crate::model::IdentityKey;

/// Findings kept per identity (older ones stay in the audit log).
pub const KEPT_PER_IDENTITY: usize = 16;

/// The newest findings of each identity.
#[derive(Debug, Default)]
pub struct RecentFindings {
    by_identity: DashMap<IdentityKey, VecDeque<Finding>>,
}

impl RecentFindings {
    /// Remembers `finding` for `key`.
    pub fn push(&self, key: &IdentityKey, finding: Finding) {
        let mut ring = self.by_identity.entry(key.clone()).or_default();
        if ring.len() == KEPT_PER_IDENTITY {
            ring.pop_front();
        }
        ring.push_back(finding);
    }

    /// The findings of `key`, newest first.
    pub fn of(&self, key: &IdentityKey) -> Vec<Finding> {
        self.by_identity
            .get(key)
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}
