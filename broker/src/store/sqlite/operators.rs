//! The operators table.

use sqlx::SqlitePool;

use super::{ChangeKind, changes};
use crate::store::rows;
use crate::store::{OperatorRecord, StoreError};

pub(super) async fn insert_operator(
    pool: &SqlitePool,
    op: &OperatorRecord,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "INSERT INTO operators (serial, name, role, created_at, expires_at, created_by)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&op.serial)
    .bind(&op.name)
    .bind(op.role.as_str())
    .bind(op.created_at)
    .bind(op.expires_at)
    .bind(&op.created_by)
    .execute(&mut *tx)
    .await;
    match result {
        Ok(_) => {}
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            return Err(StoreError::AlreadyExists(format!(
                "operator certificate {}",
                op.serial
            )));
        }
        Err(e) => return Err(e.into()),
    }
    changes::record(&mut tx, ChangeKind::Operator, &op.serial).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_operators(pool: &SqlitePool) -> Result<Vec<OperatorRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM operators ORDER BY name, created_at")
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::operator).collect()
}

pub(super) async fn revoke_operator(
    pool: &SqlitePool,
    serial: &str,
    at: i64,
    by: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let result = sqlx::query(
        "UPDATE operators SET revoked_at = ?, revoked_by = ?, revoke_reason = ?
         WHERE serial = ? AND revoked_at IS NULL",
    )
    .bind(at)
    .bind(by)
    .bind(reason)
    .bind(serial)
    .execute(&mut *tx)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "unrevoked operator certificate {serial}"
        )));
    }
    changes::record(&mut tx, ChangeKind::Operator, serial).await?;
    tx.commit().await?;
    Ok(())
}
