//! The identity registry: every identity in memory (so issuance never waits
//! on the database), written through to the store on change, with usage times
//! collected in memory and flushed in batches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use tokio::sync::{Mutex, broadcast};

use super::PolicyError;
use super::node::is_served_by;
use super::registry_index::RegistryIndex;
use super::usage::{MAX_PER_FLUSH, Usage, UsageQueue, WRITE_EVERY};
use crate::model::{
    EnvName, Identity, IdentityKey, IdentityStatus, Selector, SpiffeId, TrustDomain,
};
use crate::store::{Store, StoreError, UsageUpdate};

/// One identity in memory: its settings, shared with requests, and its
/// usage times, counted here. One map entry per identity (one key, one
/// slot): a second map for usage cost every identity its key twice.
#[derive(Debug)]
struct Entry {
    identity: Arc<Identity>,
    usage: Usage,
}

impl Entry {
    /// `identity` as stored, taken in at `now`.
    fn new(identity: Arc<Identity>, now: i64) -> Self {
        Self {
            usage: Usage::from_identity(&identity, now),
            identity,
        }
    }

    /// The settings with the usage times counted since.
    fn view(&self, now: i64) -> IdentityView {
        let nonzero = |v: i64| (v != 0).then_some(v);
        let mut identity = (*self.identity).clone();
        let (issued, seen) = self.usage.times();
        identity.last_issued_at = nonzero(issued);
        identity.last_seen_at = nonzero(seen);
        let status = identity.status(now);
        IdentityView { identity, status }
    }
}

/// One copy of each environment name, trust domain and parent node for
/// every identity loaded, and one of each identity's name for its key and
/// SPIFFE ID (each row read from the store comes with copies of its own: a
/// node's thousand workloads held a thousand copies of its key).
#[derive(Default)]
struct SharedNames {
    envs: HashMap<EnvName, EnvName>,
    domains: HashMap<TrustDomain, TrustDomain>,
    parents: HashMap<IdentityKey, IdentityKey>,
}

impl SharedNames {
    fn share(&mut self, mut id: Identity) -> Identity {
        let env = self
            .envs
            .entry(id.key.env.clone())
            .or_insert_with(|| id.key.env.clone());
        id.key.env = env.clone();
        let domain = self
            .domains
            .entry(id.spiffe_id.trust_domain().clone())
            .or_insert_with(|| id.spiffe_id.trust_domain().clone())
            .clone();
        if id.spiffe_id.path() == &id.key.name {
            id.spiffe_id = SpiffeId::new(domain, id.key.name.clone());
        }
        if let Some(parent) = id.parent.take() {
            let shared = self
                .parents
                .entry(parent)
                .or_insert_with_key(|p| IdentityKey {
                    env: self
                        .envs
                        .get(&p.env)
                        .cloned()
                        .unwrap_or_else(|| p.env.clone()),
                    name: p.name.clone(),
                });
            id.parent = Some(shared.clone());
        }
        id
    }
}

/// An identity with its latest usage times, as shown to operators.
#[derive(Debug, Clone)]
pub struct IdentityView {
    /// Settings and usage merged.
    pub identity: Identity,
    /// Status at the time of the view.
    pub status: IdentityStatus,
}

/// Changes buffered per subscriber before it is told it lagged (and must
/// re-read the registry).
const CHANGE_BUFFER: usize = 4096;

/// In-memory identities backed by a [`Store`].
pub struct IdentityRegistry {
    store: Arc<dyn Store>,
    identities: DashMap<IdentityKey, Entry>,
    /// Children of each node and platform candidates by selector, kept in
    /// step with `identities` by every writer (all hold `writes`).
    index: RegistryIndex,
    /// Every created or changed identity, as stored, for node streams.
    changes: broadcast::Sender<Arc<Identity>>,
    /// Serializes read-modify-write changes so two admins cannot lose each
    /// other's update.
    writes: Mutex<()>,
    /// Identities whose usage is due to be written, each once: the flush
    /// writes these instead of scanning every identity each second.
    usage_queue: UsageQueue,
    /// When the flush last looked for identities changed once and idle
    /// since (no use queued them).
    last_sweep: AtomicI64,
}

impl std::fmt::Debug for IdentityRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityRegistry")
            .field("identities", &self.identities.len())
            .finish_non_exhaustive()
    }
}

impl IdentityRegistry {
    /// Loads every identity from `store`.
    pub async fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let stored = store.list_identities().await?;
        // Sized once: growing would hold the old and the new table at once.
        let identities = DashMap::with_capacity(stored.len());
        let index = RegistryIndex::default();
        let mut names = SharedNames::default();
        let now = crate::model::unix_now();
        for id in stored {
            let id = names.share(id);
            index.replace(None, Some(&id));
            identities.insert(id.key.clone(), Entry::new(Arc::new(id), now));
        }
        let registry = Self {
            store,
            identities,
            index,
            changes: broadcast::channel(CHANGE_BUFFER).0,
            writes: Mutex::new(()),
            usage_queue: UsageQueue::default(),
            last_sweep: AtomicI64::new(now),
        };
        Ok(registry)
    }

    /// Receives every identity created or changed from now on. Subscribe
    /// before reading the current set so nothing falls in between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Identity>> {
        self.changes.subscribe()
    }

    /// The identities parented to `node`, in any status, sorted by key.
    pub fn children(&self, node: &IdentityKey) -> Vec<Arc<Identity>> {
        self.index
            .children(node)
            .iter()
            .filter_map(|key| self.get(key))
            .filter(|child| is_served_by(child, node))
            .collect()
    }

    /// The identity's current settings (usage times as of load).
    pub fn get(&self, key: &IdentityKey) -> Option<Arc<Identity>> {
        self.identities.get(key).map(|e| Arc::clone(&e.identity))
    }

    /// The identity, read from the store when this broker has not heard
    /// of it yet: one created on another broker sharing the store a moment
    /// ago (its change is on its way) is found at once. A miss in memory
    /// costs one store read, so use it where the caller already proved the
    /// identity exists (a stored join token) or is an operator.
    pub async fn get_or_load(
        &self,
        key: &IdentityKey,
    ) -> Result<Option<Arc<Identity>>, StoreError> {
        if let Some(found) = self.get(key) {
            return Ok(Some(found));
        }
        let stored = self.store.get_identity(key).await?;
        if stored.is_some() {
            self.apply_stored(key, stored).await;
        }
        Ok(self.get(key))
    }

    /// The identities of `env` that platform evidence proving `proven`
    /// may match: every one it matches, and some it does not (check each
    /// with [`super::selectors::matching`]). Never one with a parent: only
    /// its node agent attests it.
    pub fn platform_candidates<'a>(
        &self,
        env: &EnvName,
        proven: impl IntoIterator<Item = &'a Selector>,
    ) -> Vec<Arc<Identity>> {
        self.index
            .platform_candidates(env, proven)
            .iter()
            .filter_map(|key| self.get(key))
            .filter(|id| id.parent.is_none())
            .collect()
    }

    /// The identity with up-to-date usage times.
    pub fn view(&self, key: &IdentityKey, now: i64) -> Option<IdentityView> {
        self.identities.get(key).map(|e| e.view(now))
    }

    /// Visits every identity with its status and last issuance (0: never),
    /// copying none: what the metrics count at every scrape, which listing
    /// (a copy of each, then a sort) made seconds of CPU at a million.
    pub fn census(&self, now: i64, mut visit: impl FnMut(&Identity, IdentityStatus, i64)) {
        for e in self.identities.iter() {
            let entry = e.value();
            let (last_issued, _) = entry.usage.times();
            visit(&entry.identity, entry.identity.status(now), last_issued);
        }
    }

    /// Identities matching the filters, sorted by environment and name.
    pub fn list(&self, env: Option<&EnvName>, owner: Option<&str>, now: i64) -> Vec<IdentityView> {
        let mut out: Vec<IdentityView> = self
            .identities
            .iter()
            .filter(|e| env.is_none_or(|env| &e.key().env == env))
            .filter(|e| owner.is_none_or(|o| e.value().identity.owner == o))
            .map(|e| e.value().view(now))
            .collect();
        out.sort_by(|a, b| a.identity.key.cmp(&b.identity.key));
        out
    }

    /// Stores a new identity, then caches it.
    pub async fn create(&self, identity: Identity) -> Result<Arc<Identity>, StoreError> {
        let _guard = self.writes.lock().await;
        if self.identities.contains_key(&identity.key) {
            return Err(StoreError::AlreadyExists(format!(
                "identity {}",
                identity.key
            )));
        }
        if let Err(e) = self.store.insert_identity(&identity).await {
            if matches!(e, StoreError::AlreadyExists(_)) {
                // Another broker sharing the store created it a moment ago:
                // take it in now rather than when its change arrives.
                drop(_guard);
                let stored = self.store.get_identity(&identity.key).await?;
                self.apply_stored(&identity.key, stored).await;
            }
            return Err(e);
        }
        let identity = Arc::new(identity);
        self.index.replace(None, Some(&identity));
        self.identities.insert(
            identity.key.clone(),
            Entry::new(Arc::clone(&identity), crate::model::unix_now()),
        );
        let _ = self.changes.send(Arc::clone(&identity));
        Ok(identity)
    }

    /// Applies `change` to the identity, stores the result, then caches it.
    /// `change` may refuse by returning an error; nothing is written then.
    pub async fn update(
        &self,
        key: &IdentityKey,
        now: i64,
        change: impl FnOnce(&mut Identity) -> Result<(), PolicyError>,
    ) -> Result<Arc<Identity>, UpdateError> {
        let current = self
            .get_or_load(key)
            .await?
            .ok_or_else(|| UpdateError::Store(StoreError::NotFound(format!("identity {key}"))))?;
        let _guard = self.writes.lock().await;
        // Re-read under the lock: another change may have landed meanwhile.
        let current = self.get(key).unwrap_or(current);
        let mut next = (*current).clone();
        change(&mut next).map_err(UpdateError::Policy)?;
        next.updated_at = now;
        self.store.update_identity(&next).await?;
        let next = Arc::new(next);
        self.replace(key, &next);
        let _ = self.changes.send(Arc::clone(&next));
        Ok(next)
    }

    /// Takes in an identity as another broker sharing the store left it
    /// (`stored`; `None` if it is gone). Its local usage times are kept:
    /// each broker flushes its own, and the store keeps the latest.
    pub async fn apply_stored(&self, key: &IdentityKey, stored: Option<Identity>) {
        let _guard = self.writes.lock().await;
        let Some(stored) = stored else {
            if let Some((_, gone)) = self.identities.remove(key) {
                self.index.replace(Some(&gone.identity), None);
            }
            return;
        };
        if self.get(key).is_some_and(|cached| {
            Identity {
                last_issued_at: None,
                last_seen_at: None,
                ..(*cached).clone()
            } == Identity {
                last_issued_at: None,
                last_seen_at: None,
                ..stored.clone()
            }
        }) {
            // Its own change, or one already applied: nothing new.
            return;
        }
        let stored = Arc::new(stored);
        self.replace(key, &stored);
        let _ = self.changes.send(stored);
    }

    /// Caches `next` as `key`'s settings, keeping the usage counted so far.
    /// Callers hold `writes`.
    fn replace(&self, key: &IdentityKey, next: &Arc<Identity>) {
        let previous = self.get(key);
        self.index.replace(previous.as_deref(), Some(next));
        match self.identities.get_mut(key) {
            Some(mut entry) => entry.identity = Arc::clone(next),
            None => {
                self.identities.insert(
                    key.clone(),
                    Entry::new(Arc::clone(next), crate::model::unix_now()),
                );
            }
        }
    }

    /// Notes that a credential was issued to `key` at `now`.
    /// Returns the previous last issuance, if there was one (for the
    /// stale-identity anomaly rule).
    pub fn record_issued(&self, key: &IdentityKey, now: i64) -> Option<i64> {
        let entry = self.identities.get(key)?;
        let previous = entry.usage.issued(now);
        if entry.usage.changed(now) {
            self.usage_queue.push(key);
        }
        (previous != 0).then_some(previous)
    }

    /// Notes an authenticated use by `key` at `now`.
    pub fn record_seen(&self, key: &IdentityKey, now: i64) {
        if let Some(entry) = self.identities.get(key) {
            entry.usage.seen(now);
            if entry.usage.changed(now) {
                self.usage_queue.push(key);
            }
        }
    }

    /// Writes the usage times that are due (see [`super::usage`]), at most
    /// [`MAX_PER_FLUSH`] identities, in one batch. Every [`WRITE_EVERY`] it
    /// also looks for identities used once and idle since, which no use
    /// queued.
    pub async fn flush_usage(&self, now: i64) -> Result<usize, StoreError> {
        if now - self.last_sweep.load(Ordering::Relaxed) >= WRITE_EVERY {
            self.last_sweep.store(now, Ordering::Relaxed);
            for e in self.identities.iter() {
                if e.value().usage.due(now) {
                    self.usage_queue.push(e.key());
                }
            }
        }
        let updates: Vec<UsageUpdate> = self
            .usage_queue
            .take_batch()
            .iter()
            .filter_map(|key| self.identities.get(key)?.usage.take(key, now))
            .collect();
        self.write_usage(&updates, now).await
    }

    /// Writes every changed identity's usage times, due or not: at
    /// shutdown, so a graceful stop loses none.
    pub async fn flush_all_usage(&self, now: i64) -> Result<usize, StoreError> {
        let updates: Vec<UsageUpdate> = self
            .identities
            .iter()
            .filter_map(|e| e.value().usage.take(e.key(), now))
            .collect();
        let mut written = 0;
        for chunk in updates.chunks(MAX_PER_FLUSH) {
            written += self.write_usage(chunk, now).await?;
        }
        Ok(written)
    }

    async fn write_usage(&self, updates: &[UsageUpdate], now: i64) -> Result<usize, StoreError> {
        if updates.is_empty() {
            return Ok(0);
        }
        if let Err(e) = self.store.record_usage(updates).await {
            // Keep them for the next attempt.
            for u in updates {
                if let Some(entry) = self.identities.get(&u.identity) {
                    entry.usage.retry();
                    if entry.usage.due(now) {
                        self.usage_queue.push(&u.identity);
                    }
                }
            }
            return Err(e);
        }
        Ok(updates.len())
    }
}

/// Why an identity change failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The change was refused.
    #[error(transparent)]
    Policy(PolicyError),
    /// The store failed or the identity is unknown.
    #[error(transparent)]
    Store(#[from] StoreError),
}
