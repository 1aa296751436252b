//! Node mode: one real `credbroker-agent --node` serving several workloads,
//! each attested by the kernel's credentials of its process. Callers are a
//! probe binary built on the `spiffe` crate, run as other uids (CI runs as
//! root, so the test can switch).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credbroker_client::JwtRequest;
use credbroker_client::node::EntryKey;
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::{RenewX509Request, revoke_request};

/// A node agent for `env/node`, serving on a socket anyone may connect to
/// (the agent decides per caller).
struct Node {
    child: Child,
    socket: PathBuf,
    probe: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the probe where every uid can execute it (the build directory may
/// sit under a private home).
fn public_probe(dir: &Path) -> PathBuf {
    let bin = dir.join("workload-probe");
    std::fs::copy(env!("CARGO_BIN_EXE_workload-probe"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn open_up(path: &Path) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

async fn start_node(broker: &TestBroker, name: &str) -> Node {
    let dir = broker.scratch(&format!("node-{name}"));
    // Every uid must reach the socket: the test's temp root is private.
    let mut up = Some(dir.as_path());
    while let Some(p) = up {
        if p == Path::new("/tmp") || p.parent().is_none() {
            break;
        }
        open_up(p);
        up = p.parent();
    }
    let socket = dir.join("agent.sock");
    let token = broker.join_token("dev", name);
    let child = Command::new(credbroker_e2e::binary("credbroker-agent"))
        .args(["--broker", &broker.url(), "--join-token", &token, "--node"])
        .arg("--bundle")
        .arg(broker.bundle_path())
        .arg("--workload-api-socket")
        .arg(&socket)
        .args(["--socket-mode", "0666"])
        .env("CREDBROKER_LOG", "info,credbroker_client=debug")
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "node agent socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Node {
        child,
        socket,
        probe: public_probe(&dir),
    }
}

impl Node {
    /// Runs the probe as `uid` and returns (success, stdout).
    fn probe(&self, uid: u32, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.probe)
            .arg(args[0])
            .arg(&self.socket)
            .args(&args[1..])
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn x509(&self, uid: u32) -> Result<Vec<String>, String> {
        match self.probe(uid, &["x509"]) {
            (true, out) => {
                let mut ids: Vec<String> = out
                    .lines()
                    .filter_map(|l| l.strip_prefix("svid "))
                    .map(str::to_owned)
                    .collect();
                ids.sort();
                Ok(ids)
            }
            (false, out) => Err(out),
        }
    }

    fn spawn_watch(&self, uid: u32, seconds: u32) -> Child {
        Command::new(&self.probe)
            .arg("watch")
            .arg(&self.socket)
            .arg(seconds.to_string())
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn workload(broker: &TestBroker, name: &str, parent: &str, selectors: &[&str], audiences: &[&str]) {
    let mut args = vec![
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        name,
        "--owner",
        "team-test",
        "--purpose",
        "node test",
        "--parent",
        parent,
    ];
    for s in selectors {
        args.extend(["--selector", s]);
    }
    for a in audiences {
        args.extend(["--audience", a]);
    }
    broker.cli_ok(&args);
}

fn spiffe(name: &str) -> String {
    format!("spiffe://dev.example.org/{name}")
}

#[tokio::test]
async fn each_caller_gets_exactly_the_identities_its_process_proves() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "host-1", &[], &[]);
    let node = start_node(&broker, "host-1").await;
    let probe_path = node.probe.to_str().unwrap().to_owned();
    workload(
        &broker,
        "app-a",
        "dev/host-1",
        &["unix:uid=1001"],
        &["billing"],
    );
    // Two identities for one uid, the second also pinned to the binary.
    workload(
        &broker,
        "app-a-tools",
        "dev/host-1",
        &["unix:uid=1001", &format!("unix:path={probe_path}")],
        &[],
    );
    workload(
        &broker,
        "app-b",
        "dev/host-1",
        &["unix:uid=1002"],
        &["billing"],
    );
    // Right uid, wrong executable.
    workload(
        &broker,
        "app-c",
        "dev/host-1",
        &["unix:uid=1003", "unix:path=/usr/local/bin/payments"],
        &[],
    );
    workload(
        &broker,
        "nobody-app",
        "dev/host-1",
        &["unix:user=nobody"],
        &[],
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let a = loop {
        match node.x509(1001) {
            Ok(ids) if ids.len() == 2 => break ids,
            other => {
                assert!(Instant::now() < deadline, "uid 1001: {other:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(a, [spiffe("app-a"), spiffe("app-a-tools")]);
    assert_eq!(node.x509(1002).unwrap(), [spiffe("app-b")]);
    assert_eq!(node.x509(65534).unwrap(), [spiffe("nobody-app")]);

    let refused = node.x509(1003).unwrap_err();
    assert!(
        refused.contains("no identity registered for uid 1003 on node dev/host-1"),
        "{refused}"
    );
    let refused = node.x509(1004).unwrap_err();
    assert!(
        refused.contains("PermissionDenied") || refused.contains("permission"),
        "{refused}"
    );
    assert!(refused.contains("uid 1004"), "{refused}");

    // JWTs only for identities allowing the audience.
    let (ok, out) = node.probe(1001, &["jwt", "billing"]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), format!("jwt {}", spiffe("app-a")));
    let (ok, out) = node.probe(1002, &["jwt", "payroll"]);
    assert!(!ok, "an audience the identity does not allow: {out}");

    // A new identity for the running node is served within a second or so.
    let created = Instant::now();
    workload(&broker, "app-d", "dev/host-1", &["unix:uid=1004"], &[]);
    loop {
        match node.x509(1004) {
            Ok(ids) => {
                assert_eq!(ids, [spiffe("app-d")]);
                break;
            }
            Err(e) => {
                assert!(
                    created.elapsed() < Duration::from_secs(10),
                    "new identity never served: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    eprintln!("identity create → first SVID: {:?}", created.elapsed());

    // Disabling an identity ends its caller's stream with PermissionDenied.
    let watch = node.spawn_watch(1002, 30);
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "app-b"]);
    let out = tokio::task::spawn_blocking(move || watch.wait_with_output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.contains(&format!("update {}", spiffe("app-b"))),
        "{out}"
    );
    assert!(out.contains("error:") && out.contains("uid 1002"), "{out}");
    assert!(node.x509(1002).is_err());
}

async fn introspect_as_admin(
    broker: &TestBroker,
    cert_der: &[u8],
) -> credbroker_proto::v1::IntrospectResponse {
    let admin = broker.channel(Some(broker.admin_identity())).await.unwrap();
    credbroker_proto::v1::workload_client::WorkloadClient::new(admin)
        .introspect(credbroker_proto::v1::IntrospectRequest {
            credential: Some(
                credbroker_proto::v1::introspect_request::Credential::Certificate(
                    cert_der.to_vec(),
                ),
            ),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn the_broker_mints_only_for_the_callers_own_workloads() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "host-1", &[], &[]);
    broker.create_identity("dev", "host-2", &[], &[]);
    workload(
        &broker,
        "mine",
        "dev/host-1",
        &["unix:uid=1001"],
        &["billing"],
    );
    workload(
        &broker,
        "theirs",
        "dev/host-2",
        &["unix:uid=1001"],
        &["billing"],
    );
    broker.create_identity("dev", "standalone", &["billing"], &[]);

    // The node's SVID, as its agent would hold it.
    let client = broker.client().await;
    let node = client
        .attest(
            &credbroker_client::Evidence::JoinToken(broker.join_token("dev", "host-1")),
            &[],
        )
        .await
        .unwrap();
    let session = client.authenticated(&node.svid).await.unwrap();
    let key = |name: &str| EntryKey {
        env: "dev".into(),
        name: name.into(),
    };
    let (svid, _) = session.mint_workload_svid(&key("mine")).await.unwrap();
    assert_eq!(svid.spiffe_id, spiffe("mine"));
    let jwt = session
        .mint_workload_jwt(&key("mine"), &JwtRequest::audience("billing"))
        .await
        .unwrap();
    assert_eq!(jwt.spiffe_id, spiffe("mine"));
    for name in ["theirs", "standalone", "does-not-exist", "host-2"] {
        let err = session.mint_workload_svid(&key(name)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(tonic::Code::PermissionDenied),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("not served by node dev/host-1"),
            "{err}"
        );
        let err = session
            .mint_workload_jwt(&key(name), &JwtRequest::audience("billing"))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(tonic::Code::PermissionDenied),
            "{name}: {err}"
        );
    }

    // A workload's SVID alone cannot renew itself around its node.
    let mut raw = broker
        .raw_workload(Some((svid.cert_chain_pem(), svid.private_key_pem())))
        .await;
    let err = raw
        .renew_x509(RenewX509Request { csr: vec![] })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("served by node dev/host-1"),
        "{err:?}"
    );

    // Every mint is audited with the node as actor.
    let audit = broker.cli_ok(&["audit", "--identity", "dev/mine", "--output", "json"]);
    assert!(
        audit.contains("mint_workload_svid") && audit.contains(&spiffe("host-1")),
        "{audit}"
    );
    let audit = broker.cli_ok(&["audit", "--identity", "dev/theirs", "--output", "json"]);
    assert!(
        audit.contains("denied") && audit.contains("not served by node"),
        "{audit}"
    );

    let leaf = svid.cert_chain[0].to_vec();
    assert!(introspect_as_admin(&broker, &leaf).await.active);

    // Disabling the node kills what its agent holds.
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "host-1"]);
    let answer = introspect_as_admin(&broker, &leaf).await;
    assert!(
        !answer.active,
        "workload SVID of a disabled node must be inactive"
    );
    assert!(
        answer.reason.contains("its node dev/host-1 is disabled"),
        "{}",
        answer.reason
    );
    broker.cli_ok(&["identity", "enable", "--env", "dev", "--name", "host-1"]);
    assert!(introspect_as_admin(&broker, &leaf).await.active);

    // Revoking the node revokes what was minted for its workloads.
    broker
        .revoke(
            revoke_request::Target::Identity(credbroker_proto::v1::IdentityRef {
                env: "dev".into(),
                name: "host-1".into(),
            }),
            "host compromised",
        )
        .await;
    let answer = introspect_as_admin(&broker, &leaf).await;
    assert!(
        !answer.active,
        "workload SVID of a revoked node must be inactive"
    );
    assert!(
        answer.reason.contains("host compromised"),
        "{}",
        answer.reason
    );
    let err = session.mint_workload_svid(&key("mine")).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
}

#[tokio::test]
async fn identity_create_enforces_node_rules() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "host-1", &[], &[]);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "identity",
            "create",
            "--env",
            "dev",
            "--name",
            "w",
            "--owner",
            "o",
            "--purpose",
            "p",
        ];
        args.extend_from_slice(extra);
        broker.cli(&args)
    };
    let cases: [(&[&str], &str); 5] = [
        (&["--selector", "unix:uid=1000"], "--parent"),
        (&["--parent", "dev/host-1"], "at least one unix: selector"),
        (
            &["--parent", "dev/nope", "--selector", "unix:uid=1"],
            "does not exist",
        ),
        (
            &["--parent", "dev/host-1", "--selector", "unix:uid=me"],
            "must be a number",
        ),
        (
            &["--parent", "dev/host-1", "--selector", "unix:pid=1"],
            "unknown selector unix:pid",
        ),
    ];
    for (args, needle) in cases {
        let out = create(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
    // Nothing was created by the refusals.
    let list = broker.cli_ok(&["identity", "list", "--output", "json"]);
    assert!(!list.contains("\"w\""), "{list}");
    let shown = create(&["--parent", "dev/host-1", "--selector", "unix:uid=1000"]);
    assert!(shown.status.success());
    let json = broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "w", "--output", "json",
    ]);
    assert!(json.contains("\"parent\": \"dev/host-1\""), "{json}");
}
