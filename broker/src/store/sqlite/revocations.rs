//! The revocations table.

use sqlx::{Row, SqlitePool};

use super::{ChangeKind, changes, to_json};
use crate::revocation::Revocation;
use crate::store::rows;
use crate::store::{NewRevocation, StoreError};

pub(super) async fn insert_revocation(
    pool: &SqlitePool,
    rev: &NewRevocation,
) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
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
    .execute(&mut *tx)
    .await?;
    let seq = result.last_insert_rowid();
    changes::record(&mut tx, ChangeKind::Revocation, &seq.to_string()).await?;
    tx.commit().await?;
    Ok(seq)
}

/// AUTOINCREMENT keeps the highest `seq` ever used in `sqlite_sequence`,
/// even after the row is purged.
pub(super) async fn latest_seq(pool: &SqlitePool) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT seq FROM sqlite_sequence WHERE name = 'revocations'")
        .fetch_optional(pool)
        .await?;
    Ok(match row {
        Some(row) => row.try_get("seq")?,
        None => 0,
    })
}

pub(super) async fn live_revocations(
    pool: &SqlitePool,
    now: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM revocations WHERE covers_until >= ? ORDER BY seq")
        .bind(now)
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::revocation).collect()
}

pub(super) async fn revocations_after(
    pool: &SqlitePool,
    after: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM revocations WHERE seq > ? ORDER BY seq")
        .bind(after)
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::revocation).collect()
}

pub(super) async fn purge_revocations(pool: &SqlitePool, now: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM revocations WHERE covers_until < ?")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
