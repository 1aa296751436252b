//! Several brokers on one PostgreSQL database act as one: shared keys and
//! CA, identities and revocations that reach every broker within a
//! second, one audit chain, single-use join tokens spent once, and a
//! leader that another broker replaces when it dies.

use std::time::{Duration, Instant};

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::postgres::Replicas;
use credbroker_e2e::{TestBroker, http};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{RevokeRequest, revoke_request};

/// Polls `check` every 10 ms until it holds or `within` has passed;
/// returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn jwks(broker: &TestBroker) -> String {
    http::get_json(broker.http_port(), "/dev/jwks.json")
        .await
        .to_string()
}

async fn leads(broker: &TestBroker) -> bool {
    match http::get(broker.http_port(), "/metrics").await {
        Ok((200, body)) => body.lines().any(|l| l == "credbroker_leader 1"),
        _ => false,
    }
}

#[tokio::test]
async fn replicas_share_keys_identities_tokens_and_one_audit_chain() {
    let r = Replicas::start(3, "").await;
    let [a, b, c] = &r.brokers[..] else {
        unreachable!()
    };
    // Started together on an empty database, they made one set of keys:
    // one CA file for clients, one JWKS (it does not grow with replicas).
    assert_eq!(a.bundle_pem(), b.bundle_pem());
    assert_eq!(a.bundle_pem(), c.bundle_pem());
    assert_eq!(jwks(a).await, jwks(b).await);
    assert_eq!(jwks(a).await, jwks(c).await);
    // Each wrote its own admin certificate from the shared admin CA: admin
    // commands work against any of them.
    for broker in [a, b, c] {
        broker.cli_ok(&["identity", "list"]);
    }

    // An identity created on A can be given a join token on B at once (B
    // reads what it has not heard of yet from the store), and the token
    // attests on C at once.
    a.create_identity("dev", "api", &["billing"], &[]);
    let token = b.join_token("dev", "api");
    let took = eventually(
        Duration::from_secs(1),
        "B's cache has the identity",
        || async {
            b.cli(&["identity", "show", "--env", "dev", "--name", "api"])
                .status
                .success()
        },
    )
    .await;
    eprintln!("identity created on A in B's cache after {took:?}");

    // The token is spent on C; A and B refuse it after.
    let on_c = c.client().await;
    let held = on_c
        .attest(
            &Evidence::JoinToken(token.clone()),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest on C");
    for broker in [a, b] {
        let again = broker
            .client()
            .await
            .attest(&Evidence::JoinToken(token.clone()), &[])
            .await;
        assert!(
            again.is_err(),
            "a single-use token works once across replicas"
        );
    }

    // The SVID C issued works on A and B.
    let mut jtis = vec![held.jwts[0].jti.clone()];
    for broker in [a, b] {
        let client = broker.client().await;
        let authed = client.authenticated(&held.svid).await.unwrap();
        let jwt = authed
            .fetch_jwt(&JwtRequest::audience("billing"))
            .await
            .expect("fetch on another replica");
        jtis.push(jwt.jti);
    }

    // One audit log: each broker verifies the whole chain, and "who used
    // this jti" answers for credentials any replica issued.
    for broker in [a, b, c] {
        let out = broker.cli_ok(&["audit", "verify"]);
        assert!(out.contains("intact"), "{out}");
        for jti in &jtis {
            let found = broker.cli_ok(&["audit", "--jti", jti]);
            assert!(found.contains(jti.as_str()), "{found}");
        }
    }
}

#[tokio::test]
async fn a_revocation_or_disable_on_one_replica_is_enforced_by_the_others_within_a_second() {
    let r = Replicas::start(3, "").await;
    let [a, b, c] = &r.brokers[..] else {
        unreachable!()
    };
    a.create_identity("dev", "verifier", &[], &[]);
    a.create_identity("dev", "caller", &["billing"], &[]);
    // Tokens minted on A are usable on B and C once they see the identity.
    let verifier_token = a.join_token("dev", "verifier");
    let caller_token = a.join_token("dev", "caller");
    let on_b = b.client().await;
    let on_c = c.client().await;
    let verifier = eventually(Duration::from_secs(1), "B sees verifier", || async {
        on_b.attest(&Evidence::JoinToken(verifier_token.clone()), &[])
            .await
            .is_ok()
    })
    .await;
    let _ = verifier;
    let verifier = on_b
        .attest(&Evidence::JoinToken(a.join_token("dev", "verifier")), &[])
        .await
        .unwrap();
    let watcher = on_b.authenticated(&verifier.svid).await.unwrap();
    let mut events = watcher.watch_revocations(0).await.unwrap();
    let introspector = on_c.authenticated(&verifier.svid).await.unwrap();
    let caller = on_c
        .attest(
            &Evidence::JoinToken(caller_token),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("caller attests on C");
    let caller_on_b = on_b.authenticated(&caller.svid).await.unwrap();

    let mut admin_a = AdminClient::new(a.channel(Some(a.admin_identity())).await.unwrap());
    let mut pushed = Vec::new();
    let mut enforced = Vec::new();
    for i in 0..20 {
        let jwt = caller_on_b
            .fetch_jwt(&JwtRequest::audience("billing"))
            .await
            .expect("fetch");
        let answer = introspector
            .introspect_token(&jwt.token)
            .await
            .unwrap_or_else(|e| panic!("introspect on C: {e:?}"));
        assert!(answer.active, "{answer:?}");
        let started = Instant::now();
        let revoked = admin_a
            .revoke(RevokeRequest {
                target: Some(revoke_request::Target::Jti(jwt.jti.clone())),
                reason: format!("drill {i}"),
            })
            .await
            .unwrap()
            .into_inner();
        // B's subscribers hear of it ...
        let event = tokio::time::timeout(Duration::from_secs(1), events.message())
            .await
            .expect("pushed by B within a second")
            .unwrap()
            .unwrap();
        pushed.push(started.elapsed());
        assert_eq!(
            (event.seq, event.value.as_str()),
            (revoked.seq, jwt.jti.as_str())
        );
        // ... and C refuses it.
        let took = eventually(
            Duration::from_secs(1),
            "C refuses the revoked JWT",
            || async {
                !introspector
                    .introspect_token(&jwt.token)
                    .await
                    .unwrap()
                    .active
            },
        )
        .await;
        enforced.push(started.elapsed().max(took));
    }
    pushed.sort();
    enforced.sort();
    eprintln!(
        "revocation on A: pushed by B p50 {:?} max {:?}; enforced by C p50 {:?} max {:?}",
        pushed[10], pushed[19], enforced[10], enforced[19]
    );

    // Disabled on A: B refuses the identity's next call within a second.
    a.cli_ok(&[
        "identity", "disable", "--env", "dev", "--name", "caller", "--reason", "drill",
    ]);
    let took = eventually(
        Duration::from_secs(1),
        "B refuses the disabled identity",
        || async {
            caller_on_b
                .fetch_jwt(&JwtRequest::audience("billing"))
                .await
                .is_err()
        },
    )
    .await;
    eprintln!("disable on A refused by B after {took:?}");
}

#[tokio::test]
async fn the_leader_rotates_for_all_and_another_leads_when_it_is_killed() {
    let mut r = Replicas::start(3, "").await;
    let leaders = || async {
        let mut out = Vec::new();
        for (i, broker) in r.brokers.iter().enumerate() {
            if leads(broker).await {
                out.push(i);
            }
        }
        out
    };
    eventually(Duration::from_secs(5), "one broker leads", || async {
        leaders().await.len() == 1
    })
    .await;
    let leader = leaders().await[0];
    let follower = (leader + 1) % 3;

    // A rotation asked of any broker is published by all within a second.
    let before = jwks(&r.brokers[leader]).await;
    r.brokers[follower].cli_ok(&["keys", "rotate", "--env", "dev", "--kind", "jwt"]);
    let rotated = jwks(&r.brokers[follower]).await;
    assert_ne!(before, rotated);
    for broker in &r.brokers {
        eventually(
            Duration::from_secs(1),
            "every broker publishes the new key",
            || async { jwks(broker).await == rotated },
        )
        .await;
    }

    // Killed outright, the leader's lock goes with its connection.
    r.brokers[leader].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let took = eventually(Duration::from_secs(5), "a survivor leads", || async {
        let mut n = 0;
        for &i in &survivors {
            n += usize::from(leads(&r.brokers[i]).await);
        }
        n == 1
    })
    .await;
    eprintln!("leader killed; another led after {took:?}");
    for &i in &survivors {
        let out = r.brokers[i].cli_ok(&["audit", "verify"]);
        assert!(out.contains("intact"), "{out}");
    }
}

#[tokio::test]
async fn killing_a_replica_under_load_fails_no_issuance_and_loses_no_audit_record() {
    let mut r = Replicas::start(
        3,
        "[rate_limits]\nattest_per_second_per_peer = 0\nsign_per_second_per_peer = 0\n",
    )
    .await;
    r.brokers[0].create_identity("dev", "api", &["billing"], &[]);
    let urls: Vec<String> = r.brokers.iter().map(TestBroker::url).collect();
    let bundle = r.brokers[0].bundle_pem();
    for broker in &r.brokers {
        eventually(
            Duration::from_secs(1),
            "every broker sees the identity",
            || async {
                broker
                    .cli(&["identity", "show", "--env", "dev", "--name", "api"])
                    .status
                    .success()
            },
        )
        .await;
    }
    // Six workloads, two starting on each broker (each lists all three,
    // its own first), fetching JWTs back to back.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workloads = Vec::new();
    for i in 0..6 {
        let mut order = urls.clone();
        order.rotate_left(i % 3);
        let client = credbroker_client::Client::connect_any(&order, &bundle)
            .await
            .unwrap();
        let token = r.brokers[0].join_token("dev", "api");
        let held = client
            .attest(&Evidence::JoinToken(token), &[])
            .await
            .expect("attest");
        let authed = client.authenticated(&held.svid).await.unwrap();
        let stop = std::sync::Arc::clone(&stop);
        workloads.push(tokio::spawn(async move {
            let (mut jtis, mut failures) = (Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match authed.fetch_jwt(&JwtRequest::audience("billing")).await {
                    Ok(jwt) => jtis.push(jwt.jti),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (i, jtis, failures)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.brokers[0].kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut issued = Vec::new();
    for w in workloads {
        let (i, jtis, failures) = w.await.unwrap();
        assert!(
            failures.is_empty(),
            "workload {i} saw failed issuances beyond the SDK's own failover: {failures:?}"
        );
        assert!(!jtis.is_empty(), "workload {i} issued nothing");
        issued.extend(jtis);
    }
    eprintln!(
        "{} JWTs issued across the kill ({:?} after it), 0 failed",
        issued.len(),
        killed_at.elapsed()
    );
    // Every credential handed out — by the dead broker too — has its
    // durable record, and the chain all of them wrote verifies.
    let survivor = &r.brokers[1];
    let out = survivor.cli_ok(&["audit", "verify"]);
    assert!(out.contains("intact"), "{out}");
    let issued_total: usize = r
        .schema
        .count(
            "SELECT count(*) FROM audit_log WHERE decision = 'issued' AND credential = 'jwt-svid'",
        )
        .await;
    assert!(
        issued_total >= issued.len(),
        "{issued_total} < {}",
        issued.len()
    );
    for jti in issued.iter().step_by(issued.len() / 20 + 1) {
        let found = survivor.cli_ok(&["audit", "--jti", jti]);
        assert!(found.contains(jti.as_str()), "no audit record for {jti}");
    }
}

#[tokio::test]
async fn a_second_broker_on_one_sqlite_directory_is_refused() {
    let first = TestBroker::start().await;
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args(["serve", "--config"])
        .arg(first.config_path())
        .env_remove("CREDBROKER_DATA_DIR")
        .output()
        .expect("run a second broker");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is already running on data directory"),
        "{stderr}"
    );
    // The first one is untouched.
    first.cli_ok(&["identity", "list"]);
}
