//! Durable state behind one trait. SQLite is the embedded default for one
//! broker; PostgreSQL serves several brokers that act as one (replicas).
//! Both pass one conformance suite (`conformance.rs`).
//!
//! The hot path never waits on the store: identities are cached in memory
//! (see [`crate::policy::IdentityRegistry`]) and usage times are flushed in
//! batches. What must be durable before a call returns — a new identity, a
//! join token, its consumption — goes through here.
//!
//! Brokers sharing a store hear about each other's changes through the
//! change feed: every write that a broker caches in memory (identities,
//! revocations, keys, operators) records a [`Change`] in the same
//! transaction, and [`Store::change_signal`] wakes the others to read them
//! (see [`crate::replica`]).

mod audit_rows;
#[cfg(test)]
pub(crate) mod conformance;
mod locks;
mod operators;
mod postgres;
mod rows;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;

pub use locks::{HeldLock, StoreLock};
pub use operators::OperatorRecord;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::audit::checkpoint::Checkpoint;
use crate::audit::{AuditEntry, AuditFilter, ChainKey, ChainedEntry};
use crate::model::{Identity, IdentityKey};
use crate::revocation::{Revocation, Target};

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused or failed the operation.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A row with the same key exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database file could not be created or protected.
    #[error("database file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The database was migrated by a newer credbroker than this one.
    #[error(
        "the database schema is at version {found}, newer than this credbroker knows (version {known}): \
         a newer credbroker upgraded it; run that release or a later one, or restore the backup \
         taken before the upgrade (nothing was changed)"
    )]
    SchemaTooNew {
        /// The database's schema version.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// The store URL names no supported database.
    #[error("unsupported store URL {0:?} (expected sqlite://PATH or postgres://USER@HOST/DB)")]
    UnsupportedUrl(String),
}

/// What a stored key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// An environment's X.509-SVID CA.
    X509Ca,
    /// An environment's ES256 JWT signing key.
    JwtSigning,
    /// CA of the broker's own TLS certificate (`broker-ca.pem`).
    TlsCa,
    /// CA of admin client certificates.
    AdminCa,
    /// ES256 key signing the audit log's checkpoints.
    AuditSigning,
}

impl KeyKind {
    /// Stable name stored in the database and bound into sealed blobs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509Ca => "x509-ca",
            Self::JwtSigning => "jwt-es256",
            Self::TlsCa => "tls-ca",
            Self::AdminCa => "admin-ca",
            Self::AuditSigning => "audit-es256",
        }
    }
}

/// A private key sealed under the KEK, with its certificate if it has one,
/// and its place in the rotation schedule.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Row id, assigned by [`Store::insert_key`] (0 before).
    pub id: i64,
    /// Environment, or empty for broker-wide keys.
    pub env: String,
    /// Purpose.
    pub kind: KeyKind,
    /// Creation time (unix seconds): published (prepared) from then.
    pub created_at: i64,
    /// When it starts signing (unix seconds).
    pub activates_at: i64,
    /// End of its life (unix seconds): a CA's NotAfter; `i64::MAX` when it
    /// has none.
    pub not_after: i64,
    /// When an operator retired it (unix seconds).
    pub retired_at: Option<i64>,
    /// When a retired key leaves the published sets (unix seconds).
    pub unpublish_at: Option<i64>,
    /// Why it was retired.
    pub retire_reason: Option<String>,
    /// Its public id (`kid`, CA key identifier); `None` in rows written
    /// before rotation existed.
    pub key_id: Option<String>,
    /// DER certificate for CA keys.
    pub cert_der: Option<Vec<u8>>,
    /// PKCS#8 private key sealed with [`crate::keys::Kek::seal`].
    pub sealed_key: Vec<u8>,
}

/// An operator's retirement of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRetirement {
    /// Row id of the key.
    pub id: i64,
    /// When (unix seconds).
    pub retired_at: i64,
    /// When it leaves the published sets (unix seconds).
    pub unpublish_at: i64,
    /// Why.
    pub reason: String,
}

/// A join token as stored: only the SHA-256 of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// SHA-256 of the token.
    pub hash: [u8; 32],
    /// The one identity it attests to.
    pub identity: IdentityKey,
    /// Creation time (unix seconds).
    pub created_at: i64,
    /// Expiry (unix seconds).
    pub expires_at: i64,
    /// Remaining uses.
    pub uses_left: u32,
}

/// Last-issued / last-seen times to merge into stored identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageUpdate {
    /// The identity.
    pub identity: IdentityKey,
    /// Latest issuance (unix seconds).
    pub last_issued_at: Option<i64>,
    /// Latest authenticated use (unix seconds).
    pub last_seen_at: Option<i64>,
}

/// Durable storage for keys, identities and join tokens.
#[async_trait]
pub trait Store: std::fmt::Debug + Send + Sync + 'static {
    /// Whether the database answers (for `/readyz`): commits a tiny write: the store is ready only if it can commit.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The newest key of `kind` for `env`, if any.
    async fn latest_key(&self, env: &str, kind: KeyKind) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key of `kind` for `env`, oldest first.
    async fn list_keys(&self, env: &str, kind: KeyKind) -> Result<Vec<KeyRecord>, StoreError>;
    /// Stores a new key and returns its row id.
    async fn insert_key(&self, key: &KeyRecord) -> Result<i64, StoreError>;
    /// Records an operator's retirement of a key that was not retired yet.
    async fn retire_key(&self, retirement: &KeyRetirement) -> Result<(), StoreError>;
    /// The version of `env`'s published key set described by
    /// `fingerprint`: the stored one if it describes the same set, else one
    /// higher.
    async fn key_sequence(&self, env: &str, fingerprint: &str) -> Result<i64, StoreError>;

    /// Every identity.
    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError>;
    /// One identity.
    async fn get_identity(&self, key: &IdentityKey) -> Result<Option<Identity>, StoreError>;
    /// Adds an identity; [`StoreError::AlreadyExists`] if its key is taken.
    async fn insert_identity(&self, identity: &Identity) -> Result<(), StoreError>;
    /// Replaces an identity's settings (not its usage times).
    async fn update_identity(&self, identity: &Identity) -> Result<(), StoreError>;
    /// Moves usage times forward (never back).
    async fn record_usage(&self, updates: &[UsageUpdate]) -> Result<(), StoreError>;

    /// Stores a join token.
    async fn insert_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;
    /// Looks a join token up by hash.
    async fn find_join_token(&self, hash: &[u8; 32])
    -> Result<Option<JoinTokenRecord>, StoreError>;
    /// Atomically spends one use if the token is unexpired at `now` and has
    /// uses left; returns whether it did.
    async fn consume_join_token(&self, hash: &[u8; 32], now: i64) -> Result<bool, StoreError>;
    /// Deletes join tokens that expired before `before`; returns how many.
    async fn purge_join_tokens(&self, before: i64) -> Result<u64, StoreError>;

    /// Whether single-use token `jti` of `attestor` was spent and has not
    /// expired at `now`.
    async fn jti_spent(&self, attestor: &str, jti: &str, now: i64) -> Result<bool, StoreError>;
    /// Atomically records `jti` as spent until `expires_at`; false if it
    /// already was (and is unexpired at `now`).
    async fn spend_jti(
        &self,
        attestor: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError>;
    /// Forgets spent `jti`s that expired by `now`; returns how many.
    async fn purge_jtis(&self, now: i64) -> Result<u64, StoreError>;
    /// The key an instance is bound to, if it attested before.
    async fn instance_key(
        &self,
        attestor: &str,
        instance_id: &str,
    ) -> Result<Option<String>, StoreError>;
    /// Binds an instance to `key_sha256` unless it is bound already;
    /// returns the key it is bound to now.
    async fn bind_instance(
        &self,
        attestor: &str,
        instance_id: &str,
        key_sha256: &str,
        now: i64,
    ) -> Result<String, StoreError>;

    /// Links `entries` into the chain after the newest stored entry (keyed
    /// by `chain`) and appends them in one transaction; returns the new
    /// head. The store orders entries: brokers sharing it each append
    /// after whatever any of them committed before.
    async fn append_audit(
        &self,
        entries: &[AuditEntry],
        chain: &ChainKey,
    ) -> Result<(i64, [u8; 32]), StoreError>;
    /// Sequence number and hash of the last audit entry.
    async fn audit_head(&self) -> Result<Option<(i64, [u8; 32])>, StoreError>;
    /// Up to `limit` entries with `seq > after`, in order (for verification).
    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<ChainedEntry>, StoreError>;
    /// The newest retention cut, if retention ever cut the log: entries up
    /// to its sequence number were exported and may be gone, and the log
    /// verifies from it.
    async fn audit_cut(&self) -> Result<Option<AuditCut>, StoreError>;
    /// Records `cut` as the newest retention cut, replacing an older one
    /// (a cut at or before the recorded one changes nothing). Called once
    /// the export is durable and before any entry it covers is deleted.
    /// SQL: an upsert of the single row `id = 1` of table `audit_cut`,
    /// `WHERE excluded.seq > audit_cut.seq`.
    async fn record_audit_cut(&self, cut: &AuditCut) -> Result<(), StoreError>;
    /// Deletes at most `limit` audit entries with `seq <= through`, oldest
    /// first, in one transaction; returns how many. Only retention calls
    /// it, with `through` at most the recorded cut's sequence number.
    async fn delete_audit_through(&self, through: i64, limit: i64) -> Result<u64, StoreError>;
    /// Entries matching `filter`, newest first.
    async fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<ChainedEntry>, StoreError>;
    /// Every issued credential unexpired at `now` (from the audit log),
    /// of `identity` only when given (`env/name`: read through its own
    /// index, not every credential outstanding); whether one is revoked is
    /// the caller's to judge.
    async fn outstanding_credentials(
        &self,
        now: i64,
        identity: Option<&str>,
    ) -> Result<Vec<OutstandingCredential>, StoreError>;
    /// X.509-SVIDs matching `query`, issued at or before `query.until`
    /// and unexpired at `now` (from the audit log, by an index).
    async fn issued_certificates(
        &self,
        query: &CertQuery<'_>,
        now: i64,
    ) -> Result<Vec<IssuedCert>, StoreError>;

    /// Stores a revocation and returns its stream sequence number.
    async fn insert_revocation(&self, rev: &NewRevocation) -> Result<i64, StoreError>;
    /// Revocations still covering something at `now`, in sequence order.
    async fn live_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError>;
    /// Revocations with a sequence number above `after`, in order. A
    /// revocation's number is assigned in commit order, so a reader that
    /// saw number N has seen every committed revocation below it.
    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>, StoreError>;
    /// Deletes revocations that cover nothing any more at `now`.
    async fn purge_revocations(&self, now: i64) -> Result<u64, StoreError>;
    /// The highest revocation sequence number ever assigned (0 if none),
    /// purged entries included: the end of the WatchRevocations stream.
    async fn latest_revocation_seq(&self) -> Result<i64, StoreError>;

    /// Stores a named operator's new certificate.
    async fn insert_operator(&self, op: &OperatorRecord) -> Result<(), StoreError>;
    /// Every operator certificate ever issued, by name then age.
    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError>;
    /// Marks an unrevoked operator certificate revoked;
    /// [`StoreError::NotFound`] if there is none with `serial`.
    async fn revoke_operator(
        &self,
        serial: &str,
        at: i64,
        by: &str,
        reason: &str,
    ) -> Result<(), StoreError>;

    /// Up to `limit` changes with a sequence number above `after`, in
    /// order. Numbers are assigned in commit order, so nothing committed
    /// later can appear below one already read.
    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError>;
    /// The newest change's sequence number (0 if none).
    async fn latest_change(&self) -> Result<i64, StoreError>;
    /// Deletes changes recorded before `before_ms` (unix ms); returns how
    /// many. A broker that fell further behind reloads everything.
    async fn purge_changes(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Wakes whenever a change is committed by any broker sharing this
    /// store; `None` when the store serves one broker (nothing changes
    /// behind its back).
    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>, StoreError>;
    /// Waits for the lock that makes first-start key creation race-free
    /// among brokers starting together; held until dropped.
    async fn bootstrap_lock(&self) -> Result<StoreLock, StoreError>;
    /// Takes the leader lock if no other broker holds it. The leader runs
    /// key rotation, purges and other periodic work; another broker takes
    /// over within seconds of its death.
    async fn try_lead(&self) -> Result<Option<StoreLock>, StoreError>;
}

/// What a [`Change`] is about; its key says which one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// An identity was created or changed; key `env/name`.
    Identity,
    /// A revocation was stored; key its sequence number.
    Revocation,
    /// A key was created or retired; key its environment (empty for
    /// broker-wide keys).
    Keys,
    /// An operator certificate was issued or revoked; key its serial.
    Operator,
}

impl ChangeKind {
    /// The name stored in the `changes` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Revocation => "revocation",
            Self::Keys => "keys",
            Self::Operator => "operator",
        }
    }

    /// The kind stored as `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "identity" => Self::Identity,
            "revocation" => Self::Revocation,
            "keys" => Self::Keys,
            "operator" => Self::Operator,
            _ => return None,
        })
    }
}

/// One committed change, as the change feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Position in the feed (commit order).
    pub seq: i64,
    /// What changed.
    pub kind: ChangeKind,
    /// Which one (see [`ChangeKind`]).
    pub key: String,
}

/// A wake-up source for the change feed.
#[async_trait]
pub trait ChangeSignal: Send {
    /// Returns when some change may have been committed. An error means
    /// notifications may have been lost: read the feed, then wait again.
    async fn wait(&mut self) -> Result<(), StoreError>;
}

/// A retention cut as stored: its signed checkpoint (kind
/// [`CheckpointKind::Cut`](crate::audit::checkpoint::CheckpointKind::Cut))
/// and the export file holding the entries it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCut {
    /// The signed statement: entries up to `checkpoint.seq` were exported.
    pub checkpoint: Checkpoint,
    /// File name of the export (in the export directory).
    pub export: String,
}

/// A revocation before it is stored (no sequence number yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    /// What it covers.
    pub target: Target,
    /// Why.
    pub reason: String,
    /// Who.
    pub operator: String,
    /// When (unix seconds).
    pub revoked_at: i64,
    /// Latest expiry it covers (unix seconds).
    pub covers_until: i64,
    /// For owner revocations: the owner's identities at the time.
    pub identities: Vec<String>,
}

/// An issued, unexpired credential as the audit log remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutstandingCredential {
    /// `env/name`.
    pub identity: String,
    /// JWT id, for JWTs.
    pub jti: Option<String>,
    /// Upper-case hex serial, for certificates.
    pub serial: Option<String>,
    /// Issue time (unix seconds).
    pub issued_at: i64,
}

/// Which issued certificates a revocation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertQuery<'a> {
    /// The audit column matched: `serial`, `identity` (`env/name`) or `env`.
    pub by: CertKey,
    /// Its value.
    pub value: &'a str,
    /// Only certificates issued at or before this (unix seconds).
    pub until: i64,
}

/// The audit column a [`CertQuery`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKey {
    /// One serial.
    Serial,
    /// One identity, `env/name`.
    Identity,
    /// A whole environment.
    Env,
}

/// An issued certificate as the audit log remembers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// Upper-case hex serial.
    pub serial: String,
    /// `env/name`.
    pub identity: String,
    /// Issue time (unix seconds).
    pub issued_at: i64,
    /// Expiry (unix seconds).
    pub expires_at: i64,
}

/// Opens the store named by `url`, creating and migrating it as needed.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
