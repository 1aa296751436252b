//! The embedded SQLite store (the default).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::rows::{self, cidr_strings, strings, to_json};
use super::{
    AuditCut, CertQuery, Change, ChangeKind, ChangeSignal, IssuedCert, JoinTokenRecord, KeyKind,
    KeyRecord, KeyRetirement, NewRevocation, OperatorRecord, OutstandingCredential, Store,
    StoreError, StoreLock, UsageUpdate,
};
use crate::audit::{AuditEntry, AuditFilter, ChainKey, ChainedEntry};
use crate::model::{Identity, IdentityKey};
use crate::revocation::Revocation;
use append::AppendConnection;
use identity_chain::IdentityHeads;

mod append;
mod attestation;
mod audit;
mod changes;
mod identity_chain;
mod keys;
mod operators;
mod revocations;

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/sqlite/0001_init.sql"),
    include_str!("../../../migrations/sqlite/0002_audit.sql"),
    include_str!("../../../migrations/sqlite/0003_revocations.sql"),
    include_str!("../../../migrations/sqlite/0004_nodes.sql"),
    include_str!("../../../migrations/sqlite/0005_attestation.sql"),
    include_str!("../../../migrations/sqlite/0006_binding.sql"),
    include_str!("../../../migrations/sqlite/0008_key_lifecycle.sql"),
    include_str!("../../../migrations/sqlite/0009_operators.sql"),
    include_str!("../../../migrations/sqlite/0010_changes.sql"),
    include_str!("../../../migrations/sqlite/0011_on_anomaly.sql"),
    include_str!("../../../migrations/sqlite/0012_audit_retention.sql"),
    include_str!("../../../migrations/sqlite/0013_audit_identity_chain.sql"),
];

/// Creates the database file 0600 if it does not exist yet (so SQLite never
/// creates it with the umask's mode), and tightens an existing one and its
/// -wal/-shm files to 0600.
fn make_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source: std::io::Error| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    Ok(())
}

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Each identity's newest audit entry (see `identity_chain`).
    heads: Arc<IdentityHeads>,
    /// The audit writer's own connection (see `append`).
    appender: Arc<AppendConnection>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url`
    /// (`sqlite://PATH`).
    ///
    /// Every commit is `synchronous = FULL`: a revocation, a spent join
    /// token or an audit record the broker acknowledged survives power loss,
    /// not only a crash. Group commit amortises the fsync over the audit
    /// batch. The files are private to the broker's user (0600; SQLite
    /// gives its -wal and -shm files the database file's mode).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?;
        make_private(options.get_filename())?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A statement that fails inside a transaction (SQLITE_FULL, an
            // I/O error) can leave its connection in that transaction,
            // holding the write lock: every later write would answer
            // "database is locked" until restart. A connection coming back
            // to the pool inside a transaction is rolled back and closed,
            // so writes recover by themselves once the fault is gone.
            .after_release(|conn, _| {
                Box::pin(async move {
                    let stuck = sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok();
                    if stuck {
                        tracing::warn!(
                            "store connection was left inside a transaction; rolled back and closed"
                        );
                    }
                    Ok(!stuck)
                })
            })
            .connect_with(options)
            .await?;
        migrate(&pool).await?;
        let heads = IdentityHeads::load(&pool).await?;
        let appender = Arc::new(AppendConnection::new(pool.clone()));
        let store = Self {
            pool,
            heads,
            appender,
        };
        // The readiness probe's one row; not part of the schema proper, so
        // created here rather than by a migration.
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS readiness_probe
                 (id INTEGER PRIMARY KEY CHECK (id = 1), at_ms INTEGER NOT NULL)",
        )
        .execute(&store.pool)
        .await?;
        Ok(store)
    }
}

async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await?;
    // Older binaries must not run on a newer schema: they would write
    // rows the newer one does not expect, or miss columns it relies on.
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        // Both strings are compile-time constants or a formatted integer.
        sqlx::raw_sql(sqlx::AssertSqlSafe(*step))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {}",
            i + 1
        )))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // A real commit (one row rewritten, fsynced): a full disk, a
        // read-only file or a held write lock all show here, as they do
        // to every write.
        sqlx::query(
            "INSERT INTO readiness_probe (id, at_ms) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(crate::model::unix_now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn latest_key(&self, env: &str, kind: KeyKind) -> Result<Option<KeyRecord>, StoreError> {
        keys::latest_key(&self.pool, env, kind).await
    }

    async fn list_keys(&self, env: &str, kind: KeyKind) -> Result<Vec<KeyRecord>, StoreError> {
        keys::list_keys(&self.pool, env, kind).await
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<i64, StoreError> {
        keys::insert_key(&self.pool, key).await
    }

    async fn retire_key(&self, retirement: &KeyRetirement) -> Result<(), StoreError> {
        keys::retire_key(&self.pool, retirement).await
    }

    async fn key_sequence(&self, env: &str, fingerprint: &str) -> Result<i64, StoreError> {
        keys::key_sequence(&self.pool, env, fingerprint).await
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
        let row = sqlx::query("SELECT * FROM identities WHERE env = ? AND name = ?")
            .bind(key.env.as_str())
            .bind(key.name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::identity).transpose()
    }

    async fn insert_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "INSERT INTO identities (env, name, spiffe_id, owner, purpose, selectors, audiences,
                 scopes, jwt_ttl_seconds, x509_ttl_seconds, expires_at, enabled, retired_at,
                 created_at, updated_at, last_issued_at, last_seen_at, parent, allow_cidrs,
                 require_binding, on_anomaly)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id.key.env.as_str())
        .bind(id.key.name.as_str())
        .bind(id.spiffe_id.to_string())
        .bind(&id.owner)
        .bind(&id.purpose)
        .bind(to_json(&id.selectors))
        .bind(to_json(&strings(&id.audiences)))
        .bind(to_json(&strings(&id.scopes)))
        .bind(id.jwt_ttl.as_secs() as i64)
        .bind(id.x509_ttl.as_secs() as i64)
        .bind(id.expires_at)
        .bind(id.enabled as i64)
        .bind(id.retired_at)
        .bind(id.created_at)
        .bind(id.updated_at)
        .bind(id.last_issued_at)
        .bind(id.last_seen_at)
        .bind(id.parent.as_ref().map(ToString::to_string))
        .bind(to_json(&cidr_strings(&id.allow_cidrs)))
        .bind(id.require_binding as i64)
        .bind(id.on_anomaly.as_str())
        .execute(&mut *tx)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::AlreadyExists(format!("identity {}", id.key)));
            }
            Err(e) => return Err(e.into()),
        }
        changes::record(&mut tx, ChangeKind::Identity, &id.key.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE identities SET owner = ?, purpose = ?, selectors = ?, audiences = ?,
                 scopes = ?, jwt_ttl_seconds = ?, x509_ttl_seconds = ?, expires_at = ?,
                 enabled = ?, retired_at = ?, updated_at = ?, allow_cidrs = ?,
                 require_binding = ?, on_anomaly = ?
             WHERE env = ? AND name = ?",
        )
        .bind(&id.owner)
        .bind(&id.purpose)
        .bind(to_json(&id.selectors))
        .bind(to_json(&strings(&id.audiences)))
        .bind(to_json(&strings(&id.scopes)))
        .bind(id.jwt_ttl.as_secs() as i64)
        .bind(id.x509_ttl.as_secs() as i64)
        .bind(id.expires_at)
        .bind(id.enabled as i64)
        .bind(id.retired_at)
        .bind(id.updated_at)
        .bind(to_json(&cidr_strings(&id.allow_cidrs)))
        .bind(id.require_binding as i64)
        .bind(id.on_anomaly.as_str())
        .bind(id.key.env.as_str())
        .bind(id.key.name.as_str())
        .execute(&mut *tx)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("identity {}", id.key)));
        }
        changes::record(&mut tx, ChangeKind::Identity, &id.key.to_string()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn record_usage(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        // A few multi-row statements per flush, not one per identity: the
        // flush holds SQLite's one write lock, which audit commits wait for
        // (with a million identities, 7,000 used a second, a statement each
        // and two table scans to turn zeros into NULLs locked the audit log
        // out). Zero means "never": NULLIF keeps such times NULL.
        let mut tx = self.pool.begin().await?;
        for run in super::audit_rows::runs(updates) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "UPDATE identities SET
                     last_issued_at = NULLIF(MAX(COALESCE(identities.last_issued_at, 0),
                                                 COALESCE(u.column3, 0)), 0),
                     last_seen_at = NULLIF(MAX(COALESCE(identities.last_seen_at, 0),
                                               COALESCE(u.column4, 0)), 0)
                 FROM (",
            );
            q.push_values(run, |mut row, u| {
                row.push_bind(u.identity.env.as_str())
                    .push_bind(u.identity.name.as_str())
                    .push_bind(u.last_issued_at)
                    .push_bind(u.last_seen_at);
            });
            q.push(") AS u WHERE identities.env = u.column1 AND identities.name = u.column2");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_join_token(&self, t: &JoinTokenRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, env, name, created_at, expires_at, uses_left)
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(t.hash.as_slice())
        .bind(t.identity.env.as_str())
        .bind(t.identity.name.as_str())
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.uses_left as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_join_token(
        &self,
        hash: &[u8; 32],
    ) -> Result<Option<JoinTokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT env, name, created_at, expires_at, uses_left FROM join_tokens
             WHERE token_hash = ?",
        )
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| rows::join_token(&row, *hash)).transpose()
    }

    async fn consume_join_token(&self, hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE join_tokens SET uses_left = uses_left - 1
             WHERE token_hash = ? AND uses_left > 0 AND expires_at > ?",
        )
        .bind(hash.as_slice())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn purge_join_tokens(&self, before: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM join_tokens WHERE expires_at < ?")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn jti_spent(&self, attestor: &str, jti: &str, now: i64) -> Result<bool, StoreError> {
        attestation::jti_spent(&self.pool, attestor, jti, now).await
    }

    async fn spend_jti(
        &self,
        attestor: &str,
        jti: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        attestation::spend_jti(&self.pool, attestor, jti, expires_at, now).await
    }

    async fn purge_jtis(&self, now: i64) -> Result<u64, StoreError> {
        attestation::purge_jtis(&self.pool, now).await
    }

    async fn instance_key(
        &self,
        attestor: &str,
        instance_id: &str,
    ) -> Result<Option<String>, StoreError> {
        attestation::instance_key(&self.pool, attestor, instance_id).await
    }

    async fn bind_instance(
        &self,
        attestor: &str,
        instance_id: &str,
        key_sha256: &str,
        now: i64,
    ) -> Result<String, StoreError> {
        attestation::bind_instance(&self.pool, attestor, instance_id, key_sha256, now).await
    }

    async fn append_audit(
        &self,
        entries: &[AuditEntry],
        chain: &ChainKey,
    ) -> Result<(i64, [u8; 32]), StoreError> {
        self.appender.append(&self.heads, entries, chain).await
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
        audit::query_audit(&self.pool, &self.heads, f).await
    }

    async fn outstanding_credentials(
        &self,
        now: i64,
        identity: Option<&str>,
    ) -> Result<Vec<OutstandingCredential>, StoreError> {
        audit::outstanding_credentials(&self.pool, &self.heads, now, identity).await
    }

    async fn issued_certificates(
        &self,
        query: &CertQuery<'_>,
        now: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        audit::issued_certificates(&self.pool, &self.heads, query, now).await
    }

    async fn insert_revocation(&self, rev: &NewRevocation) -> Result<i64, StoreError> {
        revocations::insert_revocation(&self.pool, rev).await
    }

    async fn live_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        revocations::live_revocations(&self.pool, now).await
    }

    async fn revocations_after(&self, after: i64) -> Result<Vec<Revocation>, StoreError> {
        revocations::revocations_after(&self.pool, after).await
    }

    async fn purge_revocations(&self, now: i64) -> Result<u64, StoreError> {
        revocations::purge_revocations(&self.pool, now).await
    }

    async fn latest_revocation_seq(&self) -> Result<i64, StoreError> {
        revocations::latest_seq(&self.pool).await
    }

    async fn insert_operator(&self, op: &OperatorRecord) -> Result<(), StoreError> {
        operators::insert_operator(&self.pool, op).await
    }

    async fn list_operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        operators::list_operators(&self.pool).await
    }

    async fn revoke_operator(
        &self,
        serial: &str,
        at: i64,
        by: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        operators::revoke_operator(&self.pool, serial, at, by, reason).await
    }

    async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        changes::after(&self.pool, after, limit).await
    }

    async fn latest_change(&self) -> Result<i64, StoreError> {
        changes::latest(&self.pool).await
    }

    async fn purge_changes(&self, before_ms: i64) -> Result<u64, StoreError> {
        changes::purge(&self.pool, before_ms).await
    }

    async fn change_signal(&self) -> Result<Option<Box<dyn ChangeSignal>>, StoreError> {
        // One broker per SQLite file (the data directory lock): nothing
        // changes behind its back.
        Ok(None)
    }

    async fn bootstrap_lock(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock::sole())
    }

    async fn try_lead(&self) -> Result<Option<StoreLock>, StoreError> {
        Ok(Some(StoreLock::sole()))
    }
}

#[cfg(test)]
mod tests;
