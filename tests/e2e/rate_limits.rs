//! Rate limits: Attest and signing per peer address and per identity are
//! token buckets (bursts of twice the rate); past them the broker answers
//! RESOURCE_EXHAUSTED naming the limit with a `retry-after-ms` hint, spends
//! nothing, and the SDK retries after the hint instead of giving up.

use std::time::Duration;

use credbroker_client::{
    ClientError, CredentialSource, Evidence, JwtRequest, RefreshPolicy, SourceConfig,
};
use credbroker_e2e::TestBroker;
use tonic::Code;

const ONE_PER_SECOND: &str = "[rate_limits]\nattest_per_second_per_peer = 1\n\
     sign_per_second_per_peer = 1\nsign_per_second_per_identity = 0\n";

fn hint_ms(e: &ClientError) -> u128 {
    e.retry_after()
        .expect("retry-after-ms metadata")
        .as_millis()
}

#[tokio::test]
async fn attest_and_signing_past_the_rate_are_refused_with_a_retry_hint() {
    let broker = TestBroker::start_with(&["dev"], ONE_PER_SECOND).await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let token = broker.join_token("dev", "api");
    let bogus = Evidence::JoinToken("cbjt_not-a-real-token".into());
    // The burst is twice the rate: two attempts are judged on their merits.
    for _ in 0..2 {
        let e = client.attest(&bogus, &[]).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::Unauthenticated), "{e}");
    }
    // The next is refused before its evidence is even looked at — so a
    // valid token is not spent by it.
    let e = client
        .attest(&Evidence::JoinToken(token.clone()), &[])
        .await
        .unwrap_err();
    println!("{e}");
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(
        e.to_string().contains("attest_per_second_per_peer = 1/s"),
        "{e}"
    );
    let wait = hint_ms(&e);
    assert!((1..=1000).contains(&wait), "{wait} ms");
    tokio::time::sleep(Duration::from_millis(wait as u64 + 50)).await;
    let attested = client
        .attest(&Evidence::JoinToken(token), &[])
        .await
        .expect("after the hint, the unspent token works");

    // Signing calls have their own bucket per peer.
    let session = client.authenticated(&attested.svid).await.unwrap();
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = session.fetch_jwt(&JwtRequest::audience("billing")).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a third FetchJwt within a second is refused");
    println!("{e}");
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(e.to_string().contains("sign_per_second_per_peer"), "{e}");
    assert!((1..=1000).contains(&hint_ms(&e)));
}

#[tokio::test]
async fn the_sdk_waits_out_a_rate_limit_instead_of_giving_up() {
    let broker = TestBroker::start_with(&["dev"], ONE_PER_SECOND).await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    // Spend this address's attest burst.
    let bogus = Evidence::JoinToken("cbjt_not-a-real-token".into());
    for _ in 0..3 {
        let _ = client.attest(&bogus, &[]).await;
    }
    let source = CredentialSource::start(SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(broker.join_token("dev", "api")),
        jwt_audiences: vec!["billing".into()],
        policy: RefreshPolicy {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            ..RefreshPolicy::default()
        },
    });
    // A join token is not re-readable evidence: were RESOURCE_EXHAUSTED
    // taken as a refusal, the source would stop here for good.
    let creds = tokio::time::timeout(Duration::from_secs(20), source.ready())
        .await
        .expect("ready in time")
        .expect("the source recovers from the rate limit");
    assert_eq!(creds.identity, ("dev".to_owned(), "api".to_owned()));
}

#[tokio::test]
async fn signing_per_identity_is_limited_whatever_the_address() {
    let broker = TestBroker::start_with(
        &["dev"],
        "[rate_limits]\nattest_per_second_per_peer = 0\nsign_per_second_per_peer = 0\n\
         sign_per_second_per_identity = 1\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    // The Attest signs for the identity too: one of its two-token burst.
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    let mut refused = None;
    for _ in 0..5 {
        if let Err(e) = session.fetch_jwt(&JwtRequest::audience("billing")).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("signing past the identity's rate is refused");
    println!("{e}");
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    assert!(
        e.to_string().contains(
            "sign_per_second_per_identity = 1/s (bursts of 2) exceeded by identity dev/api"
        ),
        "{e}"
    );
    assert!((1..=1000).contains(&hint_ms(&e)));
}
