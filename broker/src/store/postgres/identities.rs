//! Identities and join tokens in PostgreSQL. Identity writes take the
//! caller's transaction, which holds the change lock and recorded the
//! change.

use sqlx::{PgPool, Postgres, Transaction};

use crate::model::Identity;
use crate::store::rows::{self, cidr_strings, strings, to_json};
use crate::store::{JoinTokenRecord, StoreError, UsageUpdate};

pub(super) async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    id: &Identity,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO identities (env, name, spiffe_id, owner, purpose, selectors, audiences,
             scopes, jwt_ttl_seconds, x509_ttl_seconds, expires_at, enabled, retired_at,
             created_at, updated_at, last_issued_at, last_seen_at, parent, allow_cidrs,
             require_binding, on_anomaly)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
             $17, $18, $19, $20, $21)",
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
    .execute(&mut **tx)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(StoreError::AlreadyExists(format!("identity {}", id.key)))
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn update(
    tx: &mut Transaction<'_, Postgres>,
    id: &Identity,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE identities SET owner = $1, purpose = $2, selectors = $3, audiences = $4,
             scopes = $5, jwt_ttl_seconds = $6, x509_ttl_seconds = $7, expires_at = $8,
             enabled = $9, retired_at = $10, updated_at = $11, allow_cidrs = $12,
             require_binding = $13, on_anomaly = $14
         WHERE env = $15 AND name = $16",
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
    .execute(&mut **tx)
    .await;
    match result {
        Ok(done) if done.rows_affected() == 0 => {
            Err(StoreError::NotFound(format!("identity {}", id.key)))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn record_usage(pool: &PgPool, updates: &[UsageUpdate]) -> Result<(), StoreError> {
    if updates.is_empty() {
        return Ok(());
    }
    // One statement for the whole batch: usage is flushed every second
    // by every broker, and must not cost a round trip per identity.
    let envs: Vec<&str> = updates.iter().map(|u| u.identity.env.as_str()).collect();
    let names: Vec<&str> = updates.iter().map(|u| u.identity.name.as_str()).collect();
    let issued: Vec<Option<i64>> = updates.iter().map(|u| u.last_issued_at).collect();
    let seen: Vec<Option<i64>> = updates.iter().map(|u| u.last_seen_at).collect();
    sqlx::query(
        "UPDATE identities AS i SET
             last_issued_at = NULLIF(GREATEST(COALESCE(i.last_issued_at, 0),
                                              COALESCE(u.issued, 0)), 0),
             last_seen_at = NULLIF(GREATEST(COALESCE(i.last_seen_at, 0),
                                            COALESCE(u.seen, 0)), 0)
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[])
              AS u(env, name, issued, seen)
         WHERE i.env = u.env AND i.name = u.name",
    )
    .bind(&envs)
    .bind(&names)
    .bind(&issued)
    .bind(&seen)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn insert_join_token(
    pool: &PgPool,
    t: &JoinTokenRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO join_tokens (token_hash, env, name, created_at, expires_at, uses_left)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(t.hash.as_slice())
    .bind(t.identity.env.as_str())
    .bind(t.identity.name.as_str())
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.uses_left as i64)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn find_join_token(
    pool: &PgPool,
    hash: &[u8; 32],
) -> Result<Option<JoinTokenRecord>, StoreError> {
    let row = sqlx::query(
        "SELECT env, name, created_at, expires_at, uses_left FROM join_tokens
         WHERE token_hash = $1",
    )
    .bind(hash.as_slice())
    .fetch_optional(pool)
    .await?;
    row.map(|row| rows::join_token(&row, *hash)).transpose()
}

pub(super) async fn consume_join_token(
    pool: &PgPool,
    hash: &[u8; 32],
    now: i64,
) -> Result<bool, StoreError> {
    // One conditional UPDATE: two brokers spending the last use race
    // on the row lock, and the second sees uses_left = 0.
    let result = sqlx::query(
        "UPDATE join_tokens SET uses_left = uses_left - 1
         WHERE token_hash = $1 AND uses_left > 0 AND expires_at > $2",
    )
    .bind(hash.as_slice())
    .bind(now)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn purge_join_tokens(pool: &PgPool, before: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
        .bind(before)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
