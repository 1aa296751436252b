//! Round trips through a real SQLite file.

use super::*;
use crate::model::test_identity;

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (dir, SqliteStore::open(&url).await.unwrap())
}

#[tokio::test]
async fn identities_round_trip_and_conflict() {
    let (_dir, store) = store().await;
    let mut id = test_identity();
    store.insert_identity(&id).await.unwrap();
    assert!(matches!(
        store.insert_identity(&id).await,
        Err(StoreError::AlreadyExists(_))
    ));
    id.enabled = false;
    store.update_identity(&id).await.unwrap();
    store
        .record_usage(&[UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(50),
            last_seen_at: Some(60),
        }])
        .await
        .unwrap();
    // Usage never moves backwards.
    store
        .record_usage(&[UsageUpdate {
            identity: id.key.clone(),
            last_issued_at: Some(10),
            last_seen_at: None,
        }])
        .await
        .unwrap();
    let loaded = store.list_identities().await.unwrap();
    id.last_issued_at = Some(50);
    id.last_seen_at = Some(60);
    assert_eq!(loaded, vec![id]);
}

#[tokio::test]
async fn join_tokens_are_consumed_once_and_purged_after_expiry() {
    let (_dir, store) = store().await;
    let id = test_identity();
    store.insert_identity(&id).await.unwrap();
    let token = JoinTokenRecord {
        hash: [7; 32],
        identity: id.key.clone(),
        created_at: 100,
        expires_at: 200,
        uses_left: 1,
    };
    store.insert_join_token(&token).await.unwrap();
    assert_eq!(store.find_join_token(&[7; 32]).await.unwrap(), Some(token));
    assert!(
        !store.consume_join_token(&[7; 32], 200).await.unwrap(),
        "expired"
    );
    assert!(store.consume_join_token(&[7; 32], 150).await.unwrap());
    assert!(
        !store.consume_join_token(&[7; 32], 150).await.unwrap(),
        "spent"
    );
    assert_eq!(store.purge_join_tokens(200).await.unwrap(), 0);
    assert_eq!(store.purge_join_tokens(201).await.unwrap(), 1);
    assert_eq!(store.find_join_token(&[7; 32]).await.unwrap(), None);
}

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

#[tokio::test]
async fn audit_cuts_only_move_forward_and_deletes_are_bounded() {
    use crate::audit::checkpoint::{Checkpoint, CheckpointKind};
    use crate::audit::{AuditEntry, ChainKey, ChainedEntry, GENESIS};
    let (_dir, store) = store().await;
    assert!(store.audit_cut().await.unwrap().is_none());
    let key = ChainKey::for_tests();
    let mut prev = GENESIS;
    let entries: Vec<ChainedEntry> = (1..=30)
        .map(|seq| {
            let e = ChainedEntry::link(seq, AuditEntry::default(), prev, &key);
            prev = e.hash;
            e
        })
        .collect();
    store.append_audit(&entries).await.unwrap();
    let cut = |seq: i64| AuditCut {
        checkpoint: Checkpoint {
            kind: CheckpointKind::Cut,
            seq,
            head: [seq as u8; 32],
            at_ms: seq,
            signature: vec![1, 2, 3],
        },
        export: format!("audit-{seq}.jsonl"),
    };
    store.record_audit_cut(&cut(20)).await.unwrap();
    store.record_audit_cut(&cut(10)).await.unwrap();
    assert_eq!(
        store.audit_cut().await.unwrap(),
        Some(cut(20)),
        "an older cut changes nothing"
    );
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 15);
    assert_eq!(store.audit_page(0, 100).await.unwrap()[0].seq, 16);
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 5);
    assert_eq!(store.delete_audit_through(20, 15).await.unwrap(), 0);
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 30);
}
