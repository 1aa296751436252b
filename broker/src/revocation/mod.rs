//! Revocation: what has been revoked, checked on every authenticated call
//! and every introspection, and pushed to subscribers as it happens.
//!
//! An entry covers a credential when the credential matches its target and
//! was issued at or before `revoked_at`. So revoking an identity kills what it
//! holds today while credentials issued after it is re-enabled stay good, and
//! every entry can be dropped once `covers_until` — the latest expiry of
//! anything issued before it — has passed. The list therefore holds at most
//! one credential lifetime's worth of revocations, however much is issued.

mod covered;
pub mod crl;
pub mod order;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use tokio::sync::broadcast;

use crate::model::{EnvName, IdentityKey};

/// Buffered events per subscriber before it is told it lagged.
const EVENT_BUFFER: usize = 4096;

/// What a revocation applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One JWT.
    Jti(String),
    /// One certificate (upper-case hex serial).
    Serial(String),
    /// Every credential of one identity.
    Identity(IdentityKey),
    /// Every credential of one environment.
    Env(EnvName),
    /// Every credential of every identity an owner owns.
    Owner(String),
    /// Every credential a signing key signed: a JWT key's `kid`, a CA's
    /// key identifier (certificates carry it as AuthorityKeyIdentifier).
    SigningKey(String),
}

impl Target {
    /// `jti`, `serial`, `identity`, `env` or `owner`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Jti(_) => "jti",
            Self::Serial(_) => "serial",
            Self::Identity(_) => "identity",
            Self::Env(_) => "env",
            Self::Owner(_) => "owner",
            Self::SigningKey(_) => "key",
        }
    }

    /// The value as stored (`env/name` for identities).
    pub fn value(&self) -> String {
        match self {
            Self::Jti(v) | Self::Serial(v) | Self::Owner(v) | Self::SigningKey(v) => v.clone(),
            Self::Identity(key) => key.to_string(),
            Self::Env(env) => env.to_string(),
        }
    }

    /// Rebuilds a target from its stored kind and value.
    pub fn parse(kind: &str, value: &str) -> Result<Self, String> {
        Ok(match kind {
            "jti" => Self::Jti(value.to_owned()),
            "serial" => Self::Serial(value.to_ascii_uppercase()),
            "owner" => Self::Owner(value.to_owned()),
            "env" => Self::Env(EnvName::new(value).map_err(|e| e.to_string())?),
            "identity" => Self::Identity(IdentityKey::parse(value)?),
            "key" => Self::SigningKey(value.to_owned()),
            other => return Err(format!("unknown revocation kind {other:?}")),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// A stored revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Stream position.
    pub seq: i64,
    /// What it covers.
    pub target: Target,
    /// Why (required).
    pub reason: String,
    /// Who revoked.
    pub operator: String,
    /// When (unix seconds); covers credentials issued at or before it.
    pub revoked_at: i64,
    /// When every covered credential has expired (unix seconds).
    pub covers_until: i64,
    /// For owner revocations: the owner's identities (`env/name`) at the
    /// time; for identity revocations of a node: the identities it serves.
    /// Published so verifiers need no owner or parent lookup.
    pub identities: Vec<String>,
}

/// What is known of a credential being checked.
#[derive(Debug, Clone, Copy)]
pub struct CredentialFacts<'a> {
    /// JWT id, for JWTs.
    pub jti: Option<&'a str>,
    /// Upper-case hex serial, for certificates.
    pub serial: Option<&'a str>,
    /// Its identity.
    pub identity: &'a IdentityKey,
    /// The identity's owner, when the identity still exists.
    pub owner: Option<&'a str>,
    /// When it was issued (unix seconds).
    pub issued_at: i64,
    /// The key that signed it: a JWT's `kid`, a certificate's
    /// AuthorityKeyIdentifier (hex).
    pub signed_by: Option<&'a str>,
}

/// The live revocations, indexed for the verification path.
#[derive(Debug)]
pub struct RevocationList {
    by_jti: DashMap<String, Arc<Revocation>>,
    by_serial: DashMap<String, Arc<Revocation>>,
    by_identity: DashMap<IdentityKey, Arc<Revocation>>,
    by_env: DashMap<EnvName, Arc<Revocation>>,
    by_owner: DashMap<String, Arc<Revocation>>,
    by_key: DashMap<String, Arc<Revocation>>,
    /// Every live entry in stream order, for subscribers catching up.
    all: RwLock<BTreeMap<i64, Arc<Revocation>>>,
    events: broadcast::Sender<Arc<Revocation>>,
    /// Bumped on every change, so derived data (CRLs) knows when to rebuild.
    version: AtomicU64,
    /// The highest sequence number assigned so far (purged ones included).
    latest_seq: AtomicI64,
    /// Held from storing a revocation until it is broadcast.
    writer: tokio::sync::Mutex<()>,
    /// Pending revocations and the issuance fence.
    pub order: order::Ordering,
}

impl Default for RevocationList {
    fn default() -> Self {
        Self {
            by_jti: DashMap::new(),
            by_serial: DashMap::new(),
            by_identity: DashMap::new(),
            by_env: DashMap::new(),
            by_owner: DashMap::new(),
            by_key: DashMap::new(),
            all: RwLock::new(BTreeMap::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            version: AtomicU64::new(0),
            latest_seq: AtomicI64::new(0),
            writer: tokio::sync::Mutex::new(()),
            order: order::Ordering::default(),
        }
    }
}

/// Keeps whichever of two group revocations covers more (the later one).
fn keep_latest<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Arc<Revocation>>,
    key: K,
    rev: &Arc<Revocation>,
) {
    map.entry(key)
        .and_modify(|cur| {
            if rev.revoked_at >= cur.revoked_at {
                *cur = Arc::clone(rev);
            }
        })
        .or_insert_with(|| Arc::clone(rev));
}

impl RevocationList {
    /// Serializes writers: hold the guard from storing a revocation (which
    /// assigns its sequence number) until [`RevocationList::insert`], so
    /// entries are broadcast in sequence order and no subscriber skips one.
    pub async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writer.lock().await
    }

    /// Adds an entry (already durable) and tells every subscriber.
    pub fn insert(&self, rev: Revocation) -> Arc<Revocation> {
        let rev = Arc::new(rev);
        self.index(&rev);
        let _ = self.events.send(Arc::clone(&rev));
        rev
    }

    /// Applies, in sequence order, every revocation the store holds past
    /// the newest one seen here — this broker's and those of other brokers
    /// sharing the store — and tells subscribers. Call it holding
    /// [`RevocationList::writer`]. Returns what was new.
    pub async fn catch_up_locked(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<Vec<Arc<Revocation>>, crate::store::StoreError> {
        let fresh = store.revocations_after(self.latest_seq()).await?;
        Ok(fresh.into_iter().map(|rev| self.insert(rev)).collect())
    }

    /// [`RevocationList::catch_up_locked`], taking the writer lock.
    pub async fn catch_up(
        &self,
        store: &dyn crate::store::Store,
    ) -> Result<Vec<Arc<Revocation>>, crate::store::StoreError> {
        let _writer = self.writer().await;
        self.catch_up_locked(store).await
    }

    /// Adds entries loaded at start-up, without events.
    pub fn load(&self, revs: impl IntoIterator<Item = Revocation>) {
        for rev in revs {
            self.index(&Arc::new(rev));
        }
    }

    fn index(&self, rev: &Arc<Revocation>) {
        match &rev.target {
            Target::Jti(j) => {
                self.by_jti.insert(j.clone(), Arc::clone(rev));
            }
            Target::Serial(s) => {
                self.by_serial.insert(s.clone(), Arc::clone(rev));
            }
            Target::Identity(k) => {
                keep_latest(&self.by_identity, k.clone(), rev);
                // A node's revocation also covers the workloads it serves.
                for child in &rev.identities {
                    if let Ok(child) = IdentityKey::parse(child) {
                        keep_latest(&self.by_identity, child, rev);
                    }
                }
            }
            Target::Env(e) => keep_latest(&self.by_env, e.clone(), rev),
            Target::Owner(o) => keep_latest(&self.by_owner, o.clone(), rev),
            Target::SigningKey(k) => {
                self.by_key.insert(k.clone(), Arc::clone(rev));
            }
        }
        if let Ok(mut all) = self.all.write() {
            all.insert(rev.seq, Arc::clone(rev));
        }
        self.version.fetch_add(1, Ordering::AcqRel);
        self.saw_seq(rev.seq);
    }

    /// Records that sequence numbers up to `seq` have been assigned.
    pub fn saw_seq(&self, seq: i64) {
        self.latest_seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// The highest sequence number assigned so far: a stream cursor past
    /// it names an entry that does not exist (yet).
    pub fn latest_seq(&self) -> i64 {
        self.latest_seq.load(Ordering::Acquire)
    }

    /// Changes whenever an entry is added or dropped.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The existing entry for exactly this single-credential target.
    pub fn find_exact(&self, target: &Target) -> Option<Arc<Revocation>> {
        match target {
            Target::Jti(j) => self.by_jti.get(j).map(|r| Arc::clone(&r)),
            Target::Serial(s) => self.by_serial.get(s).map(|r| Arc::clone(&r)),
            Target::SigningKey(k) => self.by_key.get(k).map(|r| Arc::clone(&r)),
            _ => None,
        }
    }

    /// The revocation covering the credential, if any.
    pub fn covers(&self, c: &CredentialFacts<'_>) -> Option<Arc<Revocation>> {
        let group =
            |rev: &Arc<Revocation>| (c.issued_at <= rev.revoked_at).then(|| Arc::clone(rev));
        if let Some(jti) = c.jti
            && let Some(rev) = self.by_jti.get(jti)
        {
            return Some(Arc::clone(&rev));
        }
        if let Some(serial) = c.serial
            && let Some(rev) = self.by_serial.get(serial)
        {
            return Some(Arc::clone(&rev));
        }
        // A retired key stops signing at once: all it signed is covered,
        // whenever it was issued.
        if let Some(key) = c.signed_by
            && let Some(rev) = self.by_key.get(key)
        {
            return Some(Arc::clone(&rev));
        }
        if let Some(hit) = self.by_identity.get(c.identity).and_then(|r| group(&r)) {
            return Some(hit);
        }
        if let Some(hit) = self.by_env.get(&c.identity.env).and_then(|r| group(&r)) {
            return Some(hit);
        }
        c.owner
            .and_then(|o| self.by_owner.get(o))
            .and_then(|r| group(&r))
    }

    /// Live entries after `seq`, in order.
    pub fn after(&self, seq: i64) -> Vec<Arc<Revocation>> {
        self.all
            .read()
            .map(|all| all.range(seq + 1..).map(|(_, r)| Arc::clone(r)).collect())
            .unwrap_or_default()
    }

    /// Receives every entry inserted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Revocation>> {
        self.events.subscribe()
    }

    /// Drops entries whose covered credentials have all expired by `now`.
    pub fn prune(&self, now: i64) -> usize {
        let live = |r: &Arc<Revocation>| r.covers_until >= now;
        self.by_jti.retain(|_, r| live(r));
        self.by_serial.retain(|_, r| live(r));
        self.by_identity.retain(|_, r| live(r));
        self.by_env.retain(|_, r| live(r));
        self.by_owner.retain(|_, r| live(r));
        self.by_key.retain(|_, r| live(r));
        let Ok(mut all) = self.all.write() else {
            return 0;
        };
        let before = all.len();
        all.retain(|_, r| live(r));
        let dropped = before - all.len();
        if dropped > 0 {
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        dropped
    }

    /// Whether any signing key's retirement is in force.
    pub fn has_key_revocations(&self) -> bool {
        !self.by_key.is_empty()
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.all.read().map(|a| a.len()).unwrap_or(0)
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentityName;

    fn key(name: &str) -> IdentityKey {
        IdentityKey {
            env: EnvName::new("dev").unwrap(),
            name: IdentityName::new(name).unwrap(),
        }
    }

    fn rev(seq: i64, target: Target, revoked_at: i64, covers_until: i64) -> Revocation {
        Revocation {
            seq,
            target,
            reason: "test".into(),
            operator: "admin".into(),
            revoked_at,
            covers_until,
            identities: vec![],
        }
    }

    fn facts<'a>(id: &'a IdentityKey, jti: Option<&'a str>, issued_at: i64) -> CredentialFacts<'a> {
        CredentialFacts {
            jti,
            serial: None,
            identity: id,
            owner: Some("team"),
            issued_at,
            signed_by: Some("K1"),
        }
    }

    #[test]
    fn covers_by_each_kind() {
        let list = RevocationList::default();
        let api = key("api");
        let other = key("other");
        assert!(list.covers(&facts(&api, Some("j1"), 10)).is_none());
        list.insert(rev(1, Target::Jti("j1".into()), 100, 400));
        assert!(list.covers(&facts(&api, Some("j1"), 10)).is_some());
        assert!(list.covers(&facts(&api, Some("j2"), 10)).is_none());

        list.insert(rev(2, Target::Identity(api.clone()), 100, 400));
        assert!(
            list.covers(&facts(&api, None, 100)).is_some(),
            "issued at the revocation second"
        );
        assert!(
            list.covers(&facts(&api, None, 101)).is_none(),
            "issued after: not covered"
        );
        assert!(list.covers(&facts(&other, None, 50)).is_none());

        list.insert(rev(3, Target::Owner("team".into()), 200, 500));
        assert_eq!(list.covers(&facts(&other, None, 150)).unwrap().seq, 3);
        list.insert(rev(4, Target::Env(EnvName::new("dev").unwrap()), 300, 600));
        assert_eq!(list.covers(&facts(&other, None, 250)).unwrap().seq, 4);

        // A retired key covers what it signed whenever it was issued.
        let later = 10_000;
        assert!(list.covers(&facts(&other, None, later)).is_none());
        list.insert(rev(5, Target::SigningKey("K1".into()), 300, 600));
        assert_eq!(list.covers(&facts(&other, None, later)).unwrap().seq, 5);
        let by_other_key = CredentialFacts {
            signed_by: Some("K2"),
            ..facts(&other, None, later)
        };
        assert!(list.covers(&by_other_key).is_none());
    }

    #[test]
    fn entries_expire_and_stream_resumes() {
        let list = RevocationList::default();
        let mut rx = list.subscribe();
        list.insert(rev(1, Target::Jti("a".into()), 100, 200));
        list.insert(rev(2, Target::Serial("0A".into()), 100, 900));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        assert_eq!(
            list.after(1).iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(list.prune(201), 1);
        assert_eq!(list.len(), 1);
        let api = key("api");
        assert!(list.covers(&facts(&api, Some("a"), 10)).is_none());
    }

    #[test]
    fn targets_round_trip() {
        for t in [
            Target::Jti("x".into()),
            Target::Serial("4A0B".into()),
            Target::Identity(key("payments/api")),
            Target::Env(EnvName::new("prod").unwrap()),
            Target::Owner("team pay".into()),
        ] {
            assert_eq!(Target::parse(t.kind(), &t.value()).unwrap(), t);
        }
        assert!(Target::parse("identity", "noslash").is_err());
        assert!(Target::parse("bogus", "x").is_err());
    }
}
