//! The key_material and key_sequence tables.

use sqlx::SqlitePool;

use super::{ChangeKind, changes};
use crate::store::rows::{self, KEY_COLUMNS as COLUMNS};
use crate::store::{KeyKind, KeyRecord, KeyRetirement, StoreError};

pub(super) async fn latest_key(
    pool: &SqlitePool,
    env: &str,
    kind: KeyKind,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM key_material WHERE env = ? AND kind = ? ORDER BY id DESC LIMIT 1"
    )))
    .bind(env)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|row| rows::key(&row, kind)).transpose()
}

pub(super) async fn list_keys(
    pool: &SqlitePool,
    env: &str,
    kind: KeyKind,
) -> Result<Vec<KeyRecord>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM key_material WHERE env = ? AND kind = ? ORDER BY id"
    )))
    .bind(env)
    .bind(kind.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter().map(|row| rows::key(row, kind)).collect()
}

pub(super) async fn insert_key(pool: &SqlitePool, key: &KeyRecord) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "INSERT INTO key_material
             (env, kind, created_at, activates_at, not_after, key_id, cert_der, sealed_key)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&key.env)
    .bind(key.kind.as_str())
    .bind(key.created_at)
    .bind(key.activates_at)
    .bind((key.not_after != i64::MAX).then_some(key.not_after))
    .bind(&key.key_id)
    .bind(&key.cert_der)
    .bind(&key.sealed_key)
    .execute(&mut *tx)
    .await?;
    changes::record(&mut tx, ChangeKind::Keys, &key.env).await?;
    tx.commit().await?;
    Ok(result.last_insert_rowid())
}

pub(super) async fn retire_key(pool: &SqlitePool, r: &KeyRetirement) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "UPDATE key_material SET retired_at = ?, unpublish_at = ?, retire_reason = ?
         WHERE id = ? AND retired_at IS NULL",
    )
    .bind(r.retired_at)
    .bind(r.unpublish_at)
    .bind(&r.reason)
    .bind(r.id)
    .execute(&mut *tx)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("unretired key #{}", r.id)));
    }
    let env: String = sqlx::query_scalar("SELECT env FROM key_material WHERE id = ?")
        .bind(r.id)
        .fetch_one(&mut *tx)
        .await?;
    changes::record(&mut tx, ChangeKind::Keys, &env).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn key_sequence(
    pool: &SqlitePool,
    env: &str,
    fingerprint: &str,
) -> Result<i64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO key_sequence (env, seq, fingerprint) VALUES (?, 1, ?)
         ON CONFLICT (env) DO UPDATE SET
             seq = CASE WHEN fingerprint = excluded.fingerprint THEN seq ELSE seq + 1 END,
             fingerprint = excluded.fingerprint
         RETURNING seq",
    )
    .bind(env)
    .bind(fingerprint)
    .fetch_one(pool)
    .await?;
    Ok(seq)
}
