//! Checks on the attack list, driven from the outside: forged JWTs at
//! Introspect, and a single-use join token raced by many attesters.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, http};

#[tokio::test]
async fn introspect_refuses_alg_none_hs256_confusion_and_foreign_algorithms() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "api")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    let token = attested.jwts[0].token.clone();
    assert!(session.introspect_token(&token).await.unwrap().active);

    let jwks = http::get_json(broker.http_port(), "/dev/jwks.json").await;
    let kid = jwks["keys"][0]["kid"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).unwrap().to_owned();
    let header = |alg: &str| URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#));

    let unsigned = format!("{}.{payload}.", header("none"));
    let signing_input = format!("{}.{payload}", header("HS256"));
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        jwks["keys"][0].to_string().as_bytes(),
    );
    let hs = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signing_input.as_bytes()));
    let confused = format!("{signing_input}.{hs}");
    let foreign = format!(
        "{}.{payload}.{}",
        header("RS256"),
        token.split('.').nth(2).unwrap()
    );
    for (what, forged) in [
        ("alg none", unsigned),
        ("HS256", confused),
        ("RS256", foreign),
    ] {
        let answer = session.introspect_token(&forged).await.unwrap();
        assert!(!answer.active, "{what} was accepted");
        assert!(
            answer.reason.contains("not accepted"),
            "{what}: {}",
            answer.reason
        );
        assert!(
            answer.sub.is_empty(),
            "{what}: inactive answers carry no claims"
        );
    }
}

#[tokio::test]
async fn a_single_use_join_token_raced_by_sixteen_attesters_admits_exactly_one() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let token = broker.join_token("dev", "api");
    let client = broker.client().await;
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let (client, token) = (client.clone(), token.clone());
            tokio::spawn(async move { client.attest(&Evidence::JoinToken(token), &[]).await })
        })
        .collect();
    let mut won = 0;
    let mut refused = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert_eq!(won, 1, "exactly one attestation may win: {refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.contains("already used") || r.contains("not recognized")),
        "{refused:?}"
    );
}
