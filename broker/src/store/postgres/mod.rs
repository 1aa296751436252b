//! The PostgreSQL store: one database shared by several brokers.
//!
//! What a single SQLite broker gets from having one writer, this store gets
//! from PostgreSQL: the audit log is appended under a transaction-scoped
//! advisory lock, so each batch links after whatever any broker committed
//! before it; every cached write records a [`Change`] under the change
//! lock, so change (and revocation) numbers follow commit order and a
//! reader never skips one; `NOTIFY` wakes the other brokers; a
//! session-scoped advisory lock elects the leader. Lock keys are derived
//! from the schema name, so brokers in different schemas of one database
//! (test runs, tenants) never contend.

mod audit;
mod feed;
mod identities;
mod tables;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use super::rows;
use super::{
    AuditCut, CertQuery, Change, ChangeKind, ChangeSignal, IssuedCert, JoinTokenRecord, KeyKind,
    KeyRecord, KeyRetirement, NewRevocation, OperatorRecord, OutstandingCredential, Store,
    StoreError, StoreLock, UsageUpdate,
};
use crate::audit::{AuditEntry, AuditFilter, ChainKey, ChainedEntry};
use crate::model::{Identity, IdentityKey};
use crate::revocation::Revocation;

/// Schema steps, applied in order; `schema_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/0001_init.sql"),
    include_str!("../../../migrations/postgres/0002_on_anomaly.sql"),
    include_str!("../../../migrations/postgres/0003_audit_retention.sql"),
];

/// Pooled connections per broker: the hot path does not touch the store
/// (audit is batched, one transaction at a time), so a few serve admin
/// calls, the feed and the batches. Each broker also holds one connection
/// for notifications and, while it leads, one for the leader lock: a
/// broker needs at most 7 of the server's `max_connections` (100 by
/// default).
const MAX_CONNECTIONS: u32 = 5;
/// Longest wait for a pooled connection before a call fails UNAVAILABLE.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock names; each becomes a key with the schema name.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lock {
    /// Held while migrating.
    Migrate,
    /// Held by the broker creating keys at first start.
    Bootstrap,
    /// Held by the leader for as long as it leads.
    Leader,
    /// Held while appending to the audit log.
    Audit,
    /// Held while recording a change.
    Changes,
}

impl Lock {
    /// SQL for this lock's key (an int4 hash of schema and name).
    pub(super) fn key_sql(self) -> &'static str {
        match self {
            Self::Migrate => "hashtext(current_schema() || ':credbroker-migrate')",
            Self::Bootstrap => "hashtext(current_schema() || ':credbroker-bootstrap')",
            Self::Leader => "hashtext(current_schema() || ':credbroker-leader')",
            Self::Audit => "hashtext(current_schema() || ':credbroker-audit')",
            Self::Changes => "hashtext(current_schema() || ':credbroker-changes')",
        }
    }
}

/// Takes `lock` until `tx` ends.
pub(super) async fn lock_for_transaction(
    tx: &mut Transaction<'_, Postgres>,
    lock: Lock,
) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_xact_lock({})",
        lock.key_sql()
    )))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Commits `tx` if `result` is a success, else rolls it back now. Never
/// leave a transaction to roll back on drop here: sqlx defers that
/// rollback until the connection is next used, and until then the
/// transaction keeps its advisory lock, stalling every other writer.
pub(super) async fn finish<T>(
    tx: Transaction<'_, Postgres>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// PostgreSQL-backed [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
}

impl PgStore {
    /// Connects to `url` (`postgres://USER@HOST:PORT/DB`, with libpq-style
    /// parameters such as `sslmode=verify-full`, `sslrootcert=…` or
    /// `options[search_path]=SCHEMA`) and migrates the schema. Brokers
    /// starting together migrate one at a time.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let store = Self { pool, options };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = Self::migrate_in(&mut tx).await;
        finish(tx, result).await
    }

    async fn migrate_in(tx: &mut Transaction<'static, Postgres>) -> Result<(), StoreError> {
        lock_for_transaction(tx, Lock::Migrate).await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            .execute(&mut **tx)
            .await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
            .fetch_one(&mut **tx)
            .await?;
        let version = version.unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::SchemaTooNew {
                found: version,
                known,
            });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            sqlx::raw_sql(sqlx::AssertSqlSafe(*step))
                .execute(&mut **tx)
                .await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)")
                .bind(i as i64 + 1)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Starts a transaction that records a change of `kind` to `key`: takes
    /// the change lock first, so change numbers (and the revocation numbers
    /// assigned inside) follow commit order.
    async fn begin_change(
        &self,
        kind: ChangeKind,
        key: &str,
    ) -> Result<Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let locked = lock_for_transaction(&mut tx, Lock::Changes).await;
        let recorded = match locked {
            Ok(()) => feed::record(&mut tx, kind, key).await,
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            let _ = tx.rollback().await;
            return Err(e);
        }
        Ok(tx)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO readiness_probe (id, at_ms) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(crate::model::unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_key(&self, env: &str, kind: KeyKind) -> Result<Option<KeyRecord>, StoreError> {
        tables::latest_key(&self.pool, env, kind).await
    }

    async fn list_keys(&self, env: &str, kind: KeyKind) -> Result<Vec<KeyRecord>, StoreError> {
        tables::list_keys(&self.pool, env, kind).await
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<i64, StoreError> {
        let mut tx = self.begin_change(ChangeKind::Keys, &key.env).await?;
        let result = tables::insert_key(&mut tx, key).await;
        finish(tx, result).await
    }

    async fn retire_key(&self, retirement: &KeyRetirement) -> Result<(), StoreError> {
        let env: Option<String> = sqlx::query_scalar("SELECT env FROM key_material WHERE id = $1")
            .bind(retirement.id)
            .fetch_optional(&self.pool)
            .await?;
        let env = env.ok_or_else(|| StoreError::NotFound(format!("key #{}", retirement.id)))?;
        let mut tx = self.begin_change(ChangeKind::Keys, &env).await?;
        let result = tables::retire_key(&mut tx, retirement).await;
        finish(tx, result).await
    }

    async fn key_sequence(&self, env: &str, fingerprint: &str) -> Result<i64, StoreError> {
        tables::key_sequence(&self.pool, env, fingerprint).await
    }

    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        // Decoded row by row as they arrive: never every row and every
        // identity in memory at once (100,000 rows are hundreds of MB).
        let mut rows = sqlx::query("SELECT * FROM identities ORDER BY env, name").fetch(&self.pool);
        let mut out = Vec::new();
        while let Some(row) = tokio_stream::StreamExt::next(&mut rows).await {
            out.push(rows::identity(&row?)?);
        }
        Ok(out)
    }

    async fn get_identity(&self, key: &IdentityKey) -> Result<Option<Identity>, StoreError> {
        let row = sqlx::query("SELECT * FROM identities WHERE env = $1 AND name = $2")
            .bind(key.env.as_str())
            .bind(key.name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::identity).transpose()
    }

    async fn insert_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let mut tx = self
            .begin_change(ChangeKind::Identity, &id.key.to_string())
            .await?;
        let result = identities::insert(&mut tx, id).await;
        finish(tx, result).await
    }

    async fn update_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let mut tx = self
            .begin_change(ChangeKind::Identity, &id.key.to_string())
            .await?;
        let result = identities::update(&mut tx, id).await;
        finish(tx, result).await
    }

    async fn record_usage(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        identities::record_usage(&self.pool, updates).await
    }

    async fn insert_join_token(&self, t: &JoinTokenRecord) -> Result<(), StoreError> {
        identities::insert_join_token(&self.pool, t).await
    }

    async fn find_join_token(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        identities::find_join_token(&self.pool, hash).await
    }

    async fn consume_join_token(&self, hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
        identities::consume_join_token(&self.pool, hash, now).await
    }

    async fn purge_join_tokens(&self, before: i64) -> Result<u64, StoreError> {
        identities::purge_join_tokens(&self.pool, before).await
    }

    async fn jti_spent(&self, attestor: &str, jti: &str, now: i64) -> Result<bool, StoreError> {
        tables::jti_spent(&self.pool, attestor, jti, now).await
    }

    async fn spend_jti(
        &self,
        attestor: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        tables::spend_jti(&self.pool, attestor, jti, expires_at, now).await
    }

    async fn purge_jtis(&self, now: i64) -> Result<u64, StoreError> {
        tables::purge_jtis(&self.pool, now).await
    }

    async fn instance_key(
        &self,
        attestor: &str,
        instance_id: &str,
    ) -> Result<Option<String>, StoreError> {
        tables::instance_key(&self.pool, attestor, instance_id).await
    }

    async fn bind_instance(
        &self,
        attestor: &str,
        instance_id: &str,
        key_sha256: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        tables::bind_instance(&self.pool, attestor, instance_id, key_sha256, now).await
    }

    async fn append_audit(
        &self,
        entries: &[AuditEntry],
        chain: &ChainKey,
    ) -> Result<(i64, [u8; 32]), StoreError> {
        audit::append_audit(&self.pool, entries, chain).await
    }

    async fn audit_head(&self) -> Result<Option<(i64, [u8; 32])>, StoreError> {
        audit::audit_head(&self.pool).await
    }

    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<ChainedEntry>, StoreError> {
        audit::audit_page(&self.pool, after, limit).await
    }

    async fn audit_cut(&self) -> Result<Option<AuditCut>, StoreError> {
        audit::audit_cut(&self.pool).await
    }

    async fn record_audit_cut(&self, cut: &AuditCut) -> Result<(), StoreError> {
        audit::record_audit_cut(&self.pool, cut).await
    }

    async fn delete_audit_through(&self, through: i64, limit: i64) -> Result<u64, StoreError> {
        audit::delete_audit_through(&self.pool, through, limit).await
    }

    async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<ChainedEntry>, StoreError> {
        audit::query_audit(&self.pool, f).await
    }

    async fn outstanding_credentials(
        &self,
        now: i64,
        identity: Option<&str>,
    ) -> Result<Vec<OutstandingCredential>, StoreError> {
        audit::outstanding_credentials(&self.pool, now, identity).await
    }

    async fn issued_certificates(
        &self,
        query: &CertQuery<'_>,
        now: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        audit::issued_certificates(&self.pool, query, now).await
    }

    async fn insert_revocation(&self, rev: &NewRevocation) -> Result<i64, StoreError> {
        // The number is assigned under the change lock, so revocations are
        // numbered in commit order (WatchRevocations cursors never skip).
        let mut tx = self.pool.begin().await?;
        let result = async {
            lock_for_transaction(&mut tx, Lock::Changes).await?;
            let seq = tables::insert_revocation(&mut tx, rev).await?;
            feed::record(&mut tx, ChangeKind::Revocation, &seq.to_string()).await?;
            Ok(seq)
        }
        .await;
        finish(tx, result).await
    }

    async fn live_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        tables::revocations_where(&self.pool, "covers_until >= $1", now).await
    }

    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>, StoreError> {
        tables::revocations_where(&self.pool, "seq > $1", after).await
    }

    async fn purge_revocations(&self, now: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM revocations WHERE covers_until < $1")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn latest_revocation_seq(&self) -> Result<i64, StoreError> {
        // The sequence remembers numbers of purged rows too.
        let row = sqlx::query("SELECT last_value, is_called FROM revocations_seq_seq")
            .fetch_one(&self.pool)
            .await?;
        let called: bool = row.try_get("is_called")?;
        Ok(if called {
            row.try_get("last_value")?
        } else {
            0
        })
    }

    async fn insert_operator(&self, op: &OperatorRecord) -> Result<(), StoreError> {
        let mut tx = self.begin_change(ChangeKind::Operator, &op.serial).await?;
        let result = tables::insert_operator(&mut tx, op).await;
        finish(tx, result).await
    }

    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM operators ORDER BY name, created_at")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::operator).collect()
    }

    async fn revoke_operator(
        &self,
        serial: &str,
        at: i64,
        by: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_change(ChangeKind::Operator, serial).await?;
        let result = tables::revoke_operator(&mut tx, serial, at, by, reason).await;
        finish(tx, result).await
    }

    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        feed::after(&self.pool, after, limit).await
    }

    async fn latest_change(&self) -> Result<i64, StoreError> {
        feed::latest(&self.pool).await
    }

    async fn purge_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        feed::purge(&self.pool, before_ms).await
    }

    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>, StoreError> {
        Ok(Some(Box::new(feed::Signal::listen(&self.pool).await?)))
    }

    async fn bootstrap_lock(&self) -> Result<StoreLock, StoreError> {
        feed::SessionLock::wait(&self.options, Lock::Bootstrap).await
    }

    async fn try_lead(&self) -> Result<Option<StoreLock>, StoreError> {
        feed::SessionLock::try_take(&self.options, Lock::Leader).await
    }
}

#[cfg(test)]
mod tests;
