//! The SDK's credential source with lifetimes of seconds: rotations without
//! a gap, outages shorter than half a lifetime invisible, and an expired
//! credential reported rather than used, then recovered.

use std::time::{Duration, Instant};

use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig, SourceError};
use credbroker_e2e::TestBroker;

const SHORT: &str = "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"4s\"\ndefault_jwt = \"4s\"\n";

fn config(broker: &TestBroker, token: String, audiences: &[&str]) -> SourceConfig {
    SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(token),
        jwt_audiences: audiences.iter().map(|a| a.to_string()).collect(),
        policy: RefreshPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RefreshPolicy::default()
        },
    }
}

#[tokio::test]
async fn rotates_many_times_without_a_gap() {
    let broker = TestBroker::start_with(&["dev"], SHORT).await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let source = CredentialSource::start(config(
        &broker,
        broker.join_token("dev", "api"),
        &["billing"],
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .unwrap()
        .unwrap();
    let mut serials = vec![first.svid.serial.clone()];
    let mut jtis = vec![first.jwts["billing"].jti.clone()];
    let started = Instant::now();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let creds = source
            .current()
            .expect("a valid credential at every moment");
        assert!(!creds.svid.remaining().is_zero());
        assert!(!creds.jwts["billing"].remaining().is_zero());
        if serials.last() != Some(&creds.svid.serial) {
            serials.push(creds.svid.serial.clone());
        }
        if jtis.last() != Some(&creds.jwts["billing"].jti) {
            jtis.push(creds.jwts["billing"].jti.clone());
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 100);
    // 4 s lifetimes renewed at about half: at least 3 renewals in 9 s.
    assert!(serials.len() >= 4, "{serials:?}");
    assert!(jtis.len() >= 4, "{jtis:?}");
}

#[tokio::test]
async fn an_outage_shorter_than_half_a_lifetime_is_invisible() {
    let mut broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"8s\"\ndefault_jwt = \"8s\"\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let source = CredentialSource::start(config(
        &broker,
        broker.join_token("dev", "api"),
        &["billing"],
    ));
    let first = source.ready().await.unwrap();
    broker.stop().await;
    let down = Instant::now();
    while down.elapsed() < Duration::from_millis(3500) {
        source
            .current()
            .expect("the last valid credential keeps being served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.restart().await;
    // It catches up by itself and never went without a credential.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let creds = source.current().expect("still valid");
        if creds.svid.serial != first.svid.serial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal after the broker returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn past_expiry_it_reports_expired_and_recovers_when_the_broker_returns() {
    let mut broker = TestBroker::start_with(&["dev"], SHORT).await;
    broker.create_identity("dev", "api", &[], &[]);
    // A join token good for several attestations can be reused after expiry.
    let token = broker
        .cli_ok(&[
            "token", "create", "--env", "dev", "--name", "api", "--uses", "3",
        ])
        .trim()
        .to_owned();
    let source = CredentialSource::start(config(&broker, token, &[]));
    source.ready().await.unwrap();
    broker.stop().await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let reason = loop {
        match source.current() {
            Err(SourceError::Unavailable(reason)) => break reason,
            Ok(creds) => assert!(
                !creds.svid.remaining().is_zero(),
                "an expired SVID was handed out"
            ),
            Err(other) => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "expiry never reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reason.contains("expired"), "{reason}");
    broker.restart().await;
    let recovered = tokio::time::timeout(Duration::from_secs(15), source.ready())
        .await
        .expect("recovers by itself")
        .unwrap();
    assert!(!recovered.svid.remaining().is_zero());
}

#[tokio::test]
async fn spent_evidence_is_reported_clearly() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let token = broker.join_token("dev", "api");
    let client = broker.client().await;
    client
        .attest(&Evidence::JoinToken(token.clone()), &[])
        .await
        .unwrap();
    let source = CredentialSource::start(config(&broker, token, &[]));
    let err = source.ready().await.unwrap_err();
    let SourceError::Unavailable(reason) = err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("already used") && reason.contains("new evidence"),
        "{reason}"
    );
}
