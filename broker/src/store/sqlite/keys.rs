//! The key_material and key_sequence tables.

use sqlx::{Row, SqlitePool};

use crate::store::{KeyKind, KeyRecord, KeyRetirement, StoreError};

const COLUMNS: &str = "id, env, created_at, activates_at, not_after, retired_at, unpublish_at,
     retire_reason, key_id, cert_der, sealed_key";

fn from_row(row: &sqlx::sqlite::SqliteRow, kind: KeyKind) -> Result<KeyRecord, StoreError> {
    let created_at: i64 = row.try_get("created_at")?;
    Ok(KeyRecord {
        id: row.try_get("id")?,
        env: row.try_get("env")?,
        kind,
        created_at,
        // Rows from before rotation: active since creation, never expiring.
        activates_at: row
            .try_get::<Option<i64>, _>("activates_at")?
            .unwrap_or(created_at),
        not_after: row
            .try_get::<Option<i64>, _>("not_after")?
            .unwrap_or(i64::MAX),
        retired_at: row.try_get("retired_at")?,
        unpublish_at: row.try_get("unpublish_at")?,
        retire_reason: row.try_get("retire_reason")?,
        key_id: row.try_get("key_id")?,
        cert_der: row.try_get("cert_der")?,
        sealed_key: row.try_get("sealed_key")?,
    })
}

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
    row.map(|row| from_row(&row, kind)).transpose()
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
    rows.iter().map(|row| from_row(row, kind)).collect()
}

pub(super) async fn insert_key(pool: &SqlitePool, key: &KeyRecord) -> Result<i64, StoreError> {
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
    .execute(pool)
    .await?;
    Ok(result.last_insert_rowid())
}

pub(super) async fn retire_key(pool: &SqlitePool, r: &KeyRetirement) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE key_material SET retired_at = ?, unpublish_at = ?, retire_reason = ?
         WHERE id = ? AND retired_at IS NULL",
    )
    .bind(r.retired_at)
    .bind(r.unpublish_at)
    .bind(&r.reason)
    .bind(r.id)
    .execute(pool)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("unretired key #{}", r.id)));
    }
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
