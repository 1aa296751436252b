//! The embedded SQLite store (the default).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::{
    IssuedCert, JoinTokenRecord, KeyKind, KeyRecord, NewRevocation, Store, StoreError, UsageUpdate,
};
use crate::audit::{AuditEntry, AuditFilter, ChainedEntry};
use crate::model::{
    Audience, EnvName, Identity, IdentityKey, IdentityName, Scope, Selector, SpiffeId,
};
use crate::revocation::{Revocation, Target};

/// Schema steps, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_audit.sql"),
    include_str!("../../migrations/sqlite/0003_revocations.sql"),
];

/// SQLite-backed [`Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `url`
    /// (`sqlite://PATH`).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *tx)
            .await?;
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
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn identity_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Identity, StoreError> {
    let env: String = row.try_get("env")?;
    let name: String = row.try_get("name")?;
    let json = |col: &str| -> Result<String, StoreError> { Ok(row.try_get::<String, _>(col)?) };
    let audiences: Vec<String> = serde_json::from_str(&json("audiences")?).map_err(corrupt)?;
    let scopes: Vec<String> = serde_json::from_str(&json("scopes")?).map_err(corrupt)?;
    let selectors: Vec<Selector> = serde_json::from_str(&json("selectors")?).map_err(corrupt)?;
    let spiffe_id: String = row.try_get("spiffe_id")?;
    Ok(Identity {
        key: IdentityKey {
            env: EnvName::new(&env).map_err(corrupt)?,
            name: IdentityName::new(&name).map_err(corrupt)?,
        },
        spiffe_id: SpiffeId::parse(&spiffe_id).map_err(corrupt)?,
        owner: row.try_get("owner")?,
        purpose: row.try_get("purpose")?,
        selectors,
        audiences: audiences
            .iter()
            .map(|a| Audience::new(a))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(corrupt)?,
        scopes: scopes
            .iter()
            .map(|s| Scope::new(s))
            .collect::<Result<BTreeSet<_>, _>>()
            .map_err(corrupt)?,
        jwt_ttl: Duration::from_secs(row.try_get::<i64, _>("jwt_ttl_seconds")? as u64),
        x509_ttl: Duration::from_secs(row.try_get::<i64, _>("x509_ttl_seconds")? as u64),
        expires_at: row.try_get("expires_at")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        retired_at: row.try_get("retired_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_issued_at: row.try_get("last_issued_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a (impl AsRef<str> + 'a)>) -> Vec<&'a str> {
    items.into_iter().map(AsRef::as_ref).collect()
}

fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt("audit hash is not 32 bytes"))
}

fn audit_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ChainedEntry, StoreError> {
    Ok(ChainedEntry {
        seq: row.try_get("seq")?,
        entry: AuditEntry {
            at_ms: row.try_get("at_ms")?,
            action: row.try_get("action")?,
            decision: row.try_get("decision")?,
            actor: row.try_get("actor")?,
            peer: row.try_get("peer")?,
            identity: row.try_get("identity")?,
            env: row.try_get("env")?,
            credential: row.try_get("credential")?,
            jti: row.try_get("jti")?,
            serial: row.try_get("serial")?,
            expires_at: row.try_get("expires_at")?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
            evidence: row.try_get("evidence")?,
        },
        prev_hash: hash32(row.try_get("prev_hash")?)?,
        hash: hash32(row.try_get("hash")?)?,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn latest_key(&self, env: &str, kind: KeyKind) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT created_at, cert_der, sealed_key FROM key_material
             WHERE env = ? AND kind = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(env)
        .bind(kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(KeyRecord {
                env: env.to_owned(),
                kind,
                created_at: row.try_get("created_at")?,
                cert_der: row.try_get("cert_der")?,
                sealed_key: row.try_get("sealed_key")?,
            })
        })
        .transpose()
    }

    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO key_material (env, kind, created_at, cert_der, sealed_key)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.env)
        .bind(key.kind.as_str())
        .bind(key.created_at)
        .bind(&key.cert_der)
        .bind(&key.sealed_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        let rows = sqlx::query("SELECT * FROM identities ORDER BY env, name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(identity_from_row).collect()
    }

    async fn insert_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO identities (env, name, spiffe_id, owner, purpose, selectors, audiences,
                 scopes, jwt_ttl_seconds, x509_ttl_seconds, expires_at, enabled, retired_at,
                 created_at, updated_at, last_issued_at, last_seen_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::AlreadyExists(format!("identity {}", id.key)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update_identity(&self, id: &Identity) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE identities SET owner = ?, purpose = ?, selectors = ?, audiences = ?,
                 scopes = ?, jwt_ttl_seconds = ?, x509_ttl_seconds = ?, expires_at = ?,
                 enabled = ?, retired_at = ?, updated_at = ?
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
        .bind(id.key.env.as_str())
        .bind(id.key.name.as_str())
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("identity {}", id.key)));
        }
        Ok(())
    }

    async fn record_usage(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for u in updates {
            sqlx::query(
                "UPDATE identities SET
                     last_issued_at = MAX(COALESCE(last_issued_at, 0), COALESCE(?, 0)),
                     last_seen_at = MAX(COALESCE(last_seen_at, 0), COALESCE(?, 0))
                 WHERE env = ? AND name = ?",
            )
            .bind(u.last_issued_at)
            .bind(u.last_seen_at)
            .bind(u.identity.env.as_str())
            .bind(u.identity.name.as_str())
            .execute(&mut *tx)
            .await?;
        }
        // Zero means "never"; keep NULL for identities without usage.
        sqlx::query("UPDATE identities SET last_issued_at = NULL WHERE last_issued_at = 0")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE identities SET last_seen_at = NULL WHERE last_seen_at = 0")
            .execute(&mut *tx)
            .await?;
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
        row.map(|row| {
            let env: String = row.try_get("env")?;
            let name: String = row.try_get("name")?;
            Ok(JoinTokenRecord {
                hash: *hash,
                identity: IdentityKey {
                    env: EnvName::new(&env).map_err(corrupt)?,
                    name: IdentityName::new(&name).map_err(corrupt)?,
                },
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                uses_left: row.try_get::<i64, _>("uses_left")?.max(0) as u32,
            })
        })
        .transpose()
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

    async fn append_audit(&self, entries: &[ChainedEntry]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for c in entries {
            let e = &c.entry;
            sqlx::query(
                "INSERT INTO audit_log (seq, at_ms, action, decision, actor, peer, identity, env,
                     credential, jti, serial, expires_at, reason, detail, evidence, prev_hash, hash)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(c.seq)
            .bind(e.at_ms)
            .bind(&e.action)
            .bind(&e.decision)
            .bind(&e.actor)
            .bind(&e.peer)
            .bind(&e.identity)
            .bind(&e.env)
            .bind(&e.credential)
            .bind(&e.jti)
            .bind(&e.serial)
            .bind(e.expires_at)
            .bind(&e.reason)
            .bind(&e.detail)
            .bind(&e.evidence)
            .bind(c.prev_hash.as_slice())
            .bind(c.hash.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn audit_head(&self) -> Result<Option<(i64, [u8; 32])>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("seq")?, hash32(row.try_get("hash")?)?)))
            .transpose()
    }

    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<ChainedEntry>, StoreError> {
        let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn query_audit(&self, f: &AuditFilter) -> Result<Vec<ChainedEntry>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new("SELECT * FROM audit_log WHERE 1 = 1");
        let columns = [
            (" AND identity = ", &f.identity),
            (" AND jti = ", &f.jti),
            (" AND serial = ", &f.serial),
            (" AND actor = ", &f.actor),
            (" AND env = ", &f.env),
        ];
        for (clause, value) in columns {
            if let Some(v) = value {
                q.push(clause).push_bind(v.clone());
            }
        }
        if let Some(since) = f.since_ms {
            q.push(" AND at_ms >= ").push_bind(since);
        }
        if let Some(until) = f.until_ms {
            q.push(" AND at_ms < ").push_bind(until);
        }
        q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn outstanding_credentials(&self, now: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT identity, COUNT(*) AS n FROM audit_log
             WHERE decision = 'issued' AND expires_at > ? AND identity IS NOT NULL
             GROUP BY identity",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("identity")?, r.try_get("n")?)))
            .collect()
    }

    async fn issued_certificates(
        &self,
        env: &str,
        now: i64,
    ) -> Result<Vec<IssuedCert>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, identity, at_ms, expires_at FROM audit_log
             WHERE decision = 'issued' AND credential = 'x509-svid' AND env = ?
               AND expires_at > ? AND serial IS NOT NULL AND identity IS NOT NULL",
        )
        .bind(env)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(IssuedCert {
                    serial: r.try_get("serial")?,
                    identity: r.try_get("identity")?,
                    issued_at: r.try_get::<i64, _>("at_ms")? / 1000,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .collect()
    }

    async fn insert_revocation(&self, rev: &NewRevocation) -> Result<i64, StoreError> {
        let result = sqlx::query(
            "INSERT INTO revocations
                 (kind, value, reason, operator, revoked_at, covers_until, identities)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(rev.target.kind())
        .bind(rev.target.value())
        .bind(&rev.reason)
        .bind(&rev.operator)
        .bind(rev.revoked_at)
        .bind(rev.covers_until)
        .bind(to_json(&rev.identities))
        .execute(&self.pool)
        .await?;
        Ok(result.last_insert_rowid())
    }

    async fn live_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        let rows = sqlx::query("SELECT * FROM revocations WHERE covers_until >= ? ORDER BY seq")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let kind: String = r.try_get("kind")?;
                let value: String = r.try_get("value")?;
                let identities: String = r.try_get("identities")?;
                Ok(Revocation {
                    seq: r.try_get("seq")?,
                    target: Target::parse(&kind, &value).map_err(corrupt)?,
                    reason: r.try_get("reason")?,
                    operator: r.try_get("operator")?,
                    revoked_at: r.try_get("revoked_at")?,
                    covers_until: r.try_get("covers_until")?,
                    identities: serde_json::from_str(&identities).map_err(corrupt)?,
                })
            })
            .collect()
    }

    async fn purge_revocations(&self, now: i64) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM revocations WHERE covers_until < ?")
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_identity;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        (dir, SqliteStore::open(&url).await.unwrap())
    }

    #[tokio::test]
    async fn identities_round_trip_and_conflict() {
        let (_dir, store) = store().await;
        let mut id = test_identity();
        store.insert_identity(&id).await.unwrap();
        assert!(matches!(
            store.insert_identity(&id).await,
            Err(StoreError::AlreadyExists(_))
        ));
        id.enabled = false;
        store.update_identity(&id).await.unwrap();
        store
            .record_usage(&[UsageUpdate {
                identity: id.key.clone(),
                last_issued_at: Some(50),
                last_seen_at: Some(60),
            }])
            .await
            .unwrap();
        // Usage never moves backwards.
        store
            .record_usage(&[UsageUpdate {
                identity: id.key.clone(),
                last_issued_at: Some(10),
                last_seen_at: None,
            }])
            .await
            .unwrap();
        let loaded = store.list_identities().await.unwrap();
        id.last_issued_at = Some(50);
        id.last_seen_at = Some(60);
        assert_eq!(loaded, vec![id]);
    }

    #[tokio::test]
    async fn join_tokens_are_consumed_once_and_purged_after_expiry() {
        let (_dir, store) = store().await;
        let id = test_identity();
        store.insert_identity(&id).await.unwrap();
        let token = JoinTokenRecord {
            hash: [7; 32],
            identity: id.key.clone(),
            created_at: 100,
            expires_at: 200,
            uses_left: 1,
        };
        store.insert_join_token(&token).await.unwrap();
        assert_eq!(store.find_join_token(&[7; 32]).await.unwrap(), Some(token));
        assert!(
            !store.consume_join_token(&[7; 32], 200).await.unwrap(),
            "expired"
        );
        assert!(store.consume_join_token(&[7; 32], 150).await.unwrap());
        assert!(
            !store.consume_join_token(&[7; 32], 150).await.unwrap(),
            "spent"
        );
        assert_eq!(store.purge_join_tokens(200).await.unwrap(), 0);
        assert_eq!(store.purge_join_tokens(201).await.unwrap(), 1);
        assert_eq!(store.find_join_token(&[7; 32]).await.unwrap(), None);
    }
}
