//! The configurations shipped in deploy/kubernetes are ones the broker
//! accepts: parsed and validated as `credbroker serve` would.

use credbroker::Config;

/// The `credbroker.toml: |` block of the ConfigMap in `manifest`.
fn embedded_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| l.trim() != "credbroker.toml: |");
    lines
        .next()
        .expect("the ConfigMap has a credbroker.toml key");
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn kubernetes_broker_config_is_valid() {
    let text = embedded_toml(include_str!("../../deploy/kubernetes/broker.yaml"));
    assert!(text.contains("[[attestors]]"), "{text}");
    let config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    let envs = config.environments().expect("environments");
    assert_eq!(envs.len(), 1);
    assert_eq!(config.public_url(), "http://credbroker.credbroker.svc:7080");
}

#[test]
fn kubernetes_ha_config_is_valid_and_names_one_issuer_for_all_replicas() {
    let text = embedded_toml(include_str!(
        "../../deploy/kubernetes/broker-ha-postgres.yaml"
    ));
    let mut config: Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The Deployment sets the store through CREDBROKER_STORE_URL.
    config.store_url = Some("postgres://credbroker@postgres/credbroker".into());
    config.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.public_url(), "http://credbroker.credbroker.svc:7080");
    assert!(config.kek_file.is_some(), "replicas share a KEK file");
}
