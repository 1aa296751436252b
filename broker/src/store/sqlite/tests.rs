//! The conformance suite on a real SQLite file, and what is SQLite's own.

use super::*;
use crate::model::test_identity;
use crate::store::conformance::{TestDb, conformance_suite};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (dir, SqliteStore::open(&url).await.unwrap())
}

async fn fresh() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    TestDb {
        store: crate::store::open(&url).await.unwrap(),
        url,
        _cleanup: Box::new(dir),
    }
}

conformance_suite!(fresh);

#[tokio::test]
async fn the_database_is_private_and_every_commit_is_synchronous() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = store().await;
    store.insert_identity(&test_identity()).await.unwrap();
    // FULL = 2: a commit is on disk (fsync) before it is acknowledged.
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(sync, 2);
    for file in ["t.db", "t.db-wal", "t.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is {:o}", mode & 0o777);
    }
}

#[tokio::test]
async fn a_schema_newer_than_this_binary_is_refused_and_left_alone() {
    let (dir, store) = store().await;
    let known = MIGRATIONS.len() as i64;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA user_version = {}",
        known + 1
    )))
    .execute(&store.pool)
    .await
    .unwrap();
    store.pool.close().await;
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let err = SqliteStore::open(&url).await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, known: k } if found == known + 1 && k == known),
        "{err}"
    );
    let pool = SqlitePool::connect(&url).await.unwrap();
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(version, known + 1, "left as it was");
}
