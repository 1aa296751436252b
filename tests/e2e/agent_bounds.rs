//! The agent's Workload API is bounded too: requests past 64 KiB are
//! refused, and ValidateJWTSVID with ever new audiences does not open a
//! broker stream per audience (the broker allows a caller only a few), yet
//! still honours revocations.

use std::time::{Duration, Instant};

use credbroker_e2e::TestBroker;
use credbroker_proto::v1::revoke_request;
use spiffe::WorkloadApiClient;

use crate::agent_socket::SocketAgent;

/// The `jti` claim of a compact JWT.
fn jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn new_audiences_in_validate_do_not_open_broker_streams() {
    // The broker allows 4 streams per caller: one per audience would be
    // refused from the fifth audience on.
    let broker = TestBroker::start_with(
        &["dev"],
        "[connections]\nrevocation_streams_per_caller = 4\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let socket = broker.scratch("bounds").join("agent.sock");
    let agent = SocketAgent::start(&broker, "dev", "api", &socket, &[]).await;
    let endpoint = format!("unix:{}", socket.display());
    let client = WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    // The socket may be up a moment before the first credentials.
    let deadline = Instant::now() + Duration::from_secs(20);
    let token = loop {
        match client.fetch_jwt_svid(&["billing"], None).await {
            Ok(token) => break token,
            Err(e) => {
                assert!(Instant::now() < deadline, "no JWT-SVID: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    for i in 0..40 {
        let r = client
            .validate_jwt_token(&format!("aud-{i}"), token.token())
            .await;
        assert!(r.is_err(), "aud-{i} is not the token's audience");
    }
    client
        .validate_jwt_token("billing", token.token())
        .await
        .expect("valid for billing");
    let log = agent.log_text();
    assert!(
        !log.contains("revocation stream unavailable") && !log.contains("already has"),
        "the agent opened more broker streams than it needs:\n{log}"
    );

    // Revocations still reach validation through the one stream.
    broker
        .revoke(revoke_request::Target::Jti(jti(token.token())), "leaked")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.validate_jwt_token("aud-39", token.token()).await;
        let billing = client.validate_jwt_token("billing", token.token()).await;
        if billing.is_err() {
            println!("after revocation: {billing:?} / {r:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revocation never reached validation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn workload_api_streams_are_capped_per_uid() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let socket = broker.scratch("streams").join("agent.sock");
    let _agent = SocketAgent::start(&broker, "dev", "api", &socket, &[]).await;
    let endpoint = format!("unix:{}", socket.display());
    // Several connections, as separate processes of one user would open.
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(WorkloadApiClient::connect_to(&endpoint).await.unwrap());
    }
    let mut held = Vec::new();
    let mut refusal = None;
    for i in 0..200 {
        match clients[i % 4].stream_x509_contexts().await {
            Ok(stream) => held.push(stream),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("a cap on streams per uid");
    println!("{} streams held; then: {refusal}", held.len());
    assert_eq!(held.len(), 128, "{refusal}");
    assert!(refusal.to_string().contains("uid 0"), "{refusal}");
    // Closing streams frees their slots.
    held.truncate(100);
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients[0].stream_x509_contexts().await.is_err() {
        assert!(Instant::now() < deadline, "slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
