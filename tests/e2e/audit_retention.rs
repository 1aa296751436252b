//! Audit retention through the real binary: a broker with
//! `audit_retention` keeps what is younger, and `audit verify --export`
//! checks an export file with the broker's keys — entries taken from its
//! own log verify, but an export sealed by anyone else is refused.

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The broker's own entries as export lines (after the genesis, no seal).
async fn export_lines(broker: &TestBroker) -> Vec<String> {
    let url = format!("sqlite://{}", broker.database().display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query("SELECT * FROM audit_log ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut lines = vec![r#"{"after":null}"#.to_owned()];
    for row in rows {
        let text = |c: &str| row.get::<Option<String>, _>(c);
        let record = json!({
            "at_ms": row.get::<i64, _>("at_ms"),
            "action": row.get::<String, _>("action"),
            "decision": row.get::<String, _>("decision"),
            "actor": text("actor"), "peer": text("peer"), "identity": text("identity"),
            "env": text("env"), "credential": text("credential"), "jti": text("jti"),
            "serial": text("serial"), "expires_at": row.get::<Option<i64>, _>("expires_at"),
            "reason": text("reason"), "detail": text("detail"), "evidence": text("evidence"),
        });
        lines.push(
            json!({"entry": {
                "seq": row.get::<i64, _>("seq"),
                "prev_hash": hex(&row.get::<Vec<u8>, _>("prev_hash")),
                "hash": hex(&row.get::<Vec<u8>, _>("hash")),
                "record": record,
            }})
            .to_string(),
        );
    }
    conn.close().await.unwrap();
    lines
}

fn verify_export(broker: &TestBroker, lines: &[String]) -> (bool, Value) {
    let file = broker.scratch("exports").join("export.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = broker.cli(&[
        "--output",
        "json",
        "audit",
        "verify",
        "--export",
        file.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report[0].clone())
}

#[tokio::test]
async fn exports_verify_only_with_the_brokers_signed_cut() {
    let export_dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start_with(
        &["dev"],
        &format!(
            "audit_retention = \"1d\"\naudit_export_dir = {:?}",
            export_dir.path()
        ),
    )
    .await;
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
    broker.cli_ok(&["audit", "verify"]);
    // Retention ran at start: nothing is a day old, so nothing went.
    assert_eq!(std::fs::read_dir(export_dir.path()).unwrap().count(), 0);

    let mut lines = export_lines(&broker).await;
    let entries = lines.len() as i64 - 1;
    assert!(entries >= 3);
    // Every entry is the broker's own, but no cut seals them.
    let (ok, report) = verify_export(&broker, &lines);
    assert!(!ok);
    assert_eq!(report["entries"], entries, "{report}");
    assert!(
        report["problem"].as_str().unwrap().contains("incomplete"),
        "{report}"
    );

    // A seal made up by someone without the audit key.
    lines.push(
        json!({"sealed_by": {"kind": "cut", "seq": entries, "head": "00".repeat(32),
                              "at_ms": 1, "sig": "AAAA"}})
        .to_string(),
    );
    let (ok, report) = verify_export(&broker, &lines);
    assert!(!ok);
    assert_eq!(report["entries"], entries, "{report}");
    assert!(
        report["problem"]
            .as_str()
            .unwrap()
            .contains("not a retention cut signed by this broker"),
        "{report}"
    );

    // An altered entry is found before the seal is even looked at.
    lines[2] = lines[2].replace("\"dev\"", "\"prod\"");
    let (ok, report) = verify_export(&broker, &lines);
    assert!(!ok);
    assert_eq!(report["broken_at"], 2, "{report}");

    let out = broker.cli(&["audit", "verify", "--export", "/nonexistent/export.jsonl"]);
    assert!(!out.status.success());
}
