//! The durable audit log: queries answer "who used this token" and "what
//! did this identity get", and tampering with stored entries is detected.

use std::time::Duration;

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON output")
}

async fn tamper(broker: &TestBroker, sql: &str) {
    let url = format!(
        "sqlite://{}",
        broker.data_dir().join("credbroker.db").display()
    );
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn audit_log_answers_who_got_what_and_detects_tampering() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    let jwt = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap();
    assert!(
        session
            .fetch_jwt(&JwtRequest::audience("payroll"))
            .await
            .is_err()
    );

    // Who used this token?
    let by_jti = json(&broker.cli_ok(&["audit", "--jti", &jwt.jti, "--output", "json"]));
    let entries = by_jti.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{by_jti}");
    assert_eq!(entries[0]["action"], "fetch_jwt");
    assert_eq!(entries[0]["decision"], "issued");
    assert_eq!(entries[0]["actor"], "spiffe://dev.example.org/api");
    assert_eq!(entries[0]["identity"], "dev/api");
    assert!(
        entries[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // Everything this identity got or was refused, newest first.
    let history = json(&broker.cli_ok(&[
        "audit",
        "--identity",
        "dev/api",
        "--since",
        "1h",
        "--output",
        "json",
    ]));
    let actions: Vec<(String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("fetch_jwt".into(), "denied".into())),
        "{actions:?}"
    );
    assert!(actions.contains(&("attest".into(), "issued".into())));
    assert!(actions.contains(&("identity.create".into(), "done".into())));
    let denied = history
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["decision"] == "denied")
        .unwrap();
    assert!(denied["reason"].as_str().unwrap().contains("payroll"));
    let by_serial = json(&broker.cli_ok(&[
        "audit",
        "--serial",
        &attested.svid.serial,
        "--output",
        "json",
    ]));
    assert_eq!(by_serial[0]["action"], "attest");
    // Admin changes carry the admin as actor; no secret is stored.
    let admin = json(&broker.cli_ok(&["audit", "--actor", "admin", "--output", "json"]));
    assert!(
        admin
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "join_token.create")
    );
    assert!(!admin.to_string().contains("cbjt_"));
    assert!(
        broker
            .cli_ok(&["audit", "--identity", "dev/api"])
            .starts_with("SEQ")
    );

    // Intact, across a restart that continues the chain.
    assert!(broker.cli_ok(&["audit", "verify"]).contains("intact"));
    broker.restart().await;
    broker.cli_ok(&["identity", "list"]);
    let report = json(&broker.cli_ok(&["audit", "verify", "--output", "json"]));
    assert_eq!(report["intact"], true, "{report}");
    let total = report["entries"].as_i64().unwrap();
    assert!(total >= 6, "{report}");

    // Altering an entry is detected at that entry.
    broker.stop().await;
    tamper(
        &broker,
        "UPDATE audit_log SET decision = 'issued' WHERE decision = 'denied'",
    )
    .await;
    broker.restart().await;
    let out = broker.cli(&["audit", "verify"]);
    assert!(!out.status.success(), "tampering went unnoticed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("BROKEN") && stdout.contains("altered"),
        "{stdout}"
    );
    let broken_at = json(&String::from_utf8_lossy(
        &broker.cli(&["audit", "verify", "--output", "json"]).stdout,
    ))["broken_at"]
        .as_i64()
        .unwrap();
    assert!(broken_at > 0 && broken_at < total);
}

#[tokio::test]
async fn deleting_an_entry_is_detected() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "a", &[], &[]);
    broker.create_identity("dev", "b", &[], &[]);
    broker.create_identity("dev", "c", &[], &[]);
    assert!(broker.cli_ok(&["audit", "verify"]).contains("intact"));
    broker.stop().await;
    tamper(&broker, "DELETE FROM audit_log WHERE identity = 'dev/b'").await;
    broker.restart().await;
    let out = broker.cli(&["audit", "verify"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("missing"));
}

#[tokio::test]
async fn inventory_counts_outstanding_credentials_and_finds_stale_identities() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "busy", &["billing"], &[]);
    broker.create_identity("dev", "idle", &[], &[]);
    // Times are whole seconds: wait past two boundaries for "idle" to be 1s stale.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let client = broker.client().await;
    client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "busy")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    let busy = json(&broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "busy", "--output", "json",
    ]));
    assert_eq!(
        busy["outstanding_credentials"], 2,
        "an SVID and a JWT: {busy}"
    );
    let stale = json(&broker.cli_ok(&["identity", "list", "--stale", "1s", "--output", "json"]));
    let names: Vec<&str> = stale
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["idle"]);
    let none_stale =
        json(&broker.cli_ok(&["identity", "list", "--stale", "1h", "--output", "json"]));
    assert!(none_stale.as_array().unwrap().is_empty());
}
