//! Attestation state: spent single-use `jti`s and AWS instance bindings.

use sqlx::SqlitePool;

use crate::store::StoreError;

pub(super) async fn jti_spent(
    pool: &SqlitePool,
    attestor: &str,
    jti: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM used_jtis WHERE attestor = ? AND jti = ? AND expires_at > ?",
    )
    .bind(attestor)
    .bind(jti)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

pub(super) async fn spend_jti(
    pool: &SqlitePool,
    attestor: &str,
    jti: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    // Inserts, or takes over a row whose token has expired; a live row
    // means another request spent it first.
    let result = sqlx::query(
        "INSERT INTO used_jtis (attestor, jti, expires_at) VALUES (?, ?, ?)
         ON CONFLICT (attestor, jti) DO UPDATE SET expires_at = excluded.expires_at
         WHERE used_jtis.expires_at <= ?",
    )
    .bind(attestor)
    .bind(jti)
    .bind(expires_at)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn purge_jtis(pool: &SqlitePool, now: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM used_jtis WHERE expires_at <= ?")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

pub(super) async fn instance_key(
    pool: &SqlitePool,
    attestor: &str,
    instance_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT key_sha256 FROM attested_instances WHERE attestor = ? AND instance_id = ?",
    )
    .bind(attestor)
    .bind(instance_id)
    .fetch_optional(pool)
    .await?)
}

pub(super) async fn bind_instance(
    pool: &SqlitePool,
    attestor: &str,
    instance_id: &str,
    key_sha256: &str,
    now: i64,
) -> Result<String, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO attested_instances (attestor, instance_id, key_sha256, first_seen)
         VALUES (?, ?, ?, ?) ON CONFLICT (attestor, instance_id) DO NOTHING",
    )
    .bind(attestor)
    .bind(instance_id)
    .bind(key_sha256)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let bound: String = sqlx::query_scalar(
        "SELECT key_sha256 FROM attested_instances WHERE attestor = ? AND instance_id = ?",
    )
    .bind(attestor)
    .bind(instance_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(bound)
}
