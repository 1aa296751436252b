//! Connection failures name their cause and the fix, in the agent and the
//! admin CLI alike (both walk the error's source chain).

use credbroker_e2e::TestBroker;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn agent_error(broker: &TestBroker, url: &str, bundle: &std::path::Path) -> String {
    let token = broker.scratch("t").join("join.token");
    std::fs::write(&token, broker.join_token("dev", "api")).unwrap();
    let out = credbroker_e2e::agent(&[
        "--broker",
        url,
        "--bundle",
        bundle.to_str().unwrap(),
        "--join-token-file",
        token.to_str().unwrap(),
        "--once",
        "--out-dir",
        broker.scratch("out").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn each_connection_failure_says_what_happened() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let bundle = broker.bundle_path();
    let grpc = broker.url();
    let http_port = broker.http_port();

    let err = agent_error(
        &broker,
        &format!("https://127.0.0.1:{}", free_port()),
        &bundle,
    );
    assert!(
        err.contains("connection refused") && err.contains("is the broker running"),
        "{err}"
    );

    let err = agent_error(&broker, &format!("https://127.0.0.1:{http_port}"), &bundle);
    assert!(
        err.contains("does not speak TLS") && err.contains("HTTP port"),
        "{err}"
    );

    let err = agent_error(&broker, &grpc.replace("https://", "http://"), &bundle);
    assert!(err.contains("use an https:// URL"), "{err}");

    // A bundle with some other CA: the broker's certificate is not trusted.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = params.self_signed(&key).unwrap();
    let wrong = broker.scratch("wrong").join("ca.pem");
    std::fs::write(&wrong, other_ca.pem()).unwrap();
    let err = agent_error(&broker, &grpc, &wrong);
    assert!(
        err.contains("--bundle") && err.contains("broker-ca.pem"),
        "{err}"
    );

    // The admin CLI says the same.
    let out = std::process::Command::new(credbroker_e2e::binary("credbroker"))
        .args(["identity", "list", "--broker"])
        .arg(format!("https://127.0.0.1:{http_port}"))
        .arg("--data-dir")
        .arg(broker.data_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not speak TLS"),
        "{err}"
    );
}
