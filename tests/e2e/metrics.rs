//! `/metrics` on the broker's HTTP port, parsed by the Prometheus
//! reference parser (Python `prometheus_client.parser`): every documented
//! family exists with its type, and the counters move with what happens.

use std::io::Write;
use std::process::{Command, Stdio};

use credbroker_client::Evidence;
use credbroker_e2e::{TestBroker, http};
use serde_json::{Value, json};

const INSTALL: &str = "pip install prometheus-client==0.26.0";

/// The exposition parsed by the reference parser: families and samples.
pub fn parse_exposition(text: &str) -> Value {
    let python = std::env::var("CREDBROKER_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/prom_parse.py");
    let mut child = Command::new(&python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python} ({e}); these tests need `{INSTALL}`"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write exposition");
    let out = child.wait_with_output().expect("parser ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(3),
        "{stderr}\nthis test needs `{INSTALL}`"
    );
    assert!(out.status.success(), "{stderr}\n--- exposition:\n{text}");
    serde_json::from_slice(&out.stdout).expect("parser printed JSON")
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(parsed: &Value, name: &str, labels: Value) -> Option<f64> {
    let want = labels.as_object().expect("labels object");
    parsed["samples"].as_array()?.iter().find_map(|s| {
        let have = s[1].as_object()?;
        (s[0] == name && want.iter().all(|(k, v)| have.get(k) == Some(v))).then(|| s[2].as_f64())?
    })
}

async fn scrape(broker: &TestBroker) -> Value {
    let (status, body) = http::get(broker.http_port(), "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

#[tokio::test]
async fn broker_metrics_parse_and_move() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let before = scrape(&broker).await;
    for (family, kind) in [
        ("credbroker_credentials_issued", "counter"),
        ("credbroker_denials", "counter"),
        ("credbroker_attestations", "counter"),
        ("credbroker_rpc_duration_seconds", "histogram"),
        ("credbroker_revocations_live", "gauge"),
        ("credbroker_revocation_subscribers", "gauge"),
        ("credbroker_audit_queue_depth", "gauge"),
        ("credbroker_audit_commit_seconds", "histogram"),
        ("credbroker_store_operation_seconds", "histogram"),
        ("credbroker_identities", "gauge"),
        ("credbroker_identities_stale", "gauge"),
        ("credbroker_key_expiry_seconds", "gauge"),
    ] {
        assert_eq!(before["families"][family], kind, "{family}: {before}");
    }
    let issued = |m: &Value, kind: &str| {
        sample(
            m,
            "credbroker_credentials_issued_total",
            json!({"env": "dev", "kind": kind}),
        )
        .unwrap_or_else(|| panic!("no issued sample for {kind}: {m}"))
    };
    let denied = |m: &Value| {
        sample(
            m,
            "credbroker_denials_total",
            json!({"env": "dev", "reason": "unauthenticated"}),
        )
        .expect("denial sample")
    };
    let attests = |m: &Value, result: &str| {
        sample(
            m,
            "credbroker_attestations_total",
            json!({"method": "join_token", "result": result}),
        )
        .expect("attestation sample")
    };
    assert_eq!(
        sample(
            &before,
            "credbroker_identities",
            json!({"env": "dev", "status": "active"})
        ),
        Some(1.0)
    );
    let expiry = sample(
        &before,
        "credbroker_key_expiry_seconds",
        json!({"env": "dev", "kind": "x509"}),
    )
    .expect("CA expiry");
    assert!(expiry > 0.0 && expiry <= 30.0 * 86400.0, "{expiry}");
    assert!(
        sample(
            &before,
            "credbroker_key_expiry_seconds",
            json!({"env": "dev", "kind": "jwt"})
        )
        .is_some_and(|s| s > 0.0)
    );

    // One attestation issues one X.509-SVID and one JWT.
    let client = broker.client().await;
    let token = Evidence::JoinToken(broker.join_token("dev", "api"));
    client
        .attest(
            &token,
            &[credbroker_client::JwtRequest::audience("billing")],
        )
        .await
        .expect("attest");
    // The token is spent: a second use is a denial of the dev identity.
    client.attest(&token, &[]).await.expect_err("reused token");
    let after = scrape(&broker).await;
    assert_eq!(
        issued(&after, "x509"),
        issued(&before, "x509") + 1.0,
        "{after}"
    );
    assert_eq!(
        issued(&after, "jwt"),
        issued(&before, "jwt") + 1.0,
        "{after}"
    );
    assert_eq!(denied(&after), denied(&before) + 1.0, "{after}");
    assert_eq!(
        attests(&after, "success"),
        attests(&before, "success") + 1.0
    );
    assert_eq!(
        attests(&after, "failure"),
        attests(&before, "failure") + 1.0
    );
    let rpc = |code: &str| {
        sample(
            &after,
            "credbroker_rpc_duration_seconds_count",
            json!({"method": "Workload/Attest", "code": code}),
        )
    };
    assert_eq!(rpc("OK"), Some(1.0), "{after}");
    assert_eq!(rpc("UNAUTHENTICATED"), Some(1.0), "{after}");
    assert!(
        sample(&after, "credbroker_audit_commit_seconds_count", json!({}))
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(
            &after,
            "credbroker_store_operation_seconds_count",
            json!({"op": "audit_append"})
        )
        .is_some_and(|n| n >= 1.0)
    );
    // Reasons are classes: the denial's message is nowhere in the output.
    let (_, text) = http::get(broker.http_port(), "/metrics")
        .await
        .expect("GET");
    assert!(!text.contains("already used"), "{text}");
}

#[tokio::test]
async fn agent_metrics_on_the_health_address() {
    use crate::agent_socket::SocketAgent;
    use spiffe::WorkloadApiClient;

    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let socket = broker.scratch("metrics").join("agent.sock");
    let agent = SocketAgent::start(&broker, "dev", "api", &socket, &["--health-addr", &addr]).await;
    let client = WorkloadApiClient::connect_to(&format!("unix:{}", socket.display()))
        .await
        .expect("connect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let token = loop {
        match client.fetch_jwt_svid(&["billing"], None).await {
            Ok(token) => break token,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no JWT-SVID: {e:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    let calls = |m: &Value, method: &str, result: &str| {
        sample(
            m,
            "credbroker_agent_workload_api_calls_total",
            json!({"method": method, "result": result}),
        )
        .unwrap_or(0.0)
    };
    let scrape_agent = || async {
        let (status, body) = http::get(port, "/metrics").await.expect("GET /metrics");
        assert_eq!(status, 200, "{body}");
        parse_exposition(&body)
    };
    let before = scrape_agent().await;
    for (family, kind) in [
        ("credbroker_agent_svid_expiry_seconds", "gauge"),
        ("credbroker_agent_rotations", "counter"),
        ("credbroker_agent_failures", "counter"),
        ("credbroker_agent_workload_api_calls", "counter"),
    ] {
        assert_eq!(before["families"][family], kind, "{family}: {before}");
    }
    let left = sample(&before, "credbroker_agent_svid_expiry_seconds", json!({})).expect("expiry");
    assert!(left > 0.0 && left <= 3600.0, "{left}");
    assert!(calls(&before, "FetchJWTSVID", "OK") >= 1.0, "{before}");
    client
        .validate_jwt_token("ledger", token.token())
        .await
        .expect_err("wrong audience");
    client
        .validate_jwt_token("billing", token.token())
        .await
        .expect("valid");
    let after = scrape_agent().await;
    assert_eq!(
        calls(&after, "ValidateJWTSVID", "INVALID_ARGUMENT"),
        calls(&before, "ValidateJWTSVID", "INVALID_ARGUMENT") + 1.0,
        "{after}\n{}",
        agent.log_text()
    );
    assert_eq!(
        calls(&after, "ValidateJWTSVID", "OK"),
        calls(&before, "ValidateJWTSVID", "OK") + 1.0,
        "{after}"
    );
}
