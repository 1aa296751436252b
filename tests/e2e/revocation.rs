//! Revocation: immediate effect on the broker, pushed to subscribers within
//! a second, durable across restarts, published as a CRL, answered by
//! introspection, and dropped once it covers nothing.

use std::time::{Duration, Instant};

use credbroker_client::{Attestation, Client, Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, http};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{RevokeRequest, revoke_request};
use tonic::Code;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

async fn attest(
    broker: &TestBroker,
    client: &Client,
    name: &str,
    audiences: &[&str],
) -> Attestation {
    let jwts: Vec<JwtRequest> = audiences.iter().map(|a| JwtRequest::audience(*a)).collect();
    client
        .attest(&Evidence::JoinToken(broker.join_token("dev", name)), &jwts)
        .await
        .expect("attest")
}

async fn admin(broker: &TestBroker) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(broker.channel(Some(broker.admin_identity())).await.unwrap())
}

fn revoke(target: revoke_request::Target, reason: &str) -> RevokeRequest {
    RevokeRequest {
        target: Some(target),
        reason: reason.into(),
    }
}

#[tokio::test]
async fn a_revoked_jwt_reaches_subscribers_within_a_second() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "verifier", &[], &[]);
    broker.create_identity("dev", "caller", &["billing"], &[]);
    let client = broker.client().await;
    // The relying party subscribes with its own SVID.
    let verifier = attest(&broker, &client, "verifier", &[]).await;
    let verifier = client.authenticated(&verifier.svid).await.unwrap();
    let mut events = verifier.watch_revocations(0).await.unwrap();
    let caller = attest(&broker, &client, "caller", &["billing"]).await;
    let token = caller.jwts[0].token.clone();
    assert!(verifier.introspect_token(&token).await.unwrap().active);

    let mut admin = admin(&broker).await;
    let started = Instant::now();
    let revoked = admin
        .revoke(revoke(
            revoke_request::Target::Jti(caller.jwts[0].jti.clone()),
            "leaked in CI logs",
        ))
        .await
        .unwrap()
        .into_inner();
    let event = tokio::time::timeout(Duration::from_secs(1), events.message())
        .await
        .expect("revocation event within one second")
        .unwrap()
        .unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    assert_eq!(event.seq, revoked.seq);
    assert_eq!(
        (event.kind.as_str(), event.value.as_str()),
        ("jti", caller.jwts[0].jti.as_str())
    );
    assert_eq!(event.reason, "leaked in CI logs");
    assert_eq!(event.operator, "admin");

    let answer = verifier.introspect_token(&token).await.unwrap();
    assert!(!answer.active);
    assert_eq!(answer.reason, "revoked: leaked in CI logs");
    assert!(
        answer.sub.is_empty(),
        "an inactive answer carries no claims"
    );

    // Idempotent: the same revocation again is the same entry.
    let again = admin
        .revoke(revoke(
            revoke_request::Target::Jti(caller.jwts[0].jti.clone()),
            "again",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.seq, revoked.seq);
    // Unknown credentials and missing reasons are refused.
    let err = admin
        .revoke(revoke(revoke_request::Target::Jti("nope".into()), "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .revoke(revoke(
            revoke_request::Target::Serial(caller.svid.serial.clone()),
            " ",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Anonymous callers cannot subscribe.
    let err = client.anonymous().watch_revocations(0).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn a_revoked_identity_loses_its_credentials_until_re_enabled() {
    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let held = attest(&broker, &client, "api", &["billing"]).await;
    let session = client.authenticated(&held.svid).await.unwrap();
    session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap();

    broker.cli_ok(&[
        "revoke",
        "--identity",
        "dev/api",
        "--reason",
        "host compromised",
    ]);
    let err = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied));
    assert!(
        err.to_string().contains("revoked: host compromised"),
        "{err}"
    );
    assert!(session.renew().await.is_err());
    // The JWT issued at attestation is dead too (asked by another
    // workload: a revoked caller is refused).
    broker.create_identity("dev", "observer", &[], &[]);
    let observer = attest(&broker, &client, "observer", &[]).await;
    let observer = client.authenticated(&observer.svid).await.unwrap();
    let answer = observer
        .introspect_token(&held.jwts[0].token)
        .await
        .unwrap();
    assert_eq!(answer.reason, "revoked: host compromised");
    // And no new credentials: the identity is disabled.
    let out = broker.cli(&["token", "create", "--env", "dev", "--name", "api"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("disabled"));

    // It survives a restart.
    broker.restart().await;
    let client = broker.client().await;
    let session = client.authenticated(&held.svid).await.unwrap();
    let err = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    let listed = broker.cli_ok(&["revoke", "--list"]);
    assert!(
        listed.contains("dev/api") && listed.contains("host compromised"),
        "{listed}"
    );

    // Re-enabled, it can attest again; credentials issued after the
    // revocation are not covered by it.
    broker.cli_ok(&["identity", "enable", "--env", "dev", "--name", "api"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = attest(&broker, &client, "api", &[]).await;
    let session = client.authenticated(&fresh.svid).await.unwrap();
    session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("new SVID works");
}

#[tokio::test]
async fn a_reconnecting_subscriber_misses_nothing() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "watcher", &[], &[]);
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let watcher = attest(&broker, &client, "watcher", &[]).await;
    let watcher = client.authenticated(&watcher.svid).await.unwrap();
    let mut admin = admin(&broker).await;
    let mut jtis = Vec::new();
    for _ in 0..3 {
        jtis.push(
            attest(&broker, &client, "api", &["billing"]).await.jwts[0]
                .jti
                .clone(),
        );
    }

    let mut stream = watcher.watch_revocations(0).await.unwrap();
    admin
        .revoke(revoke(revoke_request::Target::Jti(jtis[0].clone()), "one"))
        .await
        .unwrap();
    let first = stream.message().await.unwrap().unwrap();
    drop(stream);
    // While disconnected:
    admin
        .revoke(revoke(revoke_request::Target::Jti(jtis[1].clone()), "two"))
        .await
        .unwrap();
    admin
        .revoke(revoke(
            revoke_request::Target::Jti(jtis[2].clone()),
            "three",
        ))
        .await
        .unwrap();
    let mut resumed = watcher.watch_revocations(first.seq).await.unwrap();
    let mut reasons = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(5), resumed.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(event.seq > first.seq);
        reasons.push(event.reason);
    }
    assert_eq!(reasons, ["two", "three"]);
}

#[tokio::test]
async fn the_crl_lists_revoked_certificates() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "a", &[], &[]);
    broker.create_identity("dev", "b", &[], &[]);
    let client = broker.client().await;
    let a = attest(&broker, &client, "a", &[]).await;
    let b = attest(&broker, &client, "b", &[]).await;
    let kept = attest(&broker, &client, "a", &[]).await;
    let parse_serials = |der: &[u8], ca: &[u8]| -> Vec<String> {
        let (_, crl) = CertificateRevocationList::from_der(der).expect("CRL parses");
        let (_, ca) = x509_parser::parse_x509_certificate(ca).unwrap();
        crl.verify_signature(ca.public_key())
            .expect("CRL signed by the dev CA");
        assert!(crl.next_update().is_some());
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial().iter().map(|b| format!("{b:02X}")).collect())
            .collect()
    };
    let ca = a.bundle.certs[0].to_vec();
    assert!(parse_serials(&http::get_bytes(broker.http_port(), "/dev/crl").await, &ca).is_empty());

    broker.cli_ok(&[
        "revoke",
        "--serial",
        &a.svid.serial,
        "--reason",
        "key on a laptop",
    ]);
    broker.cli_ok(&[
        "revoke",
        "--identity",
        "dev/b",
        "--reason",
        "decommissioned",
    ]);
    let listed = parse_serials(&http::get_bytes(broker.http_port(), "/dev/crl").await, &ca);
    assert!(listed.contains(&a.svid.serial), "{listed:?}");
    assert!(listed.contains(&b.svid.serial), "{listed:?}");
    assert!(!listed.contains(&kept.svid.serial), "{listed:?}");
    // Introspection agrees, for certificates too.
    let session = client.authenticated(&kept.svid).await.unwrap();
    let answer = session
        .introspect_certificate(&a.svid.cert_chain[0])
        .await
        .unwrap();
    assert_eq!(answer.reason, "revoked: key on a laptop");
    assert!(
        session
            .introspect_certificate(&kept.svid.cert_chain[0])
            .await
            .unwrap()
            .active
    );
    // Other environments' CRL paths are refused.
    assert_eq!(
        http::get(broker.http_port(), "/prod/crl").await.unwrap().0,
        404
    );
}

#[tokio::test]
async fn revocations_drop_out_once_what_they_cover_has_expired() {
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_jwt = \"2s\"\n").await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let held = attest(&broker, &client, "api", &["billing"]).await;
    let revoked: serde_json::Value = serde_json::from_str(&broker.cli_ok(&[
        "revoke",
        "--jti",
        &held.jwts[0].jti,
        "--reason",
        "test",
        "--output",
        "json",
    ]))
    .unwrap();
    // The entry records the latest expiry it covers: the JWT's.
    let exp = held.jwts[0]
        .expires_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = revoked[0]["covers_until"].as_str().unwrap();
    assert_eq!(
        until,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp))
            .to_string(),
        "covers_until is the JWT's expiry"
    );
    // The JWT lived 2 s; its revocation goes with it.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let listed = broker.cli_ok(&["revoke", "--list", "--output", "json"]);
    assert_eq!(listed.trim(), "[]");
}

#[tokio::test]
async fn the_agent_replaces_a_revoked_jwt_and_drops_a_revoked_svid() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "sidecar", &["billing"], &[]);
    let token = broker.join_token("dev", "sidecar");
    let out = broker.scratch("agent");
    let mut child = broker.spawn_agent(&token, &out, &["billing"]);
    let jwt_path = out.join("jwt/billing.token");
    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the first credentials", &|| {
        jwt_path.exists() && out.join("svid.pem").exists()
    });
    let first = std::fs::read_to_string(&jwt_path).unwrap();
    let payload: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            first.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let jti = payload["jti"].as_str().unwrap().to_owned();

    // A revoked JWT is replaced with a fresh one.
    broker.cli_ok(&["revoke", "--jti", &jti, "--reason", "test"]);
    wait_for("a replacement JWT", &|| {
        std::fs::read_to_string(&jwt_path).is_ok_and(|t| !t.is_empty() && t != first)
    });

    // A revoked SVID: every credential file goes and the agent stops.
    broker.cli_ok(&[
        "revoke",
        "--identity",
        "dev/sidecar",
        "--reason",
        "decommissioned",
    ]);
    wait_for("the credentials to be removed", &|| {
        !out.join("svid.pem").exists() && !out.join("svid_key.pem").exists() && !jwt_path.exists()
    });
    let status = child.wait().unwrap();
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("revoked: decommissioned"), "{stderr}");
}
