//! The `credbroker` binary's own command line, without a running broker.

use std::process::Command;

fn credbroker(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_credbroker"))
        .args(args)
        .env_remove("CREDBROKER_DATA_DIR")
        .output()
        .expect("run credbroker")
}

#[test]
fn admin_command_without_credentials_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = credbroker(&[
        "identity",
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broker-ca.pem") && stderr.contains("--data-dir"),
        "{stderr}"
    );
}

#[test]
fn serve_rejects_a_bad_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[ttl]\ndefault_jwt = \"2s\"\n").unwrap();
    let out = credbroker(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ttl.default_jwt"), "{stderr}");
    std::fs::write(&config, "listen = 1\n").unwrap();
    let out = credbroker(&["serve", "--config", config.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}
