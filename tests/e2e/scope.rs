//! Status and environment are checked everywhere: Introspect answers
//! inactive for credentials of identities out of service, a workload sees
//! only its own environment's credentials and revocations, and a caller
//! whose own identity is out of service is refused.

use std::time::Duration;

use credbroker_client::{Evidence, WorkloadClient, X509Svid};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::{IdentityRef, revoke_request};

async fn attest(broker: &TestBroker, env: &str, name: &str) -> (X509Svid, WorkloadClient) {
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token(env, name)), &[])
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    (attested.svid, session)
}

fn identity(env: &str, name: &str) -> revoke_request::Target {
    revoke_request::Target::Identity(IdentityRef {
        env: env.into(),
        name: name.into(),
    })
}

#[tokio::test]
async fn introspection_and_revocations_stay_in_the_callers_environment() {
    let broker = TestBroker::start_with(&["dev", "prod"], "").await;
    for (env, name) in [("dev", "a"), ("dev", "a2"), ("prod", "b")] {
        broker.create_identity(env, name, &[], &[]);
    }
    let (_, dev) = attest(&broker, "dev", "a").await;
    let (a2, _) = attest(&broker, "dev", "a2").await;
    let (prod_svid, _) = attest(&broker, "prod", "b").await;

    let prod_cert = prod_svid.cert_chain[0].to_vec();
    let answer = dev.introspect_certificate(&prod_cert).await.unwrap();
    assert!(
        !answer.active,
        "a dev workload must not learn about prod credentials"
    );
    assert!(
        answer.reason.contains("caller's environment"),
        "{}",
        answer.reason
    );
    assert!(
        answer.sub.is_empty(),
        "an inactive answer carries no claims"
    );
    let admin = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut admin = credbroker_proto::v1::workload_client::WorkloadClient::new(admin);
    let seen_by_admin = admin
        .introspect(credbroker_proto::v1::IntrospectRequest {
            credential: Some(
                credbroker_proto::v1::introspect_request::Credential::Certificate(prod_cert),
            ),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        seen_by_admin.active,
        "the admin sees every environment: {}",
        seen_by_admin.reason
    );

    // A valid, unrevoked certificate of a disabled identity is not active.
    let a2_cert = a2.cert_chain[0].to_vec();
    assert!(dev.introspect_certificate(&a2_cert).await.unwrap().active);
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "a2"]);
    let answer = dev.introspect_certificate(&a2_cert).await.unwrap();
    assert!(
        !answer.active && answer.reason.contains("disabled"),
        "{}",
        answer.reason
    );

    // The dev subscriber hears dev revocations, never prod ones.
    let mut stream = dev.watch_revocations(0).await.unwrap();
    broker.revoke(identity("prod", "b"), "prod incident").await;
    broker.revoke(identity("dev", "a2"), "dev incident").await;
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.value, "dev/a2", "{first:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.message())
            .await
            .is_err(),
        "nothing else may arrive"
    );

    // A caller whose own identity is out of service is refused.
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "a"]);
    let err = dev.introspect_certificate(&a2_cert).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    let err = dev.watch_revocations(0).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
}
