//! JWT issuance rules and the properties a relying party checks with the
//! published JWKS.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, http, jwt};
use credbroker_proto::v1::{FetchJwtRequest, JwtRequest as ProtoJwtRequest};
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn grants_only_what_the_identity_allows() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing", "ledger"], &["read", "write"]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();

    let denied = |r: Result<_, credbroker_client::ClientError>, needle: &str| {
        let err = r.unwrap_err();
        assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    };
    denied(
        session.fetch_jwt(&JwtRequest::audience("payroll")).await,
        "audience",
    );
    denied(
        session
            .fetch_jwt(&JwtRequest::audience("billing").scope("read").scope("admin"))
            .await,
        "scope \"admin\"",
    );
    denied(
        session
            .fetch_jwt(&JwtRequest::audience("billing").ttl(Duration::from_secs(301)))
            .await,
        "maximum",
    );
    let err = session
        .fetch_jwt(&JwtRequest {
            audiences: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));

    // Subsets are granted exactly.
    let both = session
        .fetch_jwt(&JwtRequest {
            audiences: vec!["billing".into(), "ledger".into()],
            scopes: vec!["write".into()],
            ttl: Some(Duration::from_secs(120)),
        })
        .await
        .unwrap();
    assert_eq!(both.audiences, vec!["billing", "ledger"]);
    assert_eq!(both.scopes, vec!["write"]);
    let lifetime = both
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(lifetime <= Duration::from_secs(120) && lifetime > Duration::from_secs(100));
}

#[tokio::test]
async fn fetch_jwt_without_a_client_certificate_is_unauthenticated() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let request = || FetchJwtRequest {
        jwt: Some(ProtoJwtRequest {
            audiences: vec!["billing".into()],
            scopes: vec![],
            ttl_seconds: 0,
        }),
    };
    let mut raw = broker.raw_workload(None).await;
    let err = raw.fetch_jwt(request()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // The admin certificate is not a workload identity either.
    let mut as_admin = broker.raw_workload(Some(broker.admin_identity())).await;
    let err = as_admin.fetch_jwt(request()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn tokens_verify_only_in_their_own_environment_and_untampered() {
    let broker = TestBroker::start_with(&["staging", "prod"], "").await;
    broker.create_identity("staging", "api", &["billing"], &["read"]);
    let client = broker.client().await;
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("staging", "api")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    assert_eq!(attested.svid.spiffe_id, "spiffe://staging.example.org/api");
    let token = attested.jwts[0].token.clone();
    let port = broker.http_port();
    let staging = http::get_json(port, "/staging/jwks.json").await;
    let prod = http::get_json(port, "/prod/jwks.json").await;
    let staging_iss = format!("http://127.0.0.1:{port}/staging");
    let prod_iss = format!("http://127.0.0.1:{port}/prod");
    assert_ne!(staging["keys"][0]["kid"], prod["keys"][0]["kid"]);

    jwt::verify(&token, &staging, "billing", &staging_iss).expect("valid in staging");
    // Against prod's keys: no such kid, and with prod's key forced in, a bad signature.
    assert!(jwt::verify(&token, &prod, "billing", &prod_iss).is_err());
    let mut prod_key_same_kid = prod.clone();
    prod_key_same_kid["keys"][0]["kid"] = staging["keys"][0]["kid"].clone();
    let err = jwt::verify(&token, &prod_key_same_kid, "billing", &staging_iss).unwrap_err();
    assert!(err.contains("InvalidSignature"), "{err}");
    // Wrong audience.
    assert!(jwt::verify(&token, &staging, "ledger", &staging_iss).is_err());

    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    // Tampered payload (more scope), original signature.
    claims["scope"] = "read admin".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let err = jwt::verify(&tampered, &staging, "billing", &staging_iss).unwrap_err();
    assert!(err.contains("InvalidSignature"), "{err}");

    // alg: none, no signature.
    let kid = staging["keys"][0]["kid"].as_str().unwrap();
    let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert!(jwt::verify(&unsigned, &staging, "billing", &staging_iss).is_err());

    // HS256 keyed with the public JWK (the classic key-confusion attack).
    let hs_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let signing_input = format!("{hs_header}.{}", parts[1]);
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        staging["keys"][0].to_string().as_bytes(),
    );
    let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signing_input.as_bytes()));
    let confused = format!("{signing_input}.{sig}");
    assert!(jwt::verify(&confused, &staging, "billing", &staging_iss).is_err());
}

#[tokio::test]
async fn a_disabled_identity_loses_fetch_and_renew_at_once() {
    let broker = TestBroker::start().await;
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
        .expect("active");

    broker.cli_ok(&[
        "identity", "disable", "--env", "dev", "--name", "api", "--reason", "leak",
    ]);
    let err = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(
        err.to_string().contains("identity dev/api is disabled"),
        "{err}"
    );
    let err = session.renew().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));

    broker.cli_ok(&["identity", "enable", "--env", "dev", "--name", "api"]);
    session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("re-enabled");
    broker.cli_ok(&["identity", "retire", "--env", "dev", "--name", "api"]);
    let err = session.renew().await.unwrap_err();
    assert!(err.to_string().contains("retired"), "{err}");
}
