//! Tamper evidence beyond the chain: removing the newest entries is caught
//! by the signed checkpoint kept outside the database, and re-writing every
//! entry with a freshly computed chain is caught because the chain is keyed
//! with a secret derived from the KEK.

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use serde::Serialize;
use sqlx::{Connection, Row};

async fn issue_some(broker: &TestBroker) {
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    for _ in 0..5 {
        session
            .fetch_jwt(&JwtRequest::audience("billing"))
            .await
            .unwrap();
    }
}

async fn db(broker: &TestBroker) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", broker.database().display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

fn verify(broker: &TestBroker) -> (bool, String) {
    let out = broker.cli(&["audit", "verify"]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn deleting_the_newest_entries_is_reported_as_truncation() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    issue_some(&broker).await;
    // A clean stop seals a checkpoint of everything committed.
    broker.stop().await;
    let checkpoints = std::fs::read_to_string(broker.data_dir().join("audit.checkpoints")).unwrap();
    assert!(
        !checkpoints.trim().is_empty(),
        "no checkpoint written at shutdown"
    );

    let mut conn = db(&broker).await;
    let newest: i64 = sqlx::query("SELECT MAX(seq) AS s FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get("s");
    sqlx::query("DELETE FROM audit_log WHERE seq > ?")
        .bind(newest - 3)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();

    broker.restart().await;
    assert!(
        broker.log().contains("TRUNCATED"),
        "the broker must say at start that its log lost its tail"
    );
    let (ok, out) = verify(&broker);
    assert!(!ok, "verify must fail: {out}");
    assert!(
        out.contains("truncated") && out.contains(&format!("{}", newest - 2)),
        "{out}"
    );

    // The same file given explicitly, as an operator would from a copy.
    let copy = broker.scratch("copy").join("checkpoints");
    std::fs::write(&copy, checkpoints).unwrap();
    let out = broker.cli(&["audit", "verify", "--checkpoint", copy.to_str().unwrap()]);
    assert!(!out.status.success());
}

/// The audit entry as it is hashed (field order matters).
#[derive(Serialize)]
struct Entry {
    at_ms: i64,
    action: String,
    decision: String,
    actor: Option<String>,
    peer: Option<String>,
    identity: Option<String>,
    env: Option<String>,
    credential: Option<String>,
    jti: Option<String>,
    serial: Option<String>,
    expires_at: Option<i64>,
    reason: Option<String>,
    detail: Option<String>,
    evidence: Option<String>,
}

#[tokio::test]
async fn a_rewritten_chain_does_not_verify_without_the_key() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    issue_some(&broker).await;
    let (ok, out) = verify(&broker);
    assert!(ok, "{out}");
    broker.stop().await;
    // Remove the checkpoints too: only the chain itself defends now.
    std::fs::remove_file(broker.data_dir().join("audit.checkpoints")).unwrap();

    // Someone with write access to the database rewrites the history of
    // dev/api and re-links every entry with SHA-256, as an unkeyed chain
    // would be computed.
    let mut conn = db(&broker).await;
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut prev = [0u8; 32];
    for row in rows {
        let seq: i64 = row.get("seq");
        let entry = Entry {
            at_ms: row.get("at_ms"),
            action: row.get("action"),
            decision: row.get("decision"),
            actor: row.get("actor"),
            peer: row.get("peer"),
            identity: row
                .get::<Option<String>, _>("identity")
                .map(|i| i.replace("dev/api", "dev/someone-else")),
            env: row.get("env"),
            credential: row.get("credential"),
            jti: row.get("jti"),
            serial: row.get("serial"),
            expires_at: row.get("expires_at"),
            reason: row.get("reason"),
            detail: row.get("detail"),
            evidence: row.get("evidence"),
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&prev);
        ctx.update(&seq.to_be_bytes());
        ctx.update(&serde_json::to_vec(&entry).unwrap());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(ctx.finish().as_ref());
        sqlx::query("UPDATE audit_log SET identity = ?, prev_hash = ?, hash = ? WHERE seq = ?")
            .bind(&entry.identity)
            .bind(prev.as_slice())
            .bind(hash.as_slice())
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    conn.close().await.unwrap();
    broker.restart().await;
    let (ok, out) = verify(&broker);
    assert!(!ok, "a rewritten chain must not verify: {out}");
    assert!(out.contains("entry 1") && out.contains("altered"), "{out}");
}
