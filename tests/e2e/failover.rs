//! Clients survive a broker's death: the SDK, the agent and the admin CLI
//! take several broker URLs, skip a dead one, and a running source keeps
//! its credential while it moves to the broker that took over.

use std::time::{Duration, Instant};

use credbroker_client::{
    Brokers, Client, CredentialSource, Evidence, JwtRequest, RefreshPolicy, SourceConfig,
};
use credbroker_e2e::{TestBroker, free_port};
use credbroker_proto::v1::revoke_request::Target;

fn closed_url() -> String {
    format!("https://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_running_source_keeps_its_credential_and_renews_on_the_broker_that_took_over() {
    // The SVID lives 8 s (renewed at ~4 s); JWTs a minute, so a new JWT
    // within seconds can only come from the revocation stream.
    let mut broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"8s\"\ndefault_jwt = \"60s\"\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let takeover_port = free_port();
    let takeover = format!("https://127.0.0.1:{takeover_port}");
    let source = CredentialSource::start(SourceConfig {
        broker: format!("{},{takeover}", broker.url()),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(broker.join_token("dev", "api")),
        jwt_audiences: vec!["billing".into()],
        policy: RefreshPolicy {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..RefreshPolicy::default()
        },
    });
    let first = tokio::time::timeout(Duration::from_secs(10), source.ready())
        .await
        .unwrap()
        .unwrap();

    // kill -9, and a broker on the same data directory (same CAs)
    // elsewhere: the replica that took over.
    broker.crash_and_move(takeover_port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let renewed = loop {
        let creds = source
            .current()
            .expect("the current credential is kept through the failover");
        if creds.svid.serial != first.svid.serial {
            break creds;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal on the surviving broker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!renewed.svid.remaining().is_zero());

    // The revocation stream resubscribed on the new broker: revoking the
    // JWT there replaces it long before its renewal time.
    let jti = renewed.jwts["billing"].jti.clone();
    broker
        .revoke(Target::Jti(jti.clone()), "failover test")
        .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(creds) = source.current()
            && creds.jwts.get("billing").is_some_and(|j| j.jti != jti)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation was not seen through the new broker"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_sdk_agent_and_cli_skip_a_dead_first_broker() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let dead = closed_url();

    // SDK: the list is tried in order; the live broker is used and kept.
    let client = Client::connect_any(&[dead.as_str(), &broker.url()], &broker.bundle_pem())
        .await
        .expect("connects to the second broker");
    assert_eq!(client.current_broker(), broker.url());
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "api")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .unwrap();
    let jwt = client
        .authenticated(&attested.svid)
        .await
        .unwrap()
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id, "spiffe://dev.example.org/api");

    // Agent: `--broker dead,live`, saying which failed and which is used.
    let token = broker.scratch("t").join("join.token");
    std::fs::write(&token, broker.join_token("dev", "api")).unwrap();
    let out_dir = broker.scratch("out");
    let out = credbroker_e2e::agent(&[
        "--broker",
        &format!("{dead},{}", broker.url()),
        "--bundle",
        broker.bundle_path().to_str().unwrap(),
        "--join-token-file",
        token.to_str().unwrap(),
        "--jwt-audience",
        "billing",
        "--once",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out_dir.join("svid.pem").exists());
    assert!(
        stderr.contains("failing over") && stderr.contains(&dead),
        "{stderr}"
    );

    // Admin CLI: repeated --broker, and CREDBROKER_BROKER with commas.
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args([
            "identity",
            "list",
            "--broker",
            &dead,
            "--broker",
            &broker.url(),
        ])
        .arg("--data-dir")
        .arg(broker.data_dir())
        .env_remove("CREDBROKER_BROKER")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("api"));
    assert!(stderr.contains(&dead), "{stderr}");
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args(["identity", "list", "--data-dir"])
        .arg(broker.data_dir())
        .env("CREDBROKER_BROKER", format!("{dead},{}", broker.url()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every broker down: the error names the last cause, as with one.
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args([
            "identity",
            "list",
            "--broker",
            &format!("{dead},{}", closed_url()),
        ])
        .arg("--data-dir")
        .arg(broker.data_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("connection refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_broker_that_accepts_but_never_answers_costs_one_connect_timeout() {
    let broker = TestBroker::start().await;
    // A stopped process: the kernel accepts the connection, nobody speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}", silent.local_addr().unwrap());
    let brokers = Brokers::new([silent_url.as_str(), &broker.url()])
        .unwrap()
        .connect_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let client = Client::connect_to(brokers, &broker.bundle_pem())
        .await
        .expect("moves on to the live broker");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.current_broker(), broker.url());
}

#[tokio::test]
async fn a_refusal_is_an_answer_and_is_not_sent_to_another_broker() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    // The second "broker" counts the connections it gets.
    let spare = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spare_url = format!("https://{}", spare.local_addr().unwrap());
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((_conn, _)) = spare.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let client = Client::connect_any(&[broker.url(), spare_url], &broker.bundle_pem())
        .await
        .unwrap();
    let err = client
        .attest(&Evidence::JoinToken("cbjt_not_a_real_token".into()), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(
                tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
            )
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a refusal must not be tried on another broker"
    );
    assert_eq!(client.current_broker(), broker.url());
}

#[tokio::test]
async fn the_agent_counts_its_failovers() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let token = broker.scratch("t").join("join.token");
    std::fs::write(&token, broker.join_token("dev", "api")).unwrap();
    let out_dir = broker.scratch("out");
    let health_port = free_port();
    let mut agent = std::process::Command::new(credbroker_e2e::binary("credbroker-agent"))
        .args(["--broker", &closed_url(), "--broker", &broker.url()])
        .arg("--bundle")
        .arg(broker.bundle_path())
        .arg("--join-token-file")
        .arg(&token)
        .arg("--out-dir")
        .arg(&out_dir)
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .env_remove("CREDBROKER_BROKER")
        .env_remove("CREDBROKER_JOIN_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let failovers = loop {
        if let Ok((200, body)) = credbroker_e2e::http::get(health_port, "/metrics").await
            && out_dir.join("svid.pem").exists()
        {
            break body
                .lines()
                .find_map(|l| l.strip_prefix("credbroker_agent_broker_failovers_total "))
                .and_then(|n| n.parse::<u64>().ok());
        }
        assert!(Instant::now() < deadline, "the agent never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(failovers.is_some_and(|n| n >= 1), "{failovers:?}");
}

#[tokio::test]
async fn a_node_agent_mints_through_the_broker_that_took_over() {
    use crate::agent_socket::SocketAgent;

    let mut broker = TestBroker::start().await;
    broker.create_identity("dev", "hosts/n1", &[], &[]);
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "web",
        "--owner",
        "team-test",
        "--purpose",
        "failover test",
        "--audience",
        "billing",
        "--audience",
        "ledger",
        "--parent",
        "dev/hosts/n1",
        "--selector",
        "unix:uid=0",
    ]);
    let takeover_port = free_port();
    let takeover = format!("https://127.0.0.1:{takeover_port}");
    let socket = broker.scratch("node").join("agent.sock");
    let agent = SocketAgent::start_node(
        &broker,
        "dev",
        "hosts/n1",
        &socket,
        &["--broker", &takeover],
    )
    .await;
    let api = spiffe::WorkloadApiClient::connect_to(&format!("unix:{}", socket.display()))
        .await
        .unwrap();
    let fetch = |audience: &'static str| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match api.fetch_jwt_svid(&[audience], None).await {
                    Ok(jwt) => break jwt,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "no JWT-SVID for {audience}: {e:?}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    };
    fetch("billing").await;
    broker.crash_and_move(takeover_port).await;
    // Never minted before: only the broker that took over can have made it.
    let jwt = fetch("ledger").await;
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://dev.example.org/web");
    assert!(
        agent.log_text().contains("failing over"),
        "{}",
        agent.log_text()
    );
}
