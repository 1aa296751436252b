//! Attestation with join tokens: every way a token can be wrong, and the
//! rule that a refused request spends nothing.

use std::time::Duration;

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::{AttestRequest, attest_request};
use tonic::Code;

use credbroker_e2e::x509::csr;

fn attest_request(token: &str, csr: Vec<u8>) -> AttestRequest {
    AttestRequest {
        evidence: Some(attest_request::Evidence::JoinToken(token.to_owned())),
        csr,
        expected_identity: None,
        jwts: vec![],
    }
}

#[tokio::test]
async fn join_tokens_are_single_use_expire_and_bind_one_identity() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "a", &["x"], &[]);
    broker.create_identity("dev", "b", &["x"], &[]);
    let client = broker.client().await;

    // Reused.
    let secret = broker.join_token("dev", "a");
    let token = Evidence::JoinToken(secret.clone());
    client.attest(&token, &[]).await.expect("first use");
    let err = client.attest(&token, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
    assert!(err.to_string().contains("already used"), "{err}");
    // Both decisions are audit events; the secret appears in neither.
    let log = broker.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("credbroker::audit"))
        .collect();
    assert!(audit.iter().any(|l| l.contains(r#"action="attest""#)
        && l.contains(r#"decision="issued""#)
        && l.contains(r#"identity="dev/a""#)
        && l.contains("serial=")
        && l.contains("peer=")));
    assert!(
        audit
            .iter()
            .any(|l| l.contains(r#"decision="denied""#) && l.contains("already used"))
    );
    assert!(!log.contains(&secret), "join token leaked into the log");

    // Unknown.
    let err = client
        .attest(&Evidence::JoinToken("cbjt_not-a-real-token".into()), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("not recognized"), "{err}");

    // Expired.
    let short = broker
        .cli_ok(&[
            "token", "create", "--env", "dev", "--name", "a", "--ttl", "1s",
        ])
        .trim()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = client
        .attest(&Evidence::JoinToken(short), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
    assert!(err.to_string().contains("expired"), "{err}");

    // For another identity: refused, and the token is not spent.
    let token_for_a = Evidence::JoinToken(broker.join_token("dev", "a"));
    let err = client
        .attest_as(&token_for_a, Some(("dev", "b")), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(err.to_string().contains("different identity"), "{err}");
    let ok = client
        .attest_as(&token_for_a, Some(("dev", "a")), &[])
        .await
        .expect("still usable");
    assert_eq!(ok.svid.spiffe_id, "spiffe://dev.example.org/a");

    // A multi-use token allows exactly that many attestations.
    let two = Evidence::JoinToken(
        broker
            .cli_ok(&[
                "token", "create", "--env", "dev", "--name", "b", "--uses", "2",
            ])
            .trim()
            .to_owned(),
    );
    client.attest(&two, &[]).await.unwrap();
    client.attest(&two, &[]).await.unwrap();
    assert!(client.attest(&two, &[]).await.is_err());
}

#[tokio::test]
async fn a_refused_request_does_not_spend_the_token() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "svc", &["allowed"], &["read"]);
    let token = broker.join_token("dev", "svc");
    let mut raw = broker.raw_workload(None).await;

    // Garbage CSR.
    let err = raw
        .attest(attest_request(&token, b"not a csr".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("CSR"), "{}", err.message());
    // Oversized CSR (over 8 KiB, within the 64 KiB message limit).
    let err = raw
        .attest(attest_request(&token, vec![0x30; 16 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());
    // Past the message limit tonic refuses it before decoding.
    let err = raw
        .attest(attest_request(&token, vec![0x30; 64 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("limit"), "{}", err.message());
    // Empty CSR.
    let err = raw
        .attest(attest_request(&token, vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // No evidence.
    let mut no_evidence = attest_request(&token, csr());
    no_evidence.evidence = None;
    assert_eq!(
        raw.attest(no_evidence).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // An audience the identity may not have.
    let client = broker.client().await;
    let err = client
        .attest(
            &Evidence::JoinToken(token.clone()),
            &[JwtRequest::audience("forbidden")],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));

    // After all of that, the token still works once.
    raw.attest(attest_request(&token, csr()))
        .await
        .expect("token unspent");
    assert_eq!(
        raw.attest(attest_request(&token, csr()))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn inactive_identities_get_nothing() {
    let broker = TestBroker::start().await;
    for name in ["disabled", "retired"] {
        broker.create_identity("dev", name, &["x"], &[]);
    }
    let client = broker.client().await;
    let disabled = Evidence::JoinToken(broker.join_token("dev", "disabled"));
    let retired = Evidence::JoinToken(broker.join_token("dev", "retired"));
    broker.cli_ok(&[
        "identity", "disable", "--env", "dev", "--name", "disabled", "--reason", "test",
    ]);
    broker.cli_ok(&["identity", "retire", "--env", "dev", "--name", "retired"]);
    for (evidence, word) in [(&disabled, "disabled"), (&retired, "retired")] {
        let err = client.attest(evidence, &[]).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
        assert!(err.to_string().contains(word), "{err}");
    }
    // A disabled identity can come back; its token was not spent.
    broker.cli_ok(&["identity", "enable", "--env", "dev", "--name", "disabled"]);
    client.attest(&disabled, &[]).await.expect("re-enabled");
    // A retired one cannot.
    let out = broker.cli(&["identity", "enable", "--env", "dev", "--name", "retired"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"));

    // Past its retirement date an identity is refused too, with the reason.
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "short-lived",
        "--owner",
        "o",
        "--purpose",
        "p",
        "--expires-at",
        "2s",
    ]);
    let token = Evidence::JoinToken(broker.join_token("dev", "short-lived"));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let err = client.attest(&token, &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(err.to_string().contains("expired"), "{err}");
    let list = broker.cli_ok(&["identity", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains("short-lived") && l.contains("expired")),
        "{list}"
    );
}
