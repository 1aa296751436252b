//! The conformance suite on PostgreSQL (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each test in a schema of
//! its own, and what is PostgreSQL's own: locks and notifications.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sqlx::Connection;

use crate::store::ChangeKind;
use crate::store::conformance::{TestDb, conformance_suite};

/// The database tests use.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Drops its schema when dropped (on a thread of its own: Drop cannot
/// await).
struct DropSchema(String);

impl Drop for DropSchema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&database_url()).await {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS {schema} CASCADE"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

/// A new, empty schema and the store URL that uses it.
pub(crate) async fn fresh_schema() -> (String, Box<dyn std::any::Any + Send>) {
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "cb_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        crate::model::unix_now_ms()
    );
    let mut conn = sqlx::PgConnection::connect(&database_url())
        .await
        .expect("PostgreSQL at DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = database_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    (url, Box::new(DropSchema(schema)))
}

async fn fresh() -> TestDb {
    let (url, cleanup) = fresh_schema().await;
    TestDb {
        store: crate::store::open(&url).await.unwrap(),
        url,
        _cleanup: cleanup,
    }
}

conformance_suite!(fresh);

#[tokio::test]
async fn one_leader_at_a_time_and_the_next_takes_over_when_it_goes() {
    let db = fresh().await;
    let other = db.open_again().await;
    let mut leader = db.store.try_lead().await.unwrap().expect("free");
    assert!(other.try_lead().await.unwrap().is_none(), "taken");
    assert!(leader.still_held().await);
    drop(leader);
    // The database releases a session lock when its connection closes.
    let mut next = None;
    for _ in 0..50 {
        next = other.try_lead().await.unwrap();
        if next.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        next.is_some(),
        "the other broker leads once the first is gone"
    );
}

#[tokio::test]
async fn brokers_in_other_schemas_do_not_contend() {
    let a = fresh().await;
    let b = fresh().await;
    let _lead_a = a.store.try_lead().await.unwrap().expect("free");
    assert!(b.store.try_lead().await.unwrap().is_some());
}

#[tokio::test]
async fn the_bootstrap_lock_waits_for_its_holder() {
    let db = fresh().await;
    let other = db.open_again().await;
    let held = db.store.bootstrap_lock().await.unwrap();
    let waiter = tokio::spawn(async move { other.bootstrap_lock().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "waits while held");
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("taken once released")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_change_wakes_the_other_brokers() {
    let db = fresh().await;
    let other = db.open_again().await;
    let mut signal = other.change_signal().await.unwrap().expect("shared store");
    let mut noise = fresh().await.store.change_signal().await.unwrap().unwrap();
    let start = other.latest_change().await.unwrap();
    db.store
        .insert_identity(&crate::model::test_identity())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), signal.wait())
        .await
        .expect("woken")
        .unwrap();
    let changes = other.changes_after(start, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::Identity);
    // A listener in another schema is not woken by this one's change.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), noise.wait())
            .await
            .is_err()
    );
}
