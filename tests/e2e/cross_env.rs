//! Trust is per environment, end to end: a certificate that passes TLS
//! (the listener trusts every environment's CA) but was signed by another
//! environment's CA than the one its SPIFFE ID names is refused by the
//! broker's own check; and a certificate that expired while its connection
//! stayed open is refused by the broker's own expiry check, which rustls
//! (checking only at the handshake) cannot do.

use std::time::Duration;

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, stolen};
use credbroker_proto::v1::{FetchJwtRequest, RenewX509Request};

fn jwt_request() -> FetchJwtRequest {
    FetchJwtRequest {
        jwt: Some(credbroker_proto::v1::JwtRequest {
            audiences: vec!["billing".into()],
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_dev_ca_certificate_naming_a_prod_identity_gets_nothing() {
    let broker = TestBroker::start_with(&["dev", "prod"], "").await;
    broker.create_identity("prod", "api", &["billing"], &[]);
    let (_, dev_ca) = stolen::environment_ca(&broker, "dev").await;
    let (_, prod_ca) = stolen::environment_ca(&broker, "prod").await;

    // Positive control: the same forgery with prod's own CA is accepted,
    // so the refusal below is the environment check and nothing else.
    let genuine = stolen::forge_svid(&prod_ca, "spiffe://prod.example.org/api");
    let mut control = broker.raw_workload(Some(genuine)).await;
    let jwt = control
        .fetch_jwt(jwt_request())
        .await
        .expect("a prod-CA certificate for prod/api is accepted")
        .into_inner();
    assert!(jwt.jwt.unwrap().spiffe_id.starts_with("spiffe://prod."));

    // A dev SVID (dev's CA) that names prod: TLS accepts it, the broker must not.
    let forged = stolen::forge_svid(&dev_ca, "spiffe://prod.example.org/api");
    let mut attacker = broker.raw_workload(Some(forged)).await;
    let refused = attacker.fetch_jwt(jwt_request()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("environment") || refused.message().contains("CA"),
        "{}",
        refused.message()
    );
    let refused = attacker
        .renew_x509(RenewX509Request {
            csr: credbroker_e2e::x509::csr(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    // And both refusals are in the audit log, with the reason.
    let audit = broker.cli_ok(&["audit", "--output", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let refusals = entries
        .iter()
        .filter(|e| {
            e["decision"] == "denied"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not issued by the CA of environment prod"))
        })
        .count();
    assert_eq!(refusals, 2, "{audit}");
}

#[tokio::test]
async fn an_svid_that_expires_on_an_open_connection_is_refused() {
    let broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"3s\"\ndefault_jwt = \"2s\"\n",
    )
    .await;
    broker.create_identity("dev", "short", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "short")), &[])
        .await
        .expect("attest");
    let session = client.authenticated(&attested.svid).await.expect("mTLS");
    session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("valid SVID");
    // The handshake is done; rustls will not look at the certificate again
    // on this connection. Only the broker's own check can refuse it now.
    let left = attested
        .svid
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(1500)).await;
    let refused = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect_err("an expired SVID must be refused on its open connection");
    assert!(
        refused.to_string().contains("expired") || refused.to_string().contains("not valid"),
        "{refused}"
    );
}
