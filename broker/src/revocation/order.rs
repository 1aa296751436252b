//! Revocation decided by order, not by a clock's second.
//!
//! A revocation covers what was issued at or before its `revoked_at`. For
//! that to hold without a race, the broker must never issue a credential of
//! the target after `revoked_at` was chosen while the revocation is not yet
//! in force (the store may take seconds to commit it). So a revocation runs
//! in three steps:
//!
//! 1. [`Ordering::begin`] marks the target *pending*: from now on, issuance
//!    for anything it matches is refused (a short UNAVAILABLE, "retry");
//! 2. [`Ordering::fence`] waits for the issuances already signing to finish
//!    (they hold the read side of a lock for exactly their signing step) and
//!    only then reads the clock: everything issued before has
//!    `issued_at <= revoked_at`, nothing after can pass step 1's check;
//! 3. the revocation is stored and put in force; dropping the [`Pending`]
//!    guard lifts the mark (for an identity, only after it is disabled).

use std::sync::{Mutex, RwLock, RwLockReadGuard};

use super::Target;
use crate::model::IdentityKey;

/// The in-progress revocations and the issuance fence.
#[derive(Debug, Default)]
pub struct Ordering {
    /// Held (read) by every issuance from its final checks through signing.
    gate: RwLock<()>,
    pending: Mutex<Vec<(u64, Target, Vec<IdentityKey>)>>,
    /// How many are pending: issuance skips the mutex while none is, so
    /// the hot path pays one atomic load.
    pending_count: std::sync::atomic::AtomicUsize,
    next_id: std::sync::atomic::AtomicU64,
}

/// A pending revocation; the mark is lifted when this is dropped.
#[derive(Debug)]
pub struct Pending<'a> {
    order: &'a Ordering,
    id: u64,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.order.pending.lock() {
            pending.retain(|(id, ..)| *id != self.id);
            self.order
                .pending_count
                .store(pending.len(), std::sync::atomic::Ordering::Release);
        }
    }
}

/// Held by an issuance while it signs: a revocation cannot choose its
/// `revoked_at` meanwhile.
pub type IssuanceGuard<'a> = RwLockReadGuard<'a, ()>;

impl Ordering {
    /// Marks `target` (and, for a node, the identities it serves) pending.
    pub fn begin(&self, target: Target, also: Vec<IdentityKey>) -> Pending<'_> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut pending) = self.pending.lock() {
            pending.push((id, target, also));
            self.pending_count
                .store(pending.len(), std::sync::atomic::Ordering::Release);
        }
        Pending { order: self, id }
    }

    /// Waits for every issuance in its signing step, then returns the
    /// current unix time: the `revoked_at` of a revocation begun before.
    pub fn fence(&self) -> i64 {
        let _all_signed = self.gate.write();
        crate::model::unix_now()
    }

    /// Enter before the final checks of an issuance; hold until signed.
    pub fn issuing(&self) -> Option<IssuanceGuard<'_>> {
        self.gate.read().ok()
    }

    /// The pending revocation matching a credential of `identity` (owned
    /// by `owner`) or of certificate `serial`, if any.
    pub fn pending_for(
        &self,
        identity: &IdentityKey,
        owner: Option<&str>,
        serial: Option<&str>,
    ) -> Option<Target> {
        // `begin` stores the count before `fence` takes the gate, and the
        // caller holds the gate's read side, so a revocation that chose its
        // time is always seen here.
        if self
            .pending_count
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return None;
        }
        let pending = self.pending.lock().ok()?;
        pending
            .iter()
            .find(|(_, target, also)| {
                also.contains(identity)
                    || match target {
                        Target::Identity(key) => key == identity,
                        Target::Env(env) => *env == identity.env,
                        Target::Owner(o) => Some(o.as_str()) == owner,
                        Target::Serial(s) => Some(s.as_str()) == serial,
                        Target::Jti(_) | Target::SigningKey(_) => false,
                    }
            })
            .map(|(_, target, _)| target.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EnvName, IdentityName};

    fn key(name: &str) -> IdentityKey {
        IdentityKey {
            env: EnvName::new("dev").unwrap(),
            name: IdentityName::new(name).unwrap(),
        }
    }

    #[test]
    fn pending_marks_match_their_targets_until_dropped() {
        let order = Ordering::default();
        let node = order.begin(Target::Identity(key("host")), vec![key("app")]);
        let env = order.begin(Target::Env(EnvName::new("prod").unwrap()), vec![]);
        assert!(order.pending_for(&key("host"), None, None).is_some());
        assert!(
            order.pending_for(&key("app"), None, None).is_some(),
            "served by the node"
        );
        assert!(order.pending_for(&key("other"), None, None).is_none());
        drop(node);
        assert!(order.pending_for(&key("app"), None, None).is_none());
        drop(env);
        let owner = order.begin(Target::Owner("team".into()), vec![]);
        assert!(order.pending_for(&key("x"), Some("team"), None).is_some());
        assert!(order.pending_for(&key("x"), Some("other"), None).is_none());
        drop(owner);
    }

    #[test]
    fn the_fence_waits_for_signing_issuances() {
        let order = std::sync::Arc::new(Ordering::default());
        let guard = order.issuing().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let fencer = std::sync::Arc::clone(&order);
        let handle = std::thread::spawn(move || {
            let at = fencer.fence();
            tx.send(at).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "fence passed a signing issuance");
        drop(guard);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        handle.join().unwrap();
    }
}
