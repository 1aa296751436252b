//! No credential leaves the broker before its audit record is committed:
//! a store that cannot commit turns issuance into UNAVAILABLE (never a
//! credential without a record, never a hang), and a kill -9 under load
//! loses no record of anything a client received.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use serde_json::Value;
use sqlx::Connection;

/// Holds SQLite's write lock on the broker's database until dropped.
async fn lock_writes(broker: &TestBroker) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", broker.database().display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

fn audited_jtis(broker: &TestBroker) -> BTreeSet<String> {
    let out = broker.cli_ok(&[
        "audit",
        "--identity",
        "dev/api",
        "--limit",
        "10000",
        "--output",
        "json",
    ]);
    let events: Value = serde_json::from_str(&out).unwrap();
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["decision"] == "issued")
        .filter_map(|e| e["jti"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_store_that_cannot_commit_gets_unavailable_not_unaudited_credentials() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap();

    let issued_lines = |broker: &TestBroker| {
        broker
            .log()
            .lines()
            .filter(|l| l.contains(r#"action="fetch_jwt""#) && l.contains(r#"decision="issued""#))
            .count()
    };
    assert_eq!(issued_lines(&broker), 1, "{}", broker.log());

    let lock = lock_writes(&broker).await;
    let asked = Instant::now();
    let refused = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap_err();
    let waited = asked.elapsed();
    assert_eq!(refused.code(), Some(tonic::Code::Unavailable), "{refused}");
    assert!(refused.to_string().contains("audit log"), "{refused}");
    // Bounded: the commit timeout plus scheduling, never a hang.
    assert!(waited < Duration::from_secs(20), "waited {waited:?}");
    let renewal = session.renew().await.unwrap_err();
    assert_eq!(renewal.code(), Some(tonic::Code::Unavailable), "{renewal}");
    // The log stream says `issued` only for what the audit log holds.
    assert_eq!(issued_lines(&broker), 1, "{}", broker.log());
    drop(lock);

    // The store is back: issuance resumes and every credential handed out
    // has its record.
    let deadline = Instant::now() + Duration::from_secs(30);
    let jwt = loop {
        match session.fetch_jwt(&JwtRequest::audience("billing")).await {
            Ok(jwt) => break jwt,
            Err(e) => {
                assert!(Instant::now() < deadline, "never recovered: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(audited_jtis(&broker).contains(&jwt.jti));
    let verify = broker.cli_ok(&["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
}

#[tokio::test]
async fn kill_9_under_load_loses_no_record_of_a_delivered_credential() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (session, received, stop) = (session.clone(), Arc::clone(&received), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match session.fetch_jwt(&JwtRequest::audience("billing")).await {
                    Ok(jwt) => {
                        received.lock().unwrap().insert(jwt.jti);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    // Let the load build, then crash the broker in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "load never built up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.crash_and_restart().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let received = received.lock().unwrap().clone();
    let audited = audited_jtis(&broker);
    let missing: Vec<_> = received.difference(&audited).collect();
    assert!(
        missing.is_empty(),
        "{} of {} delivered JWTs have no audit record after kill -9: {:?}",
        missing.len(),
        received.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    let verify = broker.cli_ok(&["audit", "verify"]);
    assert!(verify.contains("intact"), "{verify}");
}
