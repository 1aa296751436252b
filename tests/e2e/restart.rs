//! A restart keeps keys, CAs, identities and usage times.

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, http};

#[tokio::test]
async fn restart_keeps_keys_and_identities() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let jwks_before = http::get_json(broker.http_port(), "/dev/jwks.json").await;
    let bundle_before = http::get_json(broker.http_port(), "/dev/bundle").await;
    let broker_ca_before = broker.bundle_pem();
    let admin_before = broker.admin_identity();
    // Private keys are not stored in the clear.
    let db = std::fs::read(broker.data_dir().join("credbroker.db")).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&db).contains("PRIVATE KEY"));

    broker.restart().await;

    assert_eq!(
        http::get_json(broker.http_port(), "/dev/jwks.json").await,
        jwks_before
    );
    assert_eq!(
        http::get_json(broker.http_port(), "/dev/bundle").await,
        bundle_before
    );
    assert_eq!(broker.bundle_pem(), broker_ca_before);
    assert_eq!(
        broker.admin_identity(),
        admin_before,
        "admin credentials reused"
    );
    let shown: serde_json::Value = serde_json::from_str(&broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "api", "--output", "json",
    ]))
    .unwrap();
    assert_eq!(shown["owner"], "team-test");
    assert!(
        shown["last_issued_at"].is_string(),
        "usage survives a restart: {shown}"
    );

    // The SVID issued before the restart still authenticates.
    let client = broker.client().await;
    let session = client.authenticated(&attested.svid).await.unwrap();
    let jwt = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id, "spiffe://dev.example.org/api");
}

#[tokio::test]
async fn a_wrong_key_encryption_key_stops_the_start() {
    let mut broker = TestBroker::start().await;
    broker.stop().await;
    std::fs::write(
        broker.data_dir().join("kek"),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    )
    .unwrap();
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args(["serve", "--data-dir"])
        .arg(broker.data_dir())
        .env("CREDBROKER_GRPC_LISTEN", "127.0.0.1:0")
        .env("CREDBROKER_HTTP_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrong key-encryption key"), "{stderr}");
}

#[tokio::test]
async fn a_second_broker_on_the_same_data_directory_refuses_to_start_naming_the_first() {
    let broker = TestBroker::start().await;
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args(["serve", "--config"])
        .arg(broker.config_path())
        .env_remove("CREDBROKER_DATA_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pid = broker.pid().unwrap();
    assert!(
        stderr.contains("already running") && stderr.contains(&format!("pid {pid}")),
        "{stderr}"
    );
    // The first one is undisturbed.
    broker.create_identity("dev", "still-works", &[], &[]);
}
