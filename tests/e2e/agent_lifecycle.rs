//! The agent says what it is doing, and each command's help is its own
//! (issue 13, item 5).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credbroker_e2e::{TestBroker, binary};

/// Starts the agent with `args`, its log going to `log`.
fn spawn_agent(args: &[&str], log: &Path) -> Child {
    Command::new(binary("credbroker-agent"))
        .args(args)
        .env_remove("CREDBROKER_JOIN_TOKEN")
        .env_remove("CREDBROKER_BROKER")
        .env("CREDBROKER_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits until `log` holds every one of `needles`, or fails showing it.
async fn wait_for_log(log: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if needles.iter().all(|n| text.contains(n)) {
            return text;
        }
        assert!(Instant::now() < deadline, "missing {needles:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn waiting_for_an_unreachable_broker_is_logged_with_the_cause_and_next_retry() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start().await;
    let token = dir.path().join("join.token");
    std::fs::write(&token, "cbjt_not-a-real-token").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("agent.log");
    // Another loopback address: the agent's own health server (on
    // 127.0.0.1, port chosen by the kernel) may be handed this very port.
    let url = format!("https://127.0.0.2:{port}");
    let mut agent = spawn_agent(
        &[
            "--broker",
            &url,
            "--bundle",
            broker.bundle_path().to_str().unwrap(),
            "--join-token-file",
            token.to_str().unwrap(),
            "--out-dir",
            dir.path().join("svid").to_str().unwrap(),
            "--workload-api-socket",
            dir.path().join("agent.sock").to_str().unwrap(),
            "--health-addr",
            "127.0.0.1:0",
        ],
        &log,
    );
    let text = wait_for_log(
        &log,
        &[
            "cannot reach the broker",
            "connection refused",
            "retrying in",
            "serving GET /healthz on http://127.0.0.1:",
        ],
    )
    .await;
    assert!(
        agent.try_wait().unwrap().is_none(),
        "still waiting:\n{text}"
    );
    stop(&mut agent);
}

#[tokio::test]
async fn sigterm_is_logged_and_the_socket_removed() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let dir = broker.scratch("agent");
    let token = dir.join("join.token");
    std::fs::write(&token, broker.join_token("dev", "api")).unwrap();
    let socket = dir.join("run").join("agent.sock");
    let log = dir.join("agent.log");
    let mut agent = spawn_agent(
        &[
            "--broker",
            &broker.url(),
            "--bundle",
            broker.bundle_path().to_str().unwrap(),
            "--join-token-file",
            token.to_str().unwrap(),
            "--out-dir",
            dir.join("svid").to_str().unwrap(),
            "--workload-api-socket",
            socket.to_str().unwrap(),
        ],
        &log,
    );
    wait_for_log(
        &log,
        &["wrote X.509-SVID", "serving the SPIFFE Workload API"],
    )
    .await;
    assert!(socket.exists());
    let status = stop(&mut agent);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        text.contains("SIGTERM received") && text.contains("removed the Workload API socket"),
        "{text}"
    );
    assert!(!socket.exists(), "the socket is gone");
}

#[test]
fn each_command_has_its_own_help() {
    let help = |bin: &str, args: &[&str]| {
        let out = Command::new(binary(bin)).args(args).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let agent = help("credbroker-agent", &["--help"]);
    assert!(
        agent.starts_with("credbroker-agent: gets this workload's"),
        "{agent}"
    );
    assert!(!agent.contains("Client SDK"), "{agent}");
    assert!(agent.contains("--join-token-file") && agent.contains("Examples:"));

    let serve = help("credbroker", &["serve", "--help"]);
    for flag in [
        "--config",
        "--data-dir",
        "--grpc-listen",
        "--http-listen",
        "--kek-file",
    ] {
        assert!(serve.contains(flag), "{flag} missing:\n{serve}");
    }
    for admin_only in ["--broker", "--output"] {
        assert!(!serve.contains(admin_only), "{admin_only} listed:\n{serve}");
    }
    let list = help("credbroker", &["identity", "list", "--help"]);
    assert!(
        list.contains("--broker") && list.contains("--output"),
        "{list}"
    );
}

#[tokio::test]
async fn a_node_agent_waiting_for_its_broker_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start().await;
    let token = dir.path().join("host.token");
    std::fs::write(&token, "cbjt_not-a-real-token").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socket = dir.path().join("node.sock");
    let log = dir.path().join("agent.log");
    let mut agent = spawn_agent(
        &[
            "--node",
            "--broker",
            &format!("https://127.0.0.1:{port}"),
            "--bundle",
            broker.bundle_path().to_str().unwrap(),
            "--join-token-file",
            token.to_str().unwrap(),
            "--workload-api-socket",
            socket.to_str().unwrap(),
        ],
        &log,
    );
    wait_for_log(&log, &["cannot reach the broker", "retrying in"]).await;
    assert!(socket.exists());
    let status = stop(&mut agent);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(text.contains("removed the Workload API socket"), "{text}");
    assert!(!socket.exists(), "the socket is gone");
}

#[tokio::test]
async fn a_health_address_in_use_is_named() {
    let broker = TestBroker::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("join.token");
    std::fs::write(&token, "cbjt_not-a-real-token").unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = credbroker_e2e::agent(&[
        "--broker",
        &broker.url(),
        "--bundle",
        broker.bundle_path().to_str().unwrap(),
        "--join-token-file",
        token.to_str().unwrap(),
        "--out-dir",
        dir.path().join("svid").to_str().unwrap(),
        "--health-addr",
        &addr,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot serve --health-addr {addr}")),
        "{err}"
    );
}
