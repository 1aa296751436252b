//! The operators table.

use sqlx::{Row, SqlitePool};

use super::corrupt;
use crate::policy::roles::Role;
use crate::store::{OperatorRecord, StoreError};

pub(super) async fn insert_operator(
    pool: &SqlitePool,
    op: &OperatorRecord,
) -> Result<(), StoreError> {
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
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::AlreadyExists(
            format!("operator certificate {}", op.serial),
        )),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list_operators(pool: &SqlitePool) -> Result<Vec<OperatorRecord>, StoreError> {
    let rows = sqlx::query("SELECT * FROM operators ORDER BY name, created_at")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let role: String = row.try_get("role")?;
            Ok(OperatorRecord {
                serial: row.try_get("serial")?,
                name: row.try_get("name")?,
                role: Role::parse(&role).map_err(corrupt)?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                created_by: row.try_get("created_by")?,
                revoked_at: row.try_get("revoked_at")?,
                revoked_by: row.try_get("revoked_by")?,
                revoke_reason: row.try_get("revoke_reason")?,
            })
        })
        .collect()
}

pub(super) async fn revoke_operator(
    pool: &SqlitePool,
    serial: &str,
    at: i64,
    by: &str,
    reason: &str,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE operators SET revoked_at = ?, revoked_by = ?, revoke_reason = ?
         WHERE serial = ? AND revoked_at IS NULL",
    )
    .bind(at)
    .bind(by)
    .bind(reason)
    .bind(serial)
    .execute(pool)
    .await?;
    if result.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "unrevoked operator certificate {serial}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::policy::roles::Role;
    use crate::store::{OperatorRecord, SqliteStore, Store, StoreError};

    #[tokio::test]
    async fn operators_round_trip_and_revoke_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let op = OperatorRecord {
            serial: "4A".into(),
            name: "alice".into(),
            role: Role::Auditor,
            created_at: 10,
            expires_at: 100,
            created_by: "admin".into(),
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
        };
        store.insert_operator(&op).await.unwrap();
        assert!(matches!(
            store.insert_operator(&op).await,
            Err(StoreError::AlreadyExists(_))
        ));
        store
            .revoke_operator("4A", 20, "bob", "left")
            .await
            .unwrap();
        assert!(matches!(
            store.revoke_operator("4A", 30, "bob", "again").await,
            Err(StoreError::NotFound(_))
        ));
        let listed = store.list_operators().await.unwrap();
        assert_eq!(
            listed,
            vec![OperatorRecord {
                revoked_at: Some(20),
                revoked_by: Some("bob".into()),
                revoke_reason: Some("left".into()),
                ..op
            }]
        );
    }
}
