//! When each identity was last issued a credential and last seen, counted
//! in memory on every call and written to the store now and then.
//!
//! Each identity's times reach the store at most once per [`WRITE_EVERY`]:
//! a million workloads renewing every few minutes would otherwise rewrite a
//! random page of the identity table thousands of times a second, holding
//! SQLite's one write lock that audit commits wait for. The times operators
//! see come from memory and are exact; the store's (what another replica or
//! a restarted broker reads) trail by at most [`WRITE_EVERY`], and a
//! graceful shutdown writes every one (`IdentityRegistry::flush_all_usage`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::model::{Identity, IdentityKey};
use crate::store::UsageUpdate;

/// Seconds between two writes of one identity's times.
pub(super) const WRITE_EVERY: i64 = 600;

/// Most identities written by one flush: bounds how long it holds the
/// store's write lock; the rest wait for the next flush.
pub(super) const MAX_PER_FLUSH: usize = 2048;

/// One identity's usage times.
#[derive(Debug, Default)]
pub(super) struct Usage {
    last_issued_at: AtomicI64,
    last_seen_at: AtomicI64,
    /// When the store last got them (or they were loaded).
    written_at: AtomicI64,
    /// They changed since.
    dirty: AtomicBool,
    /// The identity is in the flush queue.
    queued: AtomicBool,
}

impl Usage {
    /// The times `id` was stored with, as of `now`.
    pub(super) fn from_identity(id: &Identity, now: i64) -> Self {
        Self {
            last_issued_at: AtomicI64::new(id.last_issued_at.unwrap_or(0)),
            last_seen_at: AtomicI64::new(id.last_seen_at.unwrap_or(0)),
            written_at: AtomicI64::new(now),
            dirty: AtomicBool::new(false),
            queued: AtomicBool::new(false),
        }
    }

    /// Last issuance and last use (0: never).
    pub(super) fn times(&self) -> (i64, i64) {
        (
            self.last_issued_at.load(Ordering::Relaxed),
            self.last_seen_at.load(Ordering::Relaxed),
        )
    }

    /// Notes an issuance at `now`; returns the previous one (0: never).
    pub(super) fn issued(&self, now: i64) -> i64 {
        self.last_seen_at.fetch_max(now, Ordering::Relaxed);
        self.last_issued_at.fetch_max(now, Ordering::Relaxed)
    }

    /// Notes an authenticated use at `now`.
    pub(super) fn seen(&self, now: i64) {
        self.last_seen_at.fetch_max(now, Ordering::Relaxed);
    }

    /// Marks the times changed; true when the identity is due to be written
    /// and must be queued (it was not queued, and its last write is
    /// [`WRITE_EVERY`] old).
    pub(super) fn changed(&self, now: i64) -> bool {
        self.dirty.store(true, Ordering::Release);
        self.due(now)
    }

    /// Whether a changed identity is due now; claims its queue slot if so.
    pub(super) fn due(&self, now: i64) -> bool {
        self.dirty.load(Ordering::Acquire)
            && now - self.written_at.load(Ordering::Relaxed) >= WRITE_EVERY
            && !self.queued.swap(true, Ordering::AcqRel)
    }

    /// What to write for `key` now, if anything changed; leaves the queue.
    /// Cleared before the times are read: a use after the read marks it
    /// again.
    pub(super) fn take(&self, key: &IdentityKey, now: i64) -> Option<UsageUpdate> {
        self.queued.store(false, Ordering::Release);
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.written_at.store(now, Ordering::Relaxed);
        let nonzero = |v: i64| (v != 0).then_some(v);
        let (issued, seen) = self.times();
        Some(UsageUpdate {
            identity: key.clone(),
            last_issued_at: nonzero(issued),
            last_seen_at: nonzero(seen),
        })
    }

    /// A write of `take` failed: changed again, and due at once.
    pub(super) fn retry(&self) {
        self.written_at.store(i64::MIN / 2, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Release);
    }
}

/// Identities due to be written, each once.
#[derive(Debug, Default)]
pub(super) struct UsageQueue(Mutex<Vec<IdentityKey>>);

impl UsageQueue {
    /// Queues `key` (whose [`Usage::changed`] or [`Usage::due`] said so).
    pub(super) fn push(&self, key: &IdentityKey) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.clone());
    }

    /// Up to [`MAX_PER_FLUSH`] queued identities, oldest first.
    pub(super) fn take_batch(&self) -> Vec<IdentityKey> {
        let mut queue = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = queue.len().min(MAX_PER_FLUSH);
        queue.drain(..n).collect()
    }
}
