//! The admin API and CLI: authentication by the admin certificate, input
//! validation with clear errors, inventory output.

use credbroker_client::Evidence;
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{CreateIdentityRequest, ListIdentitiesRequest};
use tonic::Code;

fn request(name: &str) -> CreateIdentityRequest {
    CreateIdentityRequest {
        env: "dev".into(),
        name: name.into(),
        owner: "o".into(),
        purpose: "p".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn admin_calls_need_the_admin_certificate() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);

    let mut anonymous = AdminClient::new(broker.channel(None).await.unwrap());
    let err = anonymous.create_identity(request("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = anonymous
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A workload's SVID does not make it an admin.
    let attested = broker
        .client()
        .await
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let identity = (
        attested.svid.cert_chain_pem(),
        attested.svid.private_key_pem(),
    );
    let mut workload = AdminClient::new(broker.channel(Some(identity)).await.unwrap());
    let err = workload.create_identity(request("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Nothing was created by the refused calls.
    let mut admin = AdminClient::new(broker.channel(Some(broker.admin_identity())).await.unwrap());
    let list = admin
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.identities.len(), 1);
}

#[tokio::test]
async fn bad_identities_are_refused_with_the_field_named() {
    let broker = TestBroker::start().await;
    let refuse = |args: &[&str], needle: &str| {
        let mut full = vec!["identity", "create"];
        full.extend_from_slice(args);
        let out = broker.cli(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
    };
    let base = [
        "--env",
        "dev",
        "--name",
        "api",
        "--owner",
        "team",
        "--purpose",
        "why",
    ];
    refuse(
        &["--env", "dev", "--name", "api", "--owner", "team"],
        "--purpose",
    );
    refuse(
        &[
            "--env",
            "dev",
            "--name",
            "api",
            "--owner",
            " ",
            "--purpose",
            "p",
        ],
        "owner is required",
    );
    refuse(
        &[
            "--env",
            "prod",
            "--name",
            "api",
            "--owner",
            "o",
            "--purpose",
            "p",
        ],
        "unknown environment",
    );
    refuse(
        &[
            "--env",
            "dev",
            "--name",
            "a/../b",
            "--owner",
            "o",
            "--purpose",
            "p",
        ],
        "identity name",
    );
    refuse(
        &[&base[..], &["--audience", "two words"]].concat(),
        "audience",
    );
    refuse(&[&base[..], &["--jwt-ttl", "5s"]].concat(), "JWT TTL");
    refuse(&[&base[..], &["--x509-ttl", "30d"]].concat(), "X.509 TTL");
    refuse(
        &[&base[..], &["--jwt-ttl", "soon"]].concat(),
        "not a duration",
    );
    refuse(
        &[&base[..], &["--selector", "novalue"]].concat(),
        "KEY=VALUE",
    );
    // None of that created anything.
    assert_eq!(
        broker
            .cli_ok(&["identity", "list", "--output", "json"])
            .trim(),
        "[]"
    );

    broker.cli_ok(&[&["identity", "create"][..], &base[..]].concat());
    refuse(&base, "already exists");
    let out = broker.cli(&["identity", "show", "--env", "dev", "--name", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
    // Join tokens: only for existing, active identities, with sane limits.
    let out = broker.cli(&["token", "create", "--env", "dev", "--name", "nope"]);
    assert!(!out.status.success());
    let out = broker.cli(&[
        "token", "create", "--env", "dev", "--name", "api", "--ttl", "30d",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exceeds"));
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "api"]);
    let out = broker.cli(&["token", "create", "--env", "dev", "--name", "api"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));
}

#[tokio::test]
async fn inventory_lists_owners_and_filters() {
    // Selectors must name a configured attestor; its keys need not be
    // reachable for identities to be registered.
    let attestor = "[[attestors]]\nkind = \"kubernetes\"\nname = \"k8s\"\nenvironment = \"prod\"\nissuer = \"https://k8s.example\"\naudience = \"credbroker\"\njwks_file = \"/nonexistent/jwks.json\"\n";
    let broker = TestBroker::start_with(&["dev", "prod"], attestor).await;
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "prod",
        "--name",
        "payments/api",
        "--owner",
        "team-pay",
        "--purpose",
        "charges cards",
        "--audience",
        "billing",
        "--scope",
        "charge",
        "--selector",
        "k8s:ns=payments",
        "--jwt-ttl",
        "2m",
        "--x509-ttl",
        "30m",
        "--expires-at",
        "2035-01-01T00:00:00Z",
    ]);
    broker.create_identity("dev", "batch", &[], &[]);
    let all: serde_json::Value =
        serde_json::from_str(&broker.cli_ok(&["identity", "list", "--output", "json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let prod: serde_json::Value = serde_json::from_str(
        &broker.cli_ok(&["identity", "list", "--env", "prod", "--output", "json"]),
    )
    .unwrap();
    let entry = &prod[0];
    assert_eq!(entry["spiffe_id"], "spiffe://prod.example.org/payments/api");
    assert_eq!(entry["owner"], "team-pay");
    assert_eq!(entry["purpose"], "charges cards");
    assert_eq!(entry["selectors"][0], "k8s:ns=payments");
    assert_eq!(entry["jwt_ttl_seconds"], 120);
    assert_eq!(entry["x509_ttl_seconds"], 1800);
    assert_eq!(entry["expires_at"], "2035-01-01T00:00:00Z");
    assert_eq!(entry["status"], "active");
    let by_owner = broker.cli_ok(&["identity", "list", "--owner", "team-test"]);
    assert!(
        by_owner.contains("batch") && !by_owner.contains("payments"),
        "{by_owner}"
    );
    let table = broker.cli_ok(&["identity", "list"]);
    assert!(table.starts_with("ENV"), "{table}");
}
