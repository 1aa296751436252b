//! Selector matching with platform evidence: which identity a token
//! reaches (none, one, several), environments, identities that only their
//! selectors can reach, and OIDC claims as selectors with single use.

use credbroker_e2e::issuer::{Signer, github_claims, k8s_claims, sign};
use credbroker_proto::v1::attest_request;
use tonic::Code;

use super::platform_attestation::{DEV_ISSUER, Platform, attest, k8s, name_of, oidc, refused};

#[tokio::test]
async fn selectors_decide_the_identity() {
    let p = Platform::start().await;
    let b = &p.broker;
    // Matches none: the refusal names the attested selectors.
    refused(
        attest(b, k8s(p.k8s_token("payments", "web")), None).await,
        Code::PermissionDenied,
        "no identity in prod matches prod-cluster:node=node-1, prod-cluster:ns=payments, prod-cluster:pod=api-7d9f",
    );
    // Matches several: refused listing them, unless one is named.
    refused(
        attest(b, k8s(p.k8s_token("web", "x")), None).await,
        Code::PermissionDenied,
        "several identities match the evidence of prod-cluster: prod/web-a, prod/web-b",
    );
    let ok = attest(b, k8s(p.k8s_token("web", "x")), Some(("prod", "web-b")))
        .await
        .unwrap();
    assert_eq!(name_of(&ok), "prod/web-b");
    refused(
        attest(
            b,
            k8s(p.k8s_token("web", "x")),
            Some(("prod", "payments-api")),
        )
        .await,
        Code::PermissionDenied,
        "identity prod/payments-api is not matched",
    );
    // A token of the dev cluster, same namespace and service account: its
    // attestor serves dev, where nothing matches.
    let dev = sign(
        &k8s_claims(DEV_ISSUER, "credbroker", "payments", "api", "p"),
        Signer::Rs256(&p.dev_rsa, "d1"),
    );
    refused(
        attest(b, k8s(dev), None).await,
        Code::PermissionDenied,
        "no identity in dev matches dev-cluster:",
    );
    // Signed by the prod cluster's key but claiming the dev issuer: the dev
    // attestor's keys refuse it.
    let forged = sign(
        &k8s_claims(DEV_ISSUER, "credbroker", "payments", "api", "p"),
        Signer::Rs256(&p.rsa, "d1"),
    );
    refused(
        attest(b, k8s(forged), None).await,
        Code::Unauthenticated,
        "signature does not verify",
    );

    // The audit record names the attestor, the matched selectors and the
    // token's jti and sub.
    attest(b, k8s(p.k8s_token("payments", "api")), None)
        .await
        .unwrap();
    let log = b.log();
    assert!(
        log.lines().any(|l| l.contains(r#"decision="issued""#)
            && l.contains("kubernetes:prod-cluster jti=jti-api-7d9f-")
            && l.contains("sub=system:serviceaccount:payments:api")
            && l.contains("matched=[prod-cluster:ns=payments, prod-cluster:sa=api]")),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains(r#"decision="denied""#) && l.contains("no identity in prod matches")
        )
    );
    // Refusals of the evidence itself name the attestor too.
    assert!(log.lines().any(|l| l.contains(r#"decision="denied""#)
        && l.contains(r#"evidence="kubernetes:dev-cluster""#)
        && l.contains("signature does not verify")));
}

#[tokio::test]
async fn identities_with_selectors_need_matching_evidence() {
    let p = Platform::start().await;
    let b = &p.broker;
    // No join token for an identity with selectors…
    let out = b.cli(&["token", "create", "--env", "prod", "--name", "payments-api"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has selectors"), "{err}");
    // …and selectors must name a configured attestor of the environment.
    let create = |selector: &str| {
        b.cli(&[
            "identity",
            "create",
            "--env",
            "prod",
            "--name",
            "x",
            "--owner",
            "o",
            "--purpose",
            "p",
            "--selector",
            selector,
        ])
    };
    let out = create("k8s:ns=payments");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("names attestor \"k8s\", which is not configured"),
        "{err}"
    );
    let out = create("dev-cluster:ns=payments");
    assert!(String::from_utf8_lossy(&out.stderr).contains("attests for environment dev"));
    // `unix:` is the node agent's: not an attestor name, so the refusal is
    // the node rule (it needs --parent), never "not configured".
    let out = create("unix:uid=1000");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("not configured") && err.contains("--parent"),
        "{err}"
    );
    // `identity show` says who can reach an identity.
    let shown = b.cli_ok(&[
        "identity",
        "show",
        "--env",
        "prod",
        "--name",
        "payments-api",
    ]);
    assert!(shown.contains("prod-cluster (kubernetes)"), "{shown}");
    let json = b.cli_ok(&[
        "--output", "json", "identity", "show", "--env", "prod", "--name", "deploy",
    ]);
    assert!(json.contains("\"ci (oidc)\""), "{json}");

    // A join token made for an identity without selectors cannot reach one
    // with them, and a token proving only some selectors reaches nothing.
    b.cli_ok(&[
        "identity",
        "create",
        "--env",
        "prod",
        "--name",
        "plain",
        "--owner",
        "o",
        "--purpose",
        "p",
    ]);
    let token = b.join_token("prod", "plain");
    refused(
        attest(
            b,
            attest_request::Evidence::JoinToken(token),
            Some(("prod", "payments-api")),
        )
        .await,
        Code::PermissionDenied,
        "bound to a different identity",
    );
    refused(
        attest(
            b,
            k8s(p.k8s_token("payments", "worker")),
            Some(("prod", "payments-api")),
        )
        .await,
        Code::PermissionDenied,
        "not matched",
    );
}

#[tokio::test]
async fn oidc_tokens_es256_selectors_from_claims_and_single_use() {
    let p = Platform::start().await;
    let b = &p.broker;
    let token = p.github_token("run-1");
    let ok = attest(b, oidc(token.clone()), None).await.unwrap();
    assert_eq!(name_of(&ok), "prod/deploy");
    // single_use: the same jti again is a replay.
    refused(
        attest(b, oidc(token), None).await,
        Code::Unauthenticated,
        "already used",
    );
    // A refused request spends nothing: a fresh jti with the wrong expected
    // identity is refused, and the same token then still works.
    let fresh = p.github_token("run-2");
    assert!(
        attest(b, oidc(fresh.clone()), Some(("prod", "web-a")))
            .await
            .is_err()
    );
    attest(b, oidc(fresh), None)
        .await
        .expect("not spent by the refusal");
    // Another repository matches nothing; the refusal lists its claims.
    let other = sign(
        &github_claims(&p.ci.url(), "credbroker", "evil/fork", "run-3"),
        Signer::Es256(&p.ec, "gh1"),
    );
    refused(
        attest(b, oidc(other), None).await,
        Code::PermissionDenied,
        "ci:repository=evil/fork",
    );
    // A Kubernetes token is not OIDC evidence for the ci issuer, and an OIDC
    // token of the cluster issuer finds no OIDC attestor.
    refused(
        attest(b, k8s(p.github_token("run-4")), None).await,
        Code::Unauthenticated,
        "no kubernetes attestor is configured",
    );
    refused(
        attest(b, oidc(p.k8s_token("payments", "api")), None).await,
        Code::Unauthenticated,
        "no oidc attestor is configured",
    );
}
