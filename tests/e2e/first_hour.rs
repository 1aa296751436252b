//! The first hour with the broker: mistakes caught early and explained,
//! and refusals that can be found afterwards (issue 13, items 4 and 6).

use std::process::Command;

use credbroker_client::Evidence;
use credbroker_e2e::{TestBroker, binary};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON output")
}

#[tokio::test]
async fn a_restart_without_the_configured_kek_says_so_and_generates_none() {
    let keys = tempfile::tempdir().unwrap();
    let kek = keys.path().join("kek");
    std::fs::write(&kek, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n").unwrap();
    let mut broker = TestBroker::start_with(&["dev"], &format!("kek_file = {kek:?}")).await;
    broker.stop().await;
    assert!(!broker.data_dir().join("kek").exists());

    // The same data directory, started the way one would by hand: no config.
    let out = Command::new(binary("credbroker"))
        .args(["serve", "--data-dir"])
        .arg(broker.data_dir())
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env_remove("CREDBROKER_KEK_FILE")
        .env_remove("CREDBROKER_CONFIG")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no key-encryption key")
            && err.contains("kek_file")
            && err.contains("CREDBROKER_KEK_FILE"),
        "{err}"
    );
    assert!(
        !broker.data_dir().join("kek").exists(),
        "no stray KEK generated next to the data"
    );
    // With the KEK named again (its config), it starts on the same keys.
    broker.restart().await;
}

#[tokio::test]
async fn mistakes_are_refused_with_what_was_wrong() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);

    // A token nobody can use is refused before anything is created.
    let out = broker.cli(&[
        "token", "create", "--env", "dev", "--name", "api", "--uses", "0",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--uses"), "{}", stderr(&out));
    let audit = json(&broker.cli_ok(&["audit", "--identity", "dev/api", "--output", "json"]));
    assert!(
        !audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "join_token.create"),
        "nothing created: {audit}"
    );

    // Durations come back as they were written.
    let out = broker.cli(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "long",
        "--owner",
        "o",
        "--purpose",
        "p",
        "--x509-ttl",
        "100d",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("100d") && err.contains("24h"), "{err}");
    assert!(!err.contains("month"), "{err}");
    let shown = broker.cli_ok(&["identity", "show", "--env", "dev", "--name", "api"]);
    assert!(
        shown.contains("jwt ttl      5m") && shown.contains("x509 ttl     1h"),
        "{shown}"
    );

    // Times in audit details are RFC 3339, like everywhere else.
    broker.join_token("dev", "api");
    let audit = json(&broker.cli_ok(&["audit", "--identity", "dev/api", "--output", "json"]));
    let detail = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "join_token.create")
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .unwrap();
    let at = detail
        .strip_prefix("expires_at=")
        .and_then(|rest| rest.split(' ').next())
        .unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{detail}");
}

#[tokio::test]
async fn config_duration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("credbroker.toml");
    std::fs::write(&config, "[ttl]\njoin_token_ceiling = 7\n").unwrap();
    let out = Command::new(binary("credbroker"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("ttl.join_token_ceiling") && err.contains("\"30d\""),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing created");
}

#[tokio::test]
async fn a_retired_name_stays_reserved() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "old", &[], &[]);
    let out = broker.cli(&["identity", "retire", "--env", "dev", "--name", "old"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("stays reserved"), "{}", stderr(&out));
    let out = broker.cli(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "old",
        "--owner",
        "o",
        "--purpose",
        "p",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("was retired at") && err.contains("stays reserved"),
        "{err}"
    );
    let shown = json(&broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "old", "--output", "json",
    ]));
    assert_eq!(shown["status"], "retired", "the old one is untouched");
}

#[tokio::test]
async fn a_revoked_certificate_is_not_outstanding() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let outstanding = || {
        let list = json(&broker.cli_ok(&["identity", "list", "--output", "json"]));
        list[0]["outstanding_credentials"].as_u64().unwrap()
    };
    assert_eq!(outstanding(), 1);
    broker.cli_ok(&[
        "revoke",
        "--serial",
        &attested.svid.serial,
        "--reason",
        "test",
    ]);
    assert_eq!(outstanding(), 0);
    let shown = json(&broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "api", "--output", "json",
    ]));
    assert_eq!(shown["outstanding_credentials"], 0);
}

#[tokio::test]
async fn a_reused_join_token_is_found_under_its_identity() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let token = broker.join_token("dev", "api");
    let client = broker.client().await;
    client
        .attest(&Evidence::JoinToken(token.clone()), &[])
        .await
        .unwrap();
    let err = client
        .attest(&Evidence::JoinToken(token), &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already used"), "{err}");

    let audit = json(&broker.cli_ok(&["audit", "--identity", "dev/api", "--output", "json"]));
    let denied: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "attest" && e["decision"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{audit}");
    let issued = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "attest" && e["decision"] == "issued")
        .unwrap();
    let evidence = denied[0]["evidence"].as_str().unwrap();
    assert!(evidence.starts_with("join_token:"), "{evidence}");
    assert_eq!(denied[0]["evidence"], issued["evidence"], "the same token");
    assert!(
        denied[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{audit}"
    );

    let table = broker.cli_ok(&["audit", "--identity", "dev/api"]);
    assert!(table.lines().next().unwrap().contains("PEER"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("denied") && l.contains("127.0.0.1:")),
        "{table}"
    );
}
