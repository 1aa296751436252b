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

fn entry_of(identity: &str, at_ms: i64) -> AuditEntry {
    AuditEntry {
        at_ms,
        action: "fetch_jwt".into(),
        decision: "issued".into(),
        identity: Some(identity.into()),
        ..AuditEntry::default()
    }
}

async fn history(store: &SqliteStore, identity: &str) -> Vec<i64> {
    let filter = AuditFilter {
        identity: Some(identity.into()),
        limit: 100,
        ..Default::default()
    };
    let found = store.query_audit(&filter).await.unwrap();
    found.iter().map(|e| e.entry.at_ms).collect()
}

/// Appends dev/api, dev/web, dev/api (seqs 1–3, at_ms 1–3).
async fn api_web_api(store: &SqliteStore) -> ChainKey {
    let key = ChainKey::for_tests();
    let entries = [
        entry_of("dev/api", 1),
        entry_of("dev/web", 2),
        entry_of("dev/api", 3),
    ];
    store.append_audit(&entries, &key).await.unwrap();
    key
}

async fn execute(store: &SqliteStore, sql: &'static str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&store.pool)
        .await
        .unwrap();
}

/// `identity_prev` is not hashed, so anyone with the file can change it:
/// a loop, a link forward or into another identity's entries must neither
/// hang a query nor show another identity's entries.
#[tokio::test]
async fn an_altered_identity_link_neither_loops_nor_strays() {
    let (_dir, store) = store().await;
    let key = ChainKey::for_tests();
    let entries = [
        entry_of("dev/api", 1),
        entry_of("dev/web", 2),
        entry_of("dev/api", 3),
        entry_of("dev/api", 4),
    ];
    store.append_audit(&entries, &key).await.unwrap();
    assert_eq!(history(&store, "dev/api").await, [4, 3, 1]);
    for (altered, shows) in [
        (
            "UPDATE audit_log SET identity_prev = seq WHERE seq = 3",
            [4, 3],
        ),
        (
            "UPDATE audit_log SET identity_prev = 4 WHERE seq = 3",
            [4, 3],
        ),
        (
            "UPDATE audit_log SET identity_prev = 2 WHERE seq = 3",
            [4, 3],
        ),
        // Through another identity's entry and back into this one's: the
        // walk stops at the stranger, so entry 1 is not reached that way.
        (
            "UPDATE audit_log SET identity_prev = CASE seq WHEN 3 THEN 2 ELSE 1 END
             WHERE seq IN (2, 3)",
            [4, 3],
        ),
    ] {
        execute(&store, altered).await;
        assert_eq!(history(&store, "dev/api").await, shows, "{altered}");
    }
}

/// A log written with the `(identity, seq)` index (the schema before the
/// chain) keeps every identity's history once migrated, and new entries
/// link on.
#[tokio::test]
async fn an_upgraded_log_keeps_each_identitys_history() {
    let (dir, store) = store().await;
    let key = api_web_api(&store).await;
    // Back to the schema before the chain, as an older broker left it.
    execute(
        &store,
        "DROP TABLE audit_identity_heads; DROP TABLE audit_heads_through;
         CREATE INDEX audit_by_identity ON audit_log (identity, seq);
         ALTER TABLE audit_log DROP COLUMN identity_prev;",
    )
    .await;
    let before_chain = MIGRATIONS.len() - 1;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PRAGMA user_version = {before_chain}"
    )))
    .execute(&store.pool)
    .await
    .unwrap();
    store.pool.close().await;
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(history(&store, "dev/api").await, [3, 1]);
    store
        .append_audit(&[entry_of("dev/api", 4)], &key)
        .await
        .unwrap();
    store.pool.close().await;
    let store = SqliteStore::open(&url).await.unwrap();
    assert_eq!(history(&store, "dev/api").await, [4, 3, 1]);
    assert_eq!(history(&store, "dev/web").await, [2]);
}

/// A store opened after the heads were persisted reads only the log after
/// them: the heads it finds there and the tail's entries together lead to
/// every identity's history.
#[tokio::test]
async fn persisted_heads_and_the_tail_after_them_find_every_history() {
    let (dir, store) = store().await;
    let key = api_web_api(&store).await;
    store.heads.persist(&store.pool).await.unwrap();
    let through: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads_through")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    let heads: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_identity_heads ORDER BY seq")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    assert_eq!(
        (through, heads),
        (3, vec![2, 3]),
        "dev/web at 2, dev/api at 3"
    );
    store
        .append_audit(&[entry_of("dev/api", 4)], &key)
        .await
        .unwrap();
    store.pool.close().await;
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    // dev/web's head is only in the persisted table; dev/api's moved after.
    assert_eq!(history(&store, "dev/web").await, [2]);
    assert_eq!(history(&store, "dev/api").await, [4, 3, 1]);
}

/// A reader whose snapshot predates entries this process appended since
/// must not take the log for one that shrank: the heads stay. Under the
/// write lock, a log shorter than what was read is a replaced file.
#[tokio::test]
async fn an_older_snapshot_leaves_the_heads_alone() {
    use super::identity_chain::EndSeen;
    let (_dir, store) = store().await;
    api_web_api(&store).await;
    let mut conn = store.pool.acquire().await.unwrap();
    let heads = &store.heads;
    heads
        .catch_up(&mut conn, 1, EndSeen::InSnapshot)
        .await
        .unwrap();
    assert_eq!(heads.head("dev/api"), Some(3));
    heads
        .catch_up(&mut conn, 1, EndSeen::UnderWriteLock)
        .await
        .unwrap();
    assert_eq!(heads.head("dev/api"), Some(1), "read again up to seq 1");
    assert_eq!(heads.head("dev/web"), None);
}

/// An append that fails part-way (a trigger refuses its last INSERT after
/// the first went in) commits none of its entries and leaves no transaction
/// holding the write lock: other writers go on at once, and the next append
/// continues the chain from the entries before it.
#[tokio::test]
async fn a_failed_append_commits_nothing_and_the_next_one_continues() {
    let (_dir, store) = store().await;
    let key = api_web_api(&store).await;
    execute(
        &store,
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_log WHEN NEW.action = 'refused'
         BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .await;
    // Runs of two and one entries: the second INSERT is refused.
    let refused = AuditEntry {
        action: "refused".into(),
        ..entry_of("dev/api", 6)
    };
    let batch = [entry_of("dev/api", 4), entry_of("dev/web", 5), refused];
    store.append_audit(&batch, &key).await.unwrap_err();

    // A write lock left behind would make this wait out the busy timeout
    // and fail.
    let started = std::time::Instant::now();
    execute(&store, "DROP TRIGGER refuse").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the write lock was held"
    );
    assert_eq!(store.audit_head().await.unwrap().unwrap().0, 3);

    let (seq, _) = store
        .append_audit(&[entry_of("dev/web", 7)], &key)
        .await
        .unwrap();
    assert_eq!(seq, 4);
    let log = store.audit_page(0, 10).await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(log.iter().all(|e| e.is_intact(&key)));
    assert!(log.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    assert_eq!(history(&store, "dev/web").await, [7, 2]);
}
