//! Named operators with roles: `credbroker operator create|list|revoke`,
//! `--operator DIR` on every admin command, the role each RPC needs, and
//! revocation that takes effect at the next call.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use credbroker_e2e::{TestBroker, stolen};
use credbroker_proto::v1::ListIdentitiesRequest;
use credbroker_proto::v1::admin_client::AdminClient;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use serde_json::Value;
use tonic::Code;

/// `operator create` as the bootstrap admin; returns the operator directory.
fn create(broker: &TestBroker, name: &str, role: &str) -> PathBuf {
    let dir = broker.scratch("operators").join(name);
    broker.cli_ok(&[
        "operator",
        "create",
        "--name",
        name,
        "--role",
        role,
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    dir
}

/// Runs the CLI as the operator in `dir`.
fn as_operator(broker: &TestBroker, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut full = args.to_vec();
    full.extend(["--operator", dir.to_str().unwrap()]);
    broker.cli(&full)
}

fn identity_of(dir: &Path) -> (String, String) {
    (
        std::fs::read_to_string(dir.join("operator.pem")).unwrap(),
        std::fs::read_to_string(dir.join("operator.key")).unwrap(),
    )
}

/// Audit entries of `actor` (as the bootstrap admin sees them).
fn audit_of(broker: &TestBroker, actor: &str) -> Vec<Value> {
    let out = broker.cli_ok(&["audit", "--actor", actor, "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn serial_of(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("operator.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

#[tokio::test]
async fn operator_create_writes_a_private_key_and_refuses_bad_input() {
    let broker = TestBroker::start().await;
    let dir = create(&broker, "alice", "auditor");
    let mode = std::fs::metadata(dir.join("operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.join("broker-ca.pem").exists());
    let pem = std::fs::read(dir.join("operator.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(san.contains("credbroker-operator://alice"), "{san}");

    let list = broker.cli_ok(&["operator", "list"]);
    assert!(list.contains("alice") && list.contains("auditor"), "{list}");

    // A second live certificate for the same name, a bad name, a reserved
    // name, a bad TTL, an out-dir already holding an operator: each a
    // clear error, nothing created.
    for (args, needle) in [
        (vec!["--name", "alice", "--role", "admin"], "already holds"),
        (
            vec!["--name", "Bad/Name", "--role", "admin"],
            "may hold only",
        ),
        (vec!["--name", "admin", "--role", "admin"], "reserved"),
        (
            vec!["--name", "bob", "--role", "admin", "--ttl", "10s"],
            "out of bounds",
        ),
    ] {
        let fresh = broker.scratch("refused").join(args[1].replace('/', "_"));
        let mut full = vec!["operator", "create", "--out-dir", fresh.to_str().unwrap()];
        full.extend(args.iter().copied());
        let out = broker.cli(&full);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(!fresh.join("operator.key").exists(), "{args:?} wrote a key");
    }
    let out = broker.cli(&[
        "operator",
        "create",
        "--name",
        "carol",
        "--role",
        "auditor",
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("exists already"), "{}", stderr(&out));
    let list = broker.cli_ok(&["operator", "list", "--all", "--output", "json"]);
    let list: Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn an_auditor_lists_but_is_refused_a_revoke_and_the_refusal_is_audited() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let audra = create(&broker, "audra", "auditor");

    let out = as_operator(&broker, &audra, &["identity", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("api"));

    let out = as_operator(
        &broker,
        &audra,
        &["revoke", "--identity", "dev/api", "--reason", "test"],
    );
    assert!(!out.status.success(), "an auditor revoked");
    assert!(
        stderr(&out).contains("PermissionDenied") && stderr(&out).contains("needs role operator"),
        "{}",
        stderr(&out)
    );
    let revocations = broker.cli_ok(&["revoke", "--list", "--output", "json"]);
    assert_eq!(
        revocations.trim(),
        "[]",
        "the refused revoke changed something"
    );

    let entries = audit_of(&broker, "audra");
    let refusal = entries
        .iter()
        .find(|e| e["action"] == "revoke")
        .unwrap_or_else(|| panic!("no audited revoke by audra: {entries:?}"));
    assert_eq!(refusal["decision"], "denied");
    assert!(
        refusal["reason"]
            .as_str()
            .unwrap()
            .contains("needs role operator")
    );
}

#[tokio::test]
async fn an_operator_revokes_but_cannot_rotate_keys_and_its_actions_carry_its_name() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let oscar = create(&broker, "oscar", "operator");

    let out = as_operator(
        &broker,
        &oscar,
        &["revoke", "--identity", "dev/api", "--reason", "incident 7"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_operator(&broker, &oscar, &["keys", "rotate", "--env", "dev"]);
    assert!(!out.status.success(), "an operator rotated keys");
    assert!(
        stderr(&out).contains("PermissionDenied") && stderr(&out).contains("needs role admin"),
        "{}",
        stderr(&out)
    );
    let eve = broker.scratch("operators").join("eve");
    let out = as_operator(
        &broker,
        &oscar,
        &[
            "operator",
            "create",
            "--name",
            "eve",
            "--role",
            "admin",
            "--out-dir",
            eve.to_str().unwrap(),
        ],
    );
    assert!(
        stderr(&out).contains("needs role admin"),
        "{}",
        stderr(&out)
    );
    assert!(
        !eve.exists(),
        "a refused operator create left {}",
        eve.display()
    );

    let entries = audit_of(&broker, "oscar");
    let revoke = entries
        .iter()
        .find(|e| e["action"] == "revoke" && e["decision"] == "done")
        .unwrap_or_else(|| panic!("no revoke by oscar in the audit log: {entries:?}"));
    assert_eq!(revoke["actor"], "oscar");
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "keys.rotate" && e["decision"] == "denied"),
        "{entries:?}"
    );
    // The operator's own creation is audited with the bootstrap admin as actor.
    let by_admin = audit_of(&broker, "admin");
    assert!(
        by_admin.iter().any(|e| e["action"] == "operator.create"
            && e["decision"] == "done"
            && e["serial"] == serial_of(&oscar).as_str()),
        "{by_admin:?}"
    );
}

#[tokio::test]
async fn a_revoked_operator_is_refused_at_once_and_not_revived_by_a_new_certificate() {
    let broker = TestBroker::start().await;
    let mallory = create(&broker, "mallory", "admin");
    let channel = broker.channel(Some(identity_of(&mallory))).await.unwrap();
    let mut open = AdminClient::new(channel);
    open.list_identities(ListIdentitiesRequest::default())
        .await
        .expect("an admin operator lists");

    broker.cli_ok(&[
        "operator",
        "revoke",
        "--name",
        "mallory",
        "--reason",
        "left the team",
    ]);
    // The same connection, already authenticated: refused at the next call.
    let err = open
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");

    // A new certificate under the same name works; the old one stays dead.
    let again = broker.scratch("operators").join("mallory-2");
    broker.cli_ok(&[
        "operator",
        "create",
        "--name",
        "mallory",
        "--role",
        "auditor",
        "--out-dir",
        again.to_str().unwrap(),
    ]);
    let out = as_operator(&broker, &again, &["identity", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = open
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "revived: {err:?}");
    let fresh = broker.channel(Some(identity_of(&mallory))).await.unwrap();
    let err = AdminClient::new(fresh)
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "revived on a new connection: {err:?}"
    );
}

/// A certificate naming operator `name` with `serial` (hex), signed by
/// `issuer`: (PEM certificate, PEM key).
fn forge_operator(
    issuer: &rcgen::Issuer<'static, KeyPair>,
    name: &str,
    serial: &str,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "credbroker");
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let uri = format!("credbroker-operator://{name}");
    params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let bytes: Vec<u8> = (0..serial.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial[i..i + 2], 16).unwrap())
        .collect();
    params.serial_number = Some(SerialNumber::from_slice(&bytes));
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::minutes(10);
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn a_certificate_from_another_ca_naming_an_operator_is_refused() {
    let broker = TestBroker::start().await;
    let alice = create(&broker, "alice", "admin");
    let serial = serial_of(&alice);

    // Signed by the dev environment's CA (which TLS accepts: workloads
    // present SVIDs), naming alice with alice's own serial.
    let (_, dev_ca) = stolen::environment_ca(&broker, "dev").await;
    let forged = forge_operator(&dev_ca, "alice", &serial);
    let mut client = AdminClient::new(broker.channel(Some(forged)).await.unwrap());
    let err = client
        .list_identities(ListIdentitiesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("admin CA"), "{err:?}");

    // Another broker's operator alice (its own admin CA): refused too.
    let other = TestBroker::start().await;
    let foreign = create(&other, "alice", "admin");
    let refused = match broker.channel(Some(identity_of(&foreign))).await {
        Err(_) => true,
        Ok(channel) => AdminClient::new(channel)
            .list_identities(ListIdentitiesRequest::default())
            .await
            .is_err(),
    };
    assert!(
        refused,
        "another broker's operator certificate was accepted"
    );

    // The genuine one still works.
    let mut genuine = AdminClient::new(broker.channel(Some(identity_of(&alice))).await.unwrap());
    genuine
        .list_identities(ListIdentitiesRequest::default())
        .await
        .expect("alice's own certificate");
}

#[tokio::test]
async fn operators_and_their_revocations_survive_a_restart() {
    let mut broker = TestBroker::start().await;
    let kept = create(&broker, "kept", "auditor");
    let gone = create(&broker, "gone", "auditor");
    broker.cli_ok(&[
        "operator",
        "revoke",
        "--name",
        "gone",
        "--reason",
        "rotated out",
    ]);
    broker.restart().await;
    let out = as_operator(&broker, &kept, &["keys", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = as_operator(&broker, &gone, &["keys", "list"]);
    assert!(
        !out.status.success(),
        "a revoked operator works after a restart"
    );
    assert!(stderr(&out).contains("revoked"), "{}", stderr(&out));
    let list = broker.cli_ok(&["operator", "list", "--all"]);
    assert!(
        list.contains("kept") && list.contains("gone") && list.contains("revoked"),
        "{list}"
    );
}

/// The issuer key identifier of the certificate in `pem` (which admin CA).
fn aki_of(pem: &[u8]) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    credbroker_client::authority_key_id(&cert).unwrap()
}

#[tokio::test]
async fn the_admin_ca_rotates_without_cutting_anyone_off() {
    let mut broker = TestBroker::start().await;
    let admin_keys = |broker: &TestBroker| -> Vec<Value> {
        serde_json::from_str::<Value>(&broker.cli_ok(&["keys", "list", "--output", "json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| k["kind"] == "admin")
            .cloned()
            .collect()
    };
    let before = admin_keys(&broker);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["state"], "active");
    let old_ca = before[0]["id"].as_str().unwrap().to_owned();
    let alice = create(&broker, "alice", "auditor");
    assert_eq!(
        aki_of(&std::fs::read(alice.join("operator.pem")).unwrap()),
        old_ca
    );

    broker.cli_ok(&["keys", "rotate", "--kind", "admin"]);
    let after = admin_keys(&broker);
    let state_of = |id: &str| {
        after
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of(&old_ca).as_deref(), Some("previous"), "{after:?}");
    let new_ca = after.iter().find(|k| k["state"] == "active").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_ca, old_ca);

    // The bootstrap admin certificate moved to the new CA; an operator of the
    // old one keeps working until its certificate expires; a new operator
    // comes from the new CA. Both hold across a restart.
    let admin_pem = std::fs::read(broker.data_dir().join("admin/admin.pem")).unwrap();
    assert_eq!(aki_of(&admin_pem), new_ca);
    let bob = create(&broker, "bob", "auditor");
    assert_eq!(
        aki_of(&std::fs::read(bob.join("operator.pem")).unwrap()),
        new_ca
    );
    broker.restart().await;
    for dir in [&alice, &bob] {
        let out = as_operator(&broker, dir, &["identity", "list"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    broker.cli_ok(&["identity", "list"]);
    // Operators cannot rotate it; the environment is not needed for it.
    let out = as_operator(&broker, &alice, &["keys", "rotate", "--kind", "admin"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs role admin"),
        "{}",
        stderr(&out)
    );
}
