//! The change feed table (see [`crate::store::Change`]).

use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::store::{Change, ChangeKind, StoreError};

/// Records a change inside the transaction that makes it.
pub(super) async fn record(
    tx: &mut Transaction<'_, Sqlite>,
    kind: ChangeKind,
    key: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO changes (kind, key, at_ms) VALUES (?, ?, ?)")
        .bind(kind.as_str())
        .bind(key)
        .bind(crate::model::unix_now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn after(
    pool: &SqlitePool,
    after: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query("SELECT seq, kind, key FROM changes WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(crate::store::rows::change).collect()
}

pub(super) async fn latest(pool: &SqlitePool) -> Result<i64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
        .fetch_one(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

pub(super) async fn purge(pool: &SqlitePool, before_ms: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM changes WHERE at_ms < ?")
        .bind(before_ms)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}
