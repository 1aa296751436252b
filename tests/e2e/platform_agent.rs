//! The real agent attesting with platform evidence — a Kubernetes token
//! file, an OIDC token file, a GitHub Actions runner, the EC2 metadata
//! service — and the AWS instance identity checks.

use std::time::{Duration, Instant};

use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig, SourceError};
use credbroker_e2e::issuer::{RsaKey, TestIssuer, iid_document};
use credbroker_e2e::{TestBroker, agent, x509};
use credbroker_proto::v1::{AwsIid, attest_request};
use serde_json::json;
use tonic::Code;

use super::platform_attestation::{Platform, attest, attest_with_csr, csr};

/// Runs the agent once with `evidence` args; returns the SPIFFE ID it got.
/// Async, so the test's own servers (runner, IMDS) keep answering.
async fn agent_once(
    broker: &TestBroker,
    out: &std::path::Path,
    evidence: &[&str],
    env: &[(&str, &str)],
) -> String {
    let bundle = broker.bundle_path();
    let url = broker.url();
    let mut args = vec![
        "--broker",
        url.as_str(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--once",
    ];
    args.extend_from_slice(evidence);
    let output = {
        let mut cmd = tokio::process::Command::new(credbroker_e2e::binary("credbroker-agent"));
        cmd.args(&args)
            .env_remove("CREDBROKER_JOIN_TOKEN")
            .env_remove("CREDBROKER_BROKER");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().await.expect("run agent")
    };
    assert!(
        output.status.success(),
        "agent {evidence:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        broker.log()
    );
    let pem = std::fs::read(out.join("svid.pem")).expect("svid.pem");
    let certs = x509::pem_certs(&pem);
    let leaf = x509::parse(&certs[0]);
    x509::uri_sans(&leaf).remove(0)
}

#[tokio::test]
async fn the_agent_attests_with_each_kind_of_platform_evidence() {
    let p = Platform::start().await;
    let b = &p.broker;
    // Kubernetes: the projected token file.
    let dir = b.scratch("k8s");
    let token_file = dir.join("token");
    std::fs::write(&token_file, p.k8s_token("payments", "api")).unwrap();
    let id = agent_once(
        b,
        &dir.join("out"),
        &["--k8s-token", token_file.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(id, "spiffe://prod.example.org/payments-api");
    // The file is read at every attestation: a rotated token for another
    // service account attests as what the new token says.
    std::fs::write(&token_file, p.k8s_token("web", "x")).unwrap();
    let out = agent(&[
        "--broker",
        &b.url(),
        "--bundle",
        b.bundle_path().to_str().unwrap(),
        "--out-dir",
        dir.join("out2").to_str().unwrap(),
        "--once",
        "--k8s-token",
        token_file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("several identities match"));

    // OIDC token file (ES256, GitHub-shaped claims).
    let dir = b.scratch("oidc");
    let file = dir.join("id-token");
    std::fs::write(&file, p.github_token("agent-run-1")).unwrap();
    let id = agent_once(
        b,
        &dir.join("out"),
        &["--oidc-token", file.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(id, "spiffe://prod.example.org/deploy");

    // GitHub Actions: the runner's token endpoint, with its bearer token.
    p.ci.set_github_token("runner-secret", &p.github_token("agent-run-2"));
    let dir = b.scratch("gha");
    let request_url = format!("{}/gha-token?api-version=2.0", p.ci.url());
    let env = [
        ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
        ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-secret"),
    ];
    let id = agent_once(
        b,
        &dir.join("out"),
        &["--github-actions-audience", "credbroker"],
        &env,
    )
    .await;
    assert_eq!(id, "spiffe://prod.example.org/deploy");
    assert!(!b.log().contains("runner-secret"));
}

/// A broker with an `aws` attestor trusting a locally made certificate, an
/// identity for one account and region, and a metadata service.
async fn aws_platform() -> (TestBroker, RsaKey, TestIssuer, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let aws = RsaKey::generate(keys.path(), "aws");
    let imds = TestIssuer::start(json!({"keys": []})).await;
    let toml = format!(
        "[[attestors]]\nkind = \"aws_iid\"\nname = \"aws\"\nenvironment = \"prod\"\ncertificate_file = {:?}\n",
        aws.cert_path
    );
    let broker = TestBroker::start_with(&["prod"], &toml).await;
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "prod",
        "--name",
        "batch",
        "--owner",
        "o",
        "--purpose",
        "p",
        "--selector",
        "aws:account=123456789012",
        "--selector",
        "aws:region=eu-west-1",
    ]);
    (broker, aws, imds, keys)
}

fn pending_now() -> String {
    humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() - std::time::Duration::from_secs(60),
    )
    .to_string()
}

#[tokio::test]
async fn aws_instance_identity_documents() {
    let (b, aws, imds, keys) = aws_platform().await;
    // Through the agent and IMDSv2.
    let doc = iid_document("i-0agent", &pending_now());
    imds.set_imds(doc.clone(), aws.sign_b64(&doc));
    let dir = b.scratch("aws");
    let id = agent_once(
        &b,
        &dir.join("out"),
        &["--aws-iid", "--aws-imds-url", &imds.url()],
        &[],
    )
    .await;
    assert_eq!(id, "spiffe://prod.example.org/batch");

    let iid = |doc: &[u8], sig: String| {
        attest_request::Evidence::AwsIid(AwsIid {
            document: doc.to_vec(),
            signature: sig,
        })
    };
    // An instance is bound to the key it first attested with: the same key
    // again is fine, a copied document from another key is not.
    let doc = iid_document("i-0raw", &pending_now());
    let key_csr = csr();
    attest_with_csr(&b, iid(&doc, aws.sign_b64(&doc)), None, key_csr.clone())
        .await
        .unwrap();
    attest_with_csr(&b, iid(&doc, aws.sign_b64(&doc)), None, key_csr)
        .await
        .expect("same key");
    let err = attest(&b, iid(&doc, aws.sign_b64(&doc)), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message()
            .contains("instance i-0raw already attested with another key"),
        "{err:?}"
    );
    // Signature by another key, or a changed document.
    let other = RsaKey::generate(keys.path(), "not-aws");
    let err = attest(&b, iid(&doc, other.sign_b64(&doc)), None)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("document signature does not verify"),
        "{err:?}"
    );
    let mut changed = doc.clone();
    let at = changed
        .windows(12)
        .position(|w| w == b"123456789012")
        .unwrap();
    changed[at] = b'9';
    let err = attest(&b, iid(&changed, aws.sign_b64(&doc)), None)
        .await
        .unwrap_err();
    assert!(err.message().contains("does not verify"), "{err:?}");
    // Too old (launched in January; default max_document_age 24h).
    let old = iid_document("i-0old", "2026-01-01T00:00:00Z");
    let err = attest(&b, iid(&old, aws.sign_b64(&old)), None)
        .await
        .unwrap_err();
    assert!(
        err.message().contains("older than max_document_age"),
        "{err:?}"
    );
    // Another account matches nothing.
    let foreign = String::from_utf8(iid_document("i-0foreign", &pending_now()))
        .unwrap()
        .replace("123456789012", "210987654321");
    let err = attest(
        &b,
        iid(foreign.as_bytes(), aws.sign_b64(foreign.as_bytes())),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("aws:account=210987654321"),
        "{err:?}"
    );
    let log = b.log();
    assert!(
        log.contains("aws_iid:aws instance=i-0raw account=123456789012"),
        "{log}"
    );
}

#[tokio::test]
async fn a_source_with_a_token_file_rereads_it_and_re_attests_after_expiry() {
    // [ttl] must come after the attestor tables, which Platform appends.
    let short = "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"4s\"\ndefault_jwt = \"4s\"\n";
    let mut p = Platform::start_with(short).await;
    p.broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "prod",
        "--name",
        "short",
        "--owner",
        "o",
        "--purpose",
        "p",
        "--selector",
        "prod-cluster:ns=batch",
        "--selector",
        "prod-cluster:sa=job",
    ]);
    let dir = p.broker.scratch("source");
    let file = dir.join("token");
    // First the file holds a token that matches nothing: refused, and
    // retried, because the file will change.
    std::fs::write(&file, p.k8s_token("batch", "other")).unwrap();
    let source = CredentialSource::start(SourceConfig {
        broker: p.broker.url(),
        bundle_pem: p.broker.bundle_pem(),
        evidence: Evidence::KubernetesTokenFile(file.clone()),
        jwt_audiences: vec![],
        policy: RefreshPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RefreshPolicy::default()
        },
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    match source.current() {
        Err(SourceError::Unavailable(reason)) => {
            assert!(reason.contains("no identity in prod matches"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    std::fs::write(&file, p.k8s_token("batch", "job")).unwrap();
    let creds = tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .expect("attests once the file is right")
        .unwrap();
    assert_eq!(creds.identity, ("prod".to_owned(), "short".to_owned()));
    // An outage longer than the SVID's life: expiry is reported, then the
    // source re-attests by itself with the (re-read) token.
    p.broker.stop().await;
    let deadline = Instant::now() + Duration::from_secs(8);
    while source.current().is_ok() {
        assert!(Instant::now() < deadline, "expiry never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&file, p.k8s_token("batch", "job")).unwrap();
    p.broker.restart().await;
    let recovered = tokio::time::timeout(Duration::from_secs(15), source.ready())
        .await
        .expect("re-attests by itself")
        .unwrap();
    assert!(!recovered.svid.remaining().is_zero());
    assert_ne!(recovered.svid.serial, creds.svid.serial);
}
