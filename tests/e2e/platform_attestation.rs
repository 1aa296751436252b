//! Platform attestation with JWTs (Kubernetes service-account tokens and
//! OIDC tokens) from issuers this test starts: every way a token can be
//! wrong, selector matching, and that selectors are really enforced.

use std::time::Duration;

use credbroker_e2e::TestBroker;
use credbroker_e2e::issuer::{
    EcKey, RsaKey, Signer, TestIssuer, github_claims, hs256, jwt_attestor_toml, k8s_claims, sign,
    unsigned,
};
use credbroker_proto::v1::{AttestRequest, AttestResponse, IdentityRef, attest_request};
use serde_json::json;
use tonic::{Code, Status};

pub(crate) use credbroker_e2e::x509::csr;

pub(crate) async fn attest(
    broker: &TestBroker,
    evidence: attest_request::Evidence,
    expected: Option<(&str, &str)>,
) -> Result<AttestResponse, Status> {
    attest_with_csr(broker, evidence, expected, csr()).await
}

pub(crate) async fn attest_with_csr(
    broker: &TestBroker,
    evidence: attest_request::Evidence,
    expected: Option<(&str, &str)>,
    csr: Vec<u8>,
) -> Result<AttestResponse, Status> {
    broker
        .raw_workload(None)
        .await
        .attest(AttestRequest {
            evidence: Some(evidence),
            csr,
            expected_identity: expected.map(|(env, name)| IdentityRef {
                env: env.into(),
                name: name.into(),
            }),
            jwts: vec![],
        })
        .await
        .map(|r| r.into_inner())
}

pub(crate) fn k8s(token: String) -> attest_request::Evidence {
    attest_request::Evidence::KubernetesToken(token)
}

pub(crate) fn oidc(token: String) -> attest_request::Evidence {
    attest_request::Evidence::OidcToken(token)
}

pub(crate) fn name_of(r: &AttestResponse) -> String {
    let id = r.identity.as_ref().unwrap();
    format!("{}/{}", id.env, id.name)
}

#[track_caller]
pub(crate) fn refused(result: Result<AttestResponse, Status>, code: Code, needle: &str) {
    let err = result.expect_err("attestation should be refused");
    assert_eq!(err.code(), code, "{needle}: {err:?}");
    assert!(
        err.message().contains(needle),
        "want {needle:?}, got {:?}",
        err.message()
    );
}

/// A broker with a `prod-cluster` Kubernetes attestor (JWKS by URL), a
/// `dev-cluster` one (JWKS file, environment dev) and a single-use `ci`
/// OIDC attestor (discovery), and identities behind them.
pub(crate) struct Platform {
    pub broker: TestBroker,
    pub cluster: TestIssuer,
    pub ci: TestIssuer,
    pub rsa: RsaKey,
    pub ec: EcKey,
    pub dev_rsa: RsaKey,
    _keys: tempfile::TempDir,
}

pub(crate) const DEV_ISSUER: &str = "https://dev-cluster.example";

impl Platform {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Like [`Platform::start`], with `extra` TOML (e.g. a `[ttl]` table).
    pub async fn start_with(extra: &str) -> Self {
        let keys = tempfile::tempdir().unwrap();
        let rsa = RsaKey::generate(keys.path(), "cluster");
        let dev_rsa = RsaKey::generate(keys.path(), "dev-cluster");
        let ec = EcKey::generate();
        let cluster = TestIssuer::start(json!({"keys": [rsa.jwk("k1")]})).await;
        let ci = TestIssuer::start(json!({"keys": [ec.jwk("gh1")]})).await;
        let dev_jwks = keys.path().join("dev-jwks.json");
        std::fs::write(&dev_jwks, json!({"keys": [dev_rsa.jwk("d1")]}).to_string()).unwrap();
        let mut toml = jwt_attestor_toml(
            "kubernetes",
            "prod-cluster",
            "prod",
            &cluster.url(),
            &format!(
                "jwks_url = \"{}/jwks\"\nmax_token_lifetime = \"2h\"",
                cluster.url()
            ),
        );
        toml += &jwt_attestor_toml(
            "kubernetes",
            "dev-cluster",
            "dev",
            DEV_ISSUER,
            &format!("jwks_file = {:?}", dev_jwks),
        );
        toml += &jwt_attestor_toml("oidc", "ci", "prod", &ci.url(), "single_use = true");
        toml += extra;
        let broker = TestBroker::start_with(&["dev", "prod"], &toml).await;
        let create = |name: &str, selectors: &[&str]| {
            let mut args = vec![
                "identity",
                "create",
                "--env",
                "prod",
                "--name",
                name,
                "--owner",
                "team",
                "--purpose",
                "test",
                "--audience",
                "billing",
            ];
            for s in selectors {
                args.extend(["--selector", s]);
            }
            broker.cli_ok(&args);
        };
        create(
            "payments-api",
            &["prod-cluster:ns=payments", "prod-cluster:sa=api"],
        );
        create("web-a", &["prod-cluster:ns=web"]);
        create("web-b", &["prod-cluster:ns=web"]);
        create(
            "deploy",
            &["ci:repository=acme/api", "ci:ref=refs/heads/main"],
        );
        Self {
            broker,
            cluster,
            ci,
            rsa,
            ec,
            dev_rsa,
            _keys: keys,
        }
    }

    pub fn k8s_token(&self, ns: &str, sa: &str) -> String {
        let claims = k8s_claims(&self.cluster.url(), "credbroker", ns, sa, "api-7d9f");
        sign(&claims, Signer::Rs256(&self.rsa, "k1"))
    }

    pub fn github_token(&self, jti: &str) -> String {
        let claims = github_claims(&self.ci.url(), "credbroker", "acme/api", jti);
        sign(&claims, Signer::Es256(&self.ec, "gh1"))
    }
}

#[tokio::test]
async fn kubernetes_tokens_are_verified_claim_by_claim() {
    let p = Platform::start().await;
    let b = &p.broker;
    let iss = p.cluster.url();
    let ok = attest(b, k8s(p.k8s_token("payments", "api")), None)
        .await
        .unwrap();
    assert_eq!(name_of(&ok), "prod/payments-api");

    let signed = |claims: serde_json::Value| k8s(sign(&claims, Signer::Rs256(&p.rsa, "k1")));
    let base = k8s_claims(&iss, "credbroker", "payments", "api", "api-7d9f");
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        c
    };
    let now = credbroker_e2e::issuer::now();
    let unauth = Code::Unauthenticated;
    refused(
        attest(
            b,
            signed(with("iss", json!("https://elsewhere.example"))),
            None,
        )
        .await,
        unauth,
        "no kubernetes attestor is configured for issuer \"https://elsewhere.example\"",
    );
    refused(
        attest(b, signed(with("aud", json!(["vault"]))), None).await,
        unauth,
        "aud does not contain \"credbroker\"",
    );
    let mut expired = with("exp", json!(now - 120));
    expired["iat"] = json!(now - 1800);
    expired["nbf"] = json!(now - 1800);
    refused(
        attest(b, signed(expired), None).await,
        unauth,
        "token expired",
    );
    refused(
        attest(b, signed(with("nbf", json!(now + 600))), None).await,
        unauth,
        "token not yet valid",
    );
    refused(
        attest(b, signed(with("exp", json!(now + 3 * 3600))), None).await,
        unauth,
        "exceeds max_token_lifetime 2h",
    );
    let mut no_k8s = base.clone();
    no_k8s.as_object_mut().unwrap().remove("kubernetes.io");
    refused(
        attest(b, signed(no_k8s), None).await,
        unauth,
        "no kubernetes.io claim",
    );

    // Tampered: the payload says another namespace, the signature is the
    // original's.
    let good = p.k8s_token("payments", "api");
    let parts: Vec<&str> = good.split('.').collect();
    let evil = with("kubernetes.io", {
        let mut k = base["kubernetes.io"].clone();
        k["namespace"] = json!("web");
        k
    });
    use base64::Engine;
    let evil_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(evil.to_string());
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    refused(
        attest(b, k8s(tampered), None).await,
        unauth,
        "signature does not verify",
    );

    refused(
        attest(b, k8s(unsigned(&base)), None).await,
        unauth,
        "alg \"none\"",
    );
    refused(
        attest(b, k8s(hs256(&base, &p.rsa.public_pem, "k1")), None).await,
        unauth,
        "HMAC is never accepted",
    );
    // Bad input, not a signature problem.
    refused(
        attest(b, k8s("not-a-jwt".into()), None).await,
        Code::InvalidArgument,
        "compact JWS",
    );

    // Nothing about the tokens reached the log.
    let log = b.log();
    assert!(!log.contains(&good), "token leaked into the log");
    assert!(
        !log.contains(&parts[2][..20]),
        "signature leaked into the log"
    );
}

#[tokio::test]
async fn unknown_kid_refreshes_the_jwks_and_a_rotated_key_works() {
    let p = Platform::start().await;
    let keys = tempfile::tempdir().unwrap();
    let next = RsaKey::generate(keys.path(), "next");
    let claims = k8s_claims(&p.cluster.url(), "credbroker", "payments", "api", "p");
    let token = sign(&claims, Signer::Rs256(&next, "k2"));
    refused(
        attest(&p.broker, k8s(token.clone()), None).await,
        Code::Unauthenticated,
        "unknown signing key (kid \"k2\"",
    );
    // The issuer rotates; after the refresh interval (1s here) the unknown
    // kid triggers a fetch that finds it.
    p.cluster
        .set_jwks(json!({"keys": [p.rsa.jwk("k1"), next.jwk("k2")]}));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ok = attest(&p.broker, k8s(token), None).await.unwrap();
    assert_eq!(name_of(&ok), "prod/payments-api");
    // Made-up kids do not turn into a fetch each: at most one per interval.
    let before = p.cluster.jwks_fetches();
    for i in 0..5 {
        let t = sign(&claims, Signer::Rs256(&next, &format!("bogus-{i}")));
        assert!(attest(&p.broker, k8s(t), None).await.is_err());
    }
    assert!(
        p.cluster.jwks_fetches() - before <= 1,
        "JWKS fetched per bogus kid"
    );
}

#[tokio::test]
async fn https_issuers_are_trusted_through_ca_file_only() {
    let keys = tempfile::tempdir().unwrap();
    let rsa = RsaKey::generate(keys.path(), "tls-cluster");
    let ca = keys.path().join("issuer-ca.pem");
    let issuer = TestIssuer::start_tls(json!({"keys": [rsa.jwk("t1")]}), &ca).await;
    assert!(issuer.url().starts_with("https://"));
    let token = || {
        let claims = k8s_claims(&issuer.url(), "credbroker", "payments", "api", "p");
        k8s(sign(&claims, Signer::Rs256(&rsa, "t1")))
    };
    let selectors = ["--selector", "tls:ns=payments", "--selector", "tls:sa=api"];
    let register = |b: &TestBroker| {
        let mut args = vec![
            "identity",
            "create",
            "--env",
            "prod",
            "--name",
            "api",
            "--owner",
            "o",
            "--purpose",
            "p",
        ];
        args.extend(selectors);
        b.cli_ok(&args);
    };
    // Discovery and JWKS over https, trusting the issuer's CA.
    let trusted = jwt_attestor_toml(
        "kubernetes",
        "tls",
        "prod",
        &issuer.url(),
        &format!("ca_file = {ca:?}"),
    );
    let broker = TestBroker::start_with(&["prod"], &trusted).await;
    register(&broker);
    let ok = attest(&broker, token(), None).await.unwrap();
    assert_eq!(name_of(&ok), "prod/api");
    drop(broker);
    // The same issuer with another CA file: its certificate is not trusted,
    // so no keys, so no attestation (UNAVAILABLE, not a verdict on the token).
    let other_ca = keys.path().join("other-ca.pem");
    TestIssuer::start_tls(json!({"keys": []}), &other_ca).await;
    let untrusted = jwt_attestor_toml(
        "kubernetes",
        "tls",
        "prod",
        &issuer.url(),
        &format!("ca_file = {other_ca:?}"),
    );
    let broker = TestBroker::start_with(&["prod"], &untrusted).await;
    register(&broker);
    refused(
        attest(&broker, token(), None).await,
        Code::Unavailable,
        "attestor tls cannot check tokens now",
    );
}
