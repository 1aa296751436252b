//! Keys, revocations, operators and attestation state in PostgreSQL.
//! Writes that others cache take the caller's transaction, which already
//! holds the change lock and recorded the change.

use sqlx::{PgPool, Postgres, Transaction};

use crate::revocation::Revocation;
use crate::store::rows::{self, KEY_COLUMNS, to_json};
use crate::store::{KeyKind, KeyRecord, KeyRetirement, NewRevocation, OperatorRecord, StoreError};

pub(super) async fn latest_key(
    pool: &PgPool,
    env: &str,
    kind: KeyKind,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM key_material WHERE env = $1 AND kind = $2
         ORDER BY id DESC LIMIT 1"
    )))
    .bind(env)
    .bind(kind.as_str())
    .fetch_optional(pool)
    .await?;
    row.map(|row| rows::key(&row, kind)).transpose()
}

pub(super) async fn list_keys(
    pool: &PgPool,
    env: &str,
    kind: KeyKind,
) -> Result<Vec<KeyRecord>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM key_material WHERE env = $1 AND kind = $2 ORDER BY id"
    )))
    .bind(env)
    .bind(kind.as_str())
    .fetch_all(pool)
    .await?;
    rows.iter().map(|row| rows::key(row, kind)).collect()
}

pub(super) async fn insert_key(
    tx: &mut Transaction<'_, Postgres>,
    key: &KeyRecord,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO key_material
             (env, kind, created_at, activates_at, not_after, key_id, cert_der, sealed_key)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&key.env)
    .bind(key.kind.as_str())
    .bind(key.created_at)
    .bind(key.activates_at)
    .bind((key.not_after != i64::MAX).then_some(key.not_after))
    .bind(&key.key_id)
    .bind(&key.cert_der)
    .bind(&key.sealed_key)
    .fetch_one(&mut **tx)
    .await?)
}

pub(super) async fn retire_key(
    tx: &mut Transaction<'_, Postgres>,
    r: &KeyRetirement,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE key_material SET retired_at = $1, unpublish_at = $2, retire_reason = $3
         WHERE id = $4 AND retired_at IS NULL",
    )
    .bind(r.retired_at)
    .bind(r.unpublish_at)
    .bind(&r.reason)
    .bind(r.id)
    .execute(&mut **tx)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("unretired key #{}", r.id)));
    }
    Ok(())
}

pub(super) async fn key_sequence(
    pool: &PgPool,
    env: &str,
    fingerprint: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO key_sequence (env, seq, fingerprint) VALUES ($1, 1, $2)
         ON CONFLICT (env) DO UPDATE SET
             seq = CASE WHEN key_sequence.fingerprint = excluded.fingerprint
                        THEN key_sequence.seq ELSE key_sequence.seq + 1 END,
             fingerprint = excluded.fingerprint
         RETURNING seq",
    )
    .bind(env)
    .bind(fingerprint)
    .fetch_one(pool)
    .await?)
}

pub(super) async fn insert_revocation(
    tx: &mut Transaction<'_, Postgres>,
    rev: &NewRevocation,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO revocations
             (kind, value, reason, operator, revoked_at, covers_until, identities)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
    )
    .bind(rev.target.kind())
    .bind(rev.target.value())
    .bind(&rev.reason)
    .bind(&rev.operator)
    .bind(rev.revoked_at)
    .bind(rev.covers_until)
    .bind(to_json(&rev.identities))
    .fetch_one(&mut **tx)
    .await?)
}

/// Revocations matching `condition` (one `$1` bound to `value`), in order.
pub(super) async fn revocations_where(
    pool: &PgPool,
    condition: &'static str,
    value: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM revocations WHERE {condition} ORDER BY seq"
    )))
    .bind(value)
    .fetch_all(pool)
    .await?;
    rows.iter().map(rows::revocation).collect()
}

pub(super) async fn insert_operator(
    tx: &mut Transaction<'_, Postgres>,
    op: &OperatorRecord,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO operators (serial, name, role, created_at, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&op.serial)
    .bind(&op.name)
    .bind(op.role.as_str())
    .bind(op.created_at)
    .bind(op.expires_at)
    .bind(&op.created_by)
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::AlreadyExists(
            format!("operator certificate {}", op.serial),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn revoke_operator(
    tx: &mut Transaction<'_, Postgres>,
    serial: &str,
    at: i64,
    by: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE operators SET revoked_at = $1, revoked_by = $2, revoke_reason = $3
         WHERE serial = $4 AND revoked_at IS NULL",
    )
    .bind(at)
    .bind(by)
    .bind(reason)
    .bind(serial)
    .execute(&mut **tx)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "unrevoked operator certificate {serial}"
        )));
    }
    Ok(())
}

pub(super) async fn jti_spent(
    pool: &PgPool,
    attestor: &str,
    jti: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM used_jtis WHERE attestor = $1 AND jti = $2 AND expires_at > $3",
    )
    .bind(attestor)
    .bind(jti)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

pub(super) async fn spend_jti(
    pool: &PgPool,
    attestor: &str,
    jti: &str,
    expires_at: i64,
    now: i64,
) -> Result<bool, StoreError> {
    // Inserts, or takes over a row whose token has expired; a live row
    // means another request (on any broker) spent it first.
    let result = sqlx::query(
        "INSERT INTO used_jtis (attestor, jti, expires_at) VALUES ($1, $2, $3)
         ON CONFLICT (attestor, jti) DO UPDATE SET expires_at = excluded.expires_at
         WHERE used_jtis.expires_at <= $4",
    )
    .bind(attestor)
    .bind(jti)
    .bind(expires_at)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn purge_jtis(pool: &PgPool, now: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM used_jtis WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

pub(super) async fn instance_key(
    pool: &PgPool,
    attestor: &str,
    instance_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT key_sha256 FROM attested_instances WHERE attestor = $1 AND instance_id = $2",
    )
    .bind(attestor)
    .bind(instance_id)
    .fetch_optional(pool)
    .await?)
}

pub(super) async fn bind_instance(
    pool: &PgPool,
    attestor: &str,
    instance_id: &str,
    key_sha256: &str,
    now: i64,
) -> Result<String, StoreError> {
    // Insert-or-keep, then read what won: two brokers attesting one
    // instance at once both see the first key.
    let mut tx = pool.begin().await?;
    let result = bind_in(&mut tx, attestor, instance_id, key_sha256, now).await;
    super::finish(tx, result).await
}

async fn bind_in(
    tx: &mut Transaction<'_, Postgres>,
    attestor: &str,
    instance_id: &str,
    key_sha256: &str,
    now: i64,
) -> Result<String, StoreError> {
    sqlx::query(
        "INSERT INTO attested_instances (attestor, instance_id, key_sha256, first_seen)
         VALUES ($1, $2, $3, $4) ON CONFLICT (attestor, instance_id) DO NOTHING",
    )
    .bind(attestor)
    .bind(instance_id)
    .bind(key_sha256)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT key_sha256 FROM attested_instances WHERE attestor = $1 AND instance_id = $2",
    )
    .bind(attestor)
    .bind(instance_id)
    .fetch_one(&mut **tx)
    .await?)
}
