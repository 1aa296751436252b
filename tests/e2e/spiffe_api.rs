//! The agent's SPIFFE Workload API, driven by a SPIFFE client this project
//! did not write: the `spiffe` crate from crates.io.

use std::path::Path;
use std::time::{Duration, Instant};

use credbroker_client::workload_api::WorkloadApi;
use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig};
use credbroker_e2e::{TestBroker, http};
use credbroker_proto::spiffe::JwtsvidRequest;
use credbroker_proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApi;
use spiffe::{JwtSource, TrustDomain, WorkloadApiClient, X509Source};

async fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !path.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn spiffe_clients_get_verify_and_follow_rotated_svids() {
    let broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"4s\"\ndefault_jwt = \"4s\"\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing", "ledger"], &[]);
    let out = broker.scratch("agent");
    let socket = out.join("agent.sock");
    let health_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = broker.join_token("dev", "api");
    let mut child = std::process::Command::new(credbroker_e2e::binary("credbroker-agent"))
        .args([
            "--broker",
            &broker.url(),
            "--join-token",
            &token,
            "--jwt-audience",
            "billing",
        ])
        .arg("--bundle")
        .arg(broker.bundle_path())
        .arg("--out-dir")
        .arg(&out)
        .arg("--workload-api-socket")
        .arg(&socket)
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&socket).await;
    let endpoint = format!("unix:{}", socket.display());

    // X509Source: the SVID, its bundle, and every rotation.
    let x509 = X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .expect("X509Source");
    let svid = x509.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://dev.example.org/api");
    let td = TrustDomain::new("dev.example.org").unwrap();
    let bundle = x509
        .bundle_set()
        .unwrap()
        .get(&td)
        .expect("bundle for the trust domain");
    let leaf = x509_parser::parse_x509_certificate(svid.cert_chain()[0].as_ref())
        .unwrap()
        .1;
    let ca = x509_parser::parse_x509_certificate(bundle.authorities()[0].as_ref())
        .unwrap()
        .1;
    leaf.verify_signature(Some(ca.public_key()))
        .expect("SVID chains to the served bundle");
    let mut serials = vec![leaf.raw_serial().to_vec()];
    let deadline = Instant::now() + Duration::from_secs(12);
    while serials.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "X509Source saw {} SVIDs",
            serials.len()
        );
        let current = x509.svid().unwrap();
        let serial = x509_parser::parse_x509_certificate(current.cert_chain()[0].as_ref())
            .unwrap()
            .1
            .raw_serial()
            .to_vec();
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // JwtSource: a held audience and one fetched on demand; validation.
    let jwt = JwtSource::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .expect("JwtSource");
    let billing = jwt.fetch_jwt_svid(["billing"]).await.unwrap();
    assert_eq!(
        billing.spiffe_id().to_string(),
        "spiffe://dev.example.org/api"
    );
    assert_eq!(billing.audience(), ["billing"]);
    let ledger = jwt.fetch_jwt_svid(["ledger"]).await.unwrap();
    assert_eq!(ledger.audience(), ["ledger"]);
    assert!(
        jwt.fetch_jwt_svid(["payroll"]).await.is_err(),
        "audience not allowed"
    );
    assert!(
        jwt.bundle_set().unwrap().get(&td).is_some(),
        "JWT bundle served"
    );
    let client = WorkloadApiClient::connect_to(&endpoint).await.unwrap();
    let validated = client
        .validate_jwt_token("billing", billing.token())
        .await
        .unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://dev.example.org/api"
    );
    assert!(
        client
            .validate_jwt_token("ledger", billing.token())
            .await
            .is_err()
    );

    // The agent's health endpoint agrees.
    let (status, body) = http::get(health_port, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("spiffe://dev.example.org/api"));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn calls_without_the_security_header_are_refused() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let source = CredentialSource::start(SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(broker.join_token("dev", "api")),
        jwt_audiences: vec!["billing".into()],
        policy: RefreshPolicy::default(),
    });
    source.ready().await.unwrap();
    let api = WorkloadApi::new(&source, broker.client().await);
    let request = || JwtsvidRequest {
        audience: vec!["billing".into()],
        spiffe_id: String::new(),
    };
    let err = api
        .fetch_jwtsvid(tonic::Request::new(request()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("security header"));
    let mut with_header = tonic::Request::new(request());
    with_header
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let answer = api.fetch_jwtsvid(with_header).await.unwrap().into_inner();
    assert_eq!(answer.svids[0].spiffe_id, "spiffe://dev.example.org/api");
}
