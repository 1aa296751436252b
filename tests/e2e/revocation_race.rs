//! Revocation is decided by order, not by the clock's second: while a
//! `revoke --identity` waits on a busy store, a workload renewing in a loop
//! gets nothing that escapes it, and nothing it got renews after the
//! identity is enabled again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use credbroker_client::{Evidence, X509Svid};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::workload_client::WorkloadClient;
use credbroker_proto::v1::{IdentityRef, IntrospectRequest, introspect_request, revoke_request};
use sqlx::Connection;

#[tokio::test]
async fn nothing_issued_while_a_revocation_waits_on_the_store_escapes_it() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let client = broker.client().await;
    let first = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    let obtained: Arc<Mutex<Vec<X509Svid>>> = Arc::new(Mutex::new(vec![first.svid.clone()]));
    let session = client.authenticated(&first.svid).await.unwrap();

    // Hold the store busy for 3 s (less than its 5 s busy timeout) while
    // the revocation is asked for.
    let url = format!("sqlite://{}", broker.database().display());
    let mut lock = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let revoke = {
        let target = revoke_request::Target::Identity(IdentityRef {
            env: "dev".into(),
            name: "api".into(),
        });
        let broker = &broker;
        async move { broker.revoke(target, "compromised").await }
    };
    // Meanwhile the attacker renews every 100 ms, each request on its own
    // (each waits for the busy store to commit its audit record).
    let renewals = {
        let (session, obtained) = (session.clone(), Arc::clone(&obtained));
        async move {
            let mut inflight = Vec::new();
            for _ in 0..28 {
                let (session, obtained) = (session.clone(), Arc::clone(&obtained));
                inflight.push(tokio::spawn(async move {
                    if let Ok((svid, _)) = session.renew().await {
                        obtained.lock().unwrap().push(svid);
                    }
                }));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for r in inflight {
                let _ = r.await;
            }
        }
    };
    let release = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    };
    let (revocation, (), ()) = tokio::join!(revoke, renewals, release);
    assert_eq!(revocation.kind, "identity");

    let obtained = obtained.lock().unwrap().clone();
    eprintln!(
        "{} certificates obtained around the revocation",
        obtained.len()
    );
    let admin = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut introspect = WorkloadClient::new(admin);
    for svid in &obtained {
        let answer = introspect
            .introspect(IntrospectRequest {
                credential: Some(introspect_request::Credential::Certificate(
                    svid.cert_chain[0].to_vec(),
                )),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            !answer.active && answer.reason.contains("revoked"),
            "certificate {} escaped the revocation: {}",
            svid.serial,
            answer.reason
        );
    }

    // Re-enabled, the identity gets new credentials only by new evidence:
    // none of what was obtained renews.
    broker.cli_ok(&["identity", "enable", "--env", "dev", "--name", "api"]);
    for svid in &obtained {
        let renewed = match client.authenticated(svid).await {
            Ok(session) => session.renew().await.map(|_| ()),
            Err(e) => Err(e),
        };
        assert!(
            renewed.is_err(),
            "certificate {} renewed after re-enable",
            svid.serial
        );
    }
}
