//! The agent's Workload API driven by gRPC C-core clients: py-spiffe (on
//! grpcio) and a raw grpcio client with stubs generated from our proto.
//! These send the socket path as `:authority`, which h2 alone refuses.
//! Needs python3 with the packages `.ci/run` installs; a missing one fails
//! the test with what to install.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use credbroker_e2e::TestBroker;
use serde_json::Value;

use crate::agent_socket::SocketAgent;

const INSTALL: &str = "pip install spiffe==0.3.2 grpcio==1.85.3 grpcio-tools==1.85.1";

fn python() -> String {
    std::env::var("CREDBROKER_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/python/workload_client.py against `socket`; its JSON answer.
fn run_client(socket: &Path, args: &[&str]) -> Value {
    let output = Command::new(python())
        .arg(tests_dir().join("python/workload_client.py"))
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix:{}", socket.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): these tests need Python 3 with `{INSTALL}` (set CREDBROKER_PYTHON to use another interpreter)",
                python()
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(3),
        "{stderr}\nthese tests need `{INSTALL}`"
    );
    assert!(output.status.success(), "python client failed: {stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("python client printed no JSON ({e}): {stderr}"))
}

#[tokio::test]
async fn py_spiffe_uses_every_workload_api_call() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing", "ledger"], &[]);
    let socket = broker.scratch("py").join("agent.sock");
    let agent = SocketAgent::start(&broker, "dev", "api", &socket, &[]).await;
    let r = run_client(&socket, &["pyspiffe"]);
    let id = "spiffe://dev.example.org/api";
    assert!(r.get("error").is_none(), "{r}\n{}", agent.log_text());
    assert_eq!(r["x509_spiffe_id"], id, "{r}");
    assert_eq!(
        r["x509_chain_verified"], true,
        "SVID chains to the served bundle: {r}"
    );
    assert_eq!(r["x509_key_matches"], true, "{r}");
    assert!(r["x509_bundle_authorities"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["jwt_spiffe_id"], id, "{r}");
    assert!(r["jwt_bundle_keys"].as_u64() >= Some(1), "{r}");
    assert_eq!(r["jwt_locally_validated"], id, "{r}");
    assert_eq!(r["jwt_validated"], id, "{r}");
    assert_eq!(
        r["jwt_wrong_audience"]["code"], "INVALID_ARGUMENT",
        "a billing token is not valid for ledger: {r}"
    );
    // py-spiffe really sent an authority h2 refuses: grpcio 1.85 derives it
    // from the path ("tmp%2F…%2Fagent.sock").
    let log = agent.log_text();
    let sent = socket.display().to_string();
    let sent = sent.trim_start_matches('/').replace('/', "%2F");
    assert!(log.contains(&format!("authority=\"{sent}\"")), "{log}");
}

#[tokio::test]
async fn raw_grpcio_clients_are_served_whatever_their_authority() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let dir = broker.scratch("raw");
    let socket = dir.join("agent.sock");
    let agent = SocketAgent::start(&broker, "dev", "api", &socket, &[]).await;
    let proto = tests_dir().join("../proto");
    let r = run_client(
        &socket,
        &[
            "raw",
            "--proto",
            proto.to_str().unwrap(),
            "--scratch",
            dir.to_str().unwrap(),
        ],
    );
    for case in ["default", "bare_path", "percent_encoded_path", "localhost"] {
        assert_eq!(r[case]["code"], "OK", "{case}: {r}\n{}", agent.log_text());
        assert_eq!(r[case]["x509_spiffe_id"], "spiffe://dev.example.org/api");
        assert_eq!(r[case]["jwt_spiffe_id"], "spiffe://dev.example.org/api");
    }
    // The bare path and the percent-encoded one really arrived.
    let log = agent.log_text();
    let path = socket.display().to_string();
    assert!(log.contains(&format!("authority=\"{path}\"")), "{log}");
    assert!(
        log.contains(&format!("authority=\"{}\"", path.replace('/', "%2F"))),
        "{log}"
    );
}

#[tokio::test]
async fn py_spiffe_is_served_by_a_node_agent() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "host-1", &[], &[]);
    // A workload of this node, attested by the caller's uid (root here).
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "py-app",
        "--owner",
        "team-test",
        "--purpose",
        "py-spiffe in node mode",
        "--parent",
        "dev/host-1",
        "--selector",
        "unix:uid=0",
        "--audience",
        "billing",
    ]);
    let socket = broker.scratch("py-node").join("agent.sock");
    let agent = SocketAgent::start_node(&broker, "dev", "host-1", &socket, &[]).await;
    let r = run_client(&socket, &["pyspiffe"]);
    let id = "spiffe://dev.example.org/py-app";
    assert!(r.get("error").is_none(), "{r}\n{}", agent.log_text());
    assert_eq!(r["x509_spiffe_id"], id, "{r}");
    assert_eq!(r["x509_chain_verified"], true, "{r}");
    assert_eq!(r["x509_key_matches"], true, "{r}");
    assert_eq!(r["jwt_spiffe_id"], id, "{r}");
    assert_eq!(r["jwt_locally_validated"], id, "{r}");
    assert_eq!(r["jwt_validated"], id, "{r}");
    assert_eq!(r["jwt_wrong_audience"]["code"], "INVALID_ARGUMENT", "{r}");
}

/// A socket directory another uid can reach (the broker's scratch space is
/// private to root).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("cb-sock")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const NOBODY: u32 = 65534;

#[tokio::test]
async fn allow_uid_refuses_other_callers_on_every_call() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let dir = open_dir();
    let socket = dir.path().join("agent.sock");
    // The socket itself is open to all, so a refusal can only come from
    // the peer check.
    let agent = SocketAgent::start(
        &broker,
        "dev",
        "api",
        &socket,
        &["--socket-mode", "0666", "--allow-uid", "0"],
    )
    .await;
    let nobody = NOBODY.to_string();
    let r = run_client(
        &socket,
        &["pyspiffe", "--as-uid", &nobody, "--as-gid", &nobody],
    );
    assert_eq!(r["uid"], NOBODY, "{r}");
    for call in ["x509", "x509_bundles", "jwt", "jwt_bundles"] {
        assert_eq!(
            r[call]["code"],
            "PERMISSION_DENIED",
            "{call}: {r}\n{}",
            agent.log_text()
        );
        assert!(
            r[call]["details"]
                .as_str()
                .is_some_and(|d| d.contains("uid 65534")),
            "{call} names the uid: {r}"
        );
    }
    // Positive control: the same client as an allowed uid (root) is served.
    let r = run_client(&socket, &["pyspiffe"]);
    assert_eq!(r["x509_spiffe_id"], "spiffe://dev.example.org/api", "{r}");
    assert_eq!(r["jwt_validated"], "spiffe://dev.example.org/api", "{r}");
    drop(agent);

    // --allow-gid admits by group: nobody's group is now listed.
    let socket = dir.path().join("by-gid.sock");
    let _agent = SocketAgent::start(
        &broker,
        "dev",
        "api",
        &socket,
        &["--socket-mode", "0666", "--allow-gid", &nobody],
    )
    .await;
    let r = run_client(
        &socket,
        &["pyspiffe", "--as-uid", &nobody, "--as-gid", &nobody],
    );
    for call in ["x509", "x509_bundles", "jwt", "jwt_bundles"] {
        assert_eq!(r[call]["code"], "OK", "{call}: {r}");
    }
}
