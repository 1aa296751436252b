//! `--log-format json`: every line the broker writes is one JSON object,
//! and audit events carry their documented fields at the top level. Shell
//! completions: `credbroker completions bash|zsh|fish`.

use std::process::Command;

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, binary};
use serde_json::Value;

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_audit_fields() {
    let broker = TestBroker::start_with_flags(&["--log-format", "json"]).await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let client = broker.client().await;
    let secret = broker.join_token("dev", "api");
    let token = Evidence::JoinToken(secret.clone());
    client
        .attest(&token, &[JwtRequest::audience("billing")])
        .await
        .expect("attest");
    client.attest(&token, &[]).await.expect_err("reused token");
    // Denials are queued; the next issuance's commit follows them.
    broker.cli_ok(&["identity", "disable", "--env", "dev", "--name", "api"]);
    let log = broker.log();
    assert!(!log.contains(&secret), "join token leaked into the log");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for field in ["timestamp", "level", "target"] {
            assert!(line[field].is_string(), "{field} missing: {line}");
        }
    }
    let audit = |decision: &str, action: &str| -> Vec<&Value> {
        lines
            .iter()
            .filter(|l| {
                l["target"] == "credbroker::audit"
                    && l["decision"] == decision
                    && l["action"] == action
            })
            .collect()
    };
    let issued = audit("issued", "attest");
    assert_eq!(issued.len(), 2, "one X.509-SVID and one JWT:\n{log}");
    for e in &issued {
        for field in [
            "identity",
            "env",
            "actor",
            "peer",
            "credential",
            "expires_at",
        ] {
            assert!(e[field].is_string(), "{field} missing: {e}");
        }
        assert_eq!(e["identity"], "dev/api");
        assert_eq!(e["env"], "dev");
    }
    assert!(
        issued
            .iter()
            .any(|e| e["credential"] == "x509-svid" && e["serial"].is_string())
    );
    assert!(
        issued
            .iter()
            .any(|e| e["credential"] == "jwt-svid" && e["jti"].is_string())
    );
    let denied = audit("denied", "attest");
    assert_eq!(denied.len(), 1, "{log}");
    assert!(
        denied[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("unauthenticated:") && r.contains("already used")),
        "{}",
        denied[0]
    );
    assert_eq!(denied[0]["identity"], "dev/api", "{}", denied[0]);
    let changed = audit("done", "identity.disable");
    assert_eq!(changed.len(), 1, "{log}");
    assert!(changed[0]["detail"].is_string(), "{}", changed[0]);
    assert_eq!(changed[0]["actor"], "admin", "{}", changed[0]);
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(binary("credbroker"))
            .args(["completions", shell])
            .output()
            .expect("run credbroker completions");
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("credbroker") && script.contains("identity"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("credbroker.bash");
            std::fs::write(&file, script.as_bytes()).expect("write");
            let check = Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("bash -n");
            assert!(
                check.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }
    let out = Command::new(binary("credbroker"))
        .args(["completions", "powershell-ish"])
        .output()
        .expect("run");
    assert!(!out.status.success());
}
