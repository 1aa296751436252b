//! Locks brokers sharing a store take in it: the first-start lock and the
//! leader lock (see [`super::Store::bootstrap_lock`],
//! [`super::Store::try_lead`]).

use async_trait::async_trait;

/// A lock a backend holds for a broker, released when dropped.
#[async_trait]
pub trait HeldLock: Send + Sync + std::fmt::Debug {
    /// Whether the lock is still held: false once the connection that
    /// holds it is gone (the database released it, and another broker may
    /// hold it now).
    async fn still_held(&mut self) -> bool;
}

/// A lock in the store, held until dropped.
#[derive(Debug)]
pub struct StoreLock {
    /// `None` for a store that serves one broker: nobody to exclude.
    held: Option<Box<dyn HeldLock>>,
}

impl StoreLock {
    /// The lock of a store that serves one broker (its data directory lock
    /// already excludes every other): always held.
    pub fn sole() -> Self {
        Self { held: None }
    }

    /// A lock held by a backend.
    pub fn held(lock: Box<dyn HeldLock>) -> Self {
        Self { held: Some(lock) }
    }

    /// Whether it is still held (see [`HeldLock::still_held`]).
    pub async fn still_held(&mut self) -> bool {
        match &mut self.held {
            Some(lock) => lock.still_held().await,
            None => true,
        }
    }
}
