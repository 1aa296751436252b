//! The `credbroker-agent` binary's own command line, without a broker.

use std::process::Command;

#[test]
fn agent_reports_a_missing_bundle_and_unreachable_broker() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credbroker-agent"))
        .args([
            "--bundle",
            "/nonexistent/ca.pem",
            "--join-token",
            "t",
            "--once",
            "--out-dir",
        ])
        .arg(dir.path())
        .env_remove("CREDBROKER_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bundle"));

    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_credbroker-agent"))
        .args([
            "--broker",
            "https://127.0.0.1:9",
            "--join-token",
            "t",
            "--once",
            "--bundle",
        ])
        .arg(&bundle)
        .arg("--out-dir")
        .arg(dir.path())
        .env_remove("CREDBROKER_JOIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust bundle"));
    // Nothing was written.
    assert!(!dir.path().join("svid.pem").exists());
}

#[test]
fn a_join_token_file_that_is_missing_or_empty_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, "unused").unwrap();
    let empty = dir.path().join("empty.token");
    std::fs::write(&empty, "\n").unwrap();
    for (file, needle) in [
        (
            dir.path().join("missing.token"),
            "cannot read --join-token-file",
        ),
        (empty, "is empty"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_credbroker-agent"))
            .arg("--join-token-file")
            .arg(&file)
            .arg("--bundle")
            .arg(&bundle)
            .args(["--once", "--out-dir"])
            .arg(dir.path())
            .env_remove("CREDBROKER_JOIN_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
}
