//! The SDK's JWT verifier on the receiving side: every check a relying
//! party needs, and revocations applied as they are pushed.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{Evidence, JwtRequest, JwtVerifier, RevocationWatcher, VerifyError};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::revoke_request::Target;

#[tokio::test]
async fn verifier_checks_signature_audience_environment_and_algorithm() {
    let broker = TestBroker::start_with(&["staging", "prod"], "").await;
    broker.create_identity("staging", "api", &["billing", "ledger"], &["read"]);
    broker.create_identity("prod", "api", &["billing"], &[]);
    let client = broker.client().await;
    let token_for = |env: &'static str| {
        let client = client.clone();
        let token = broker.join_token(env, "api");
        async move {
            client
                .attest(
                    &Evidence::JoinToken(token),
                    &[JwtRequest::audience("billing")],
                )
                .await
                .unwrap()
                .jwts
                .remove(0)
        }
    };
    let staging = token_for("staging").await;
    let prod = token_for("prod").await;
    let verifier = JwtVerifier::new(&client, "staging", "billing")
        .await
        .unwrap();

    let ok = verifier.verify(&staging.token).await.expect("valid token");
    assert_eq!(ok.spiffe_id, "spiffe://staging.example.org/api");
    assert_eq!(ok.scopes, vec!["read"]);
    assert_eq!(ok.jti, staging.jti);

    // Another environment's token: its key is not in this environment's set.
    assert!(matches!(
        verifier.verify(&prod.token).await,
        Err(VerifyError::UnknownKey(_))
    ));
    // Wrong audience.
    let ledger = JwtVerifier::new(&client, "staging", "ledger")
        .await
        .unwrap();
    assert_eq!(
        ledger.verify(&staging.token).await.unwrap_err(),
        VerifyError::Audience("ledger".into())
    );

    let parts: Vec<&str> = staging.token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["scope"] = "read admin".into();
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    // Tampered claims under the original signature.
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        verifier.verify(&tampered).await.unwrap_err(),
        VerifyError::Signature
    );
    // alg: none.
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap();
    let none = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
    assert_eq!(
        verifier
            .verify(&format!("{none}.{forged_payload}."))
            .await
            .unwrap_err(),
        VerifyError::Algorithm("none".into())
    );
    // HS256 keyed with public key material.
    let hs = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#));
    let input = format!("{hs}.{forged_payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, kid.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes()));
    assert_eq!(
        verifier
            .verify(&format!("{input}.{sig}"))
            .await
            .unwrap_err(),
        VerifyError::Algorithm("HS256".into())
    );
    assert!(matches!(
        verifier.verify("not.a.jwt.at.all").await,
        Err(VerifyError::Malformed(_))
    ));
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_jwt = \"1s\"\n").await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let held = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "api")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    let verifier = JwtVerifier::with_leeway(&client, "dev", "billing", Duration::ZERO)
        .await
        .unwrap();
    verifier.verify(&held.jwts[0].token).await.expect("fresh");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        verifier.verify(&held.jwts[0].token).await.unwrap_err(),
        VerifyError::Expired
    );
    // The broker agrees when asked.
    let session = client.authenticated(&held.svid).await.unwrap();
    let answer = session.introspect_token(&held.jwts[0].token).await.unwrap();
    assert!(!answer.active);
    assert_eq!(answer.reason, "expired");
}

#[tokio::test]
async fn verifier_rejects_a_revoked_token_within_a_second() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "service", &[], &[]);
    broker.create_identity("dev", "caller", &["billing"], &[]);
    let client = broker.client().await;
    let service = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "service")),
            &[],
        )
        .await
        .unwrap();
    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();
    let _follow = verifier.follow_revocations(client.authenticated(&service.svid).await.unwrap());
    let caller = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "caller")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    let token = caller.jwts[0].token.clone();
    verifier
        .verify(&token)
        .await
        .expect("valid before revocation");

    let started = Instant::now();
    broker
        .revoke(
            Target::Jti(caller.jwts[0].jti.clone()),
            "pasted in a ticket",
        )
        .await;
    loop {
        match verifier.verify(&token).await {
            Err(VerifyError::Revoked(reason)) => {
                assert_eq!(reason, "pasted in a ticket");
                break;
            }
            other => {
                assert!(other.is_ok(), "{other:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "not revoked within a second"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    // Certificates: a watcher following the same stream sees a revoked serial.
    let watcher = RevocationWatcher::default();
    let _watch = watcher.follow(client.authenticated(&service.svid).await.unwrap());
    let leaf = caller.svid.cert_chain[0].to_vec();
    assert_eq!(
        watcher.certificate_revoked(&leaf, "dev", "dev.example.org"),
        None
    );
    let started = Instant::now();
    broker
        .revoke(Target::Serial(caller.svid.serial.clone()), "key exposed")
        .await;
    loop {
        if let Some(reason) = watcher.certificate_revoked(&leaf, "dev", "dev.example.org") {
            assert_eq!(reason, "key exposed");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "certificate revocation not seen within a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = service.svid.cert_chain[0].to_vec();
    assert_eq!(
        watcher.certificate_revoked(&other, "dev", "dev.example.org"),
        None
    );

    // Revoking the whole owner reaches the verifier too (it publishes the
    // owner's identities with the event).
    let fresh = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "caller")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    verifier.verify(&fresh.jwts[0].token).await.unwrap();
    let started = Instant::now();
    broker
        .revoke(Target::Owner("team-test".into()), "team offboarded")
        .await;
    while verifier.verify(&fresh.jwts[0].token).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "owner revocation not applied"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
