//! An environment whose CAs are intermediates under the operator's own
//! root (made here with the openssl CLI, as an operator would): the bundle
//! holds the root alone, every SVID comes with its intermediate, openssl
//! verifies the chain, and all of it holds across CA rotations.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use credbroker_client::{Evidence, pem_encode};
use credbroker_e2e::{TestBroker, http};

use crate::rotation::FAST_ROTATION;
use crate::tls::{MtlsPair, call};

/// A P-384 root CA valid for a day: `root.pem`, `root.key` (PKCS#8).
fn make_root(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("root.pem"), dir.join("root.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/O=Example Corp/CN=Example Offline Root",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `openssl verify -CAfile root.pem -untrusted chain.pem leaf.pem`.
fn openssl_verify(dir: &Path, root: &Path, chain: &[rustls_pki_types::CertificateDer<'_>]) {
    let leaf = dir.join("leaf.pem");
    let intermediates = dir.join("chain.pem");
    std::fs::write(&leaf, pem_encode("CERTIFICATE", &chain[0])).unwrap();
    let rest: String = chain[1..]
        .iter()
        .map(|c| pem_encode("CERTIFICATE", c))
        .collect();
    std::fs::write(&intermediates, rest).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(root)
        .arg("-untrusted")
        .arg(&intermediates)
        .arg(&leaf)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_upstream_root_anchors_every_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (root_pem, root_key) = make_root(dir.path());
    let config = format!(
        "{FAST_ROTATION}[[environments]]\nname = \"dev\"\nupstream_ca_cert = {:?}\nupstream_ca_key = {:?}\n",
        root_pem, root_key
    );
    let broker = TestBroker::start_with(&[], &config).await;
    let root_der = credbroker_e2e::x509::pem_certs(&std::fs::read(&root_pem).unwrap()).remove(0);

    // The bundle is the root alone, as a JWK of its own key type.
    let bundle = http::get_json(broker.http_port(), "/dev/bundle").await;
    let x509: Vec<&serde_json::Value> = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .collect();
    assert_eq!(x509.len(), 1, "{bundle}");
    assert_eq!(x509[0]["crv"], "P-384");
    use base64::Engine;
    let x5c = base64::engine::general_purpose::STANDARD
        .decode(x509[0]["x5c"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(x5c, root_der.as_ref());

    broker.create_identity("dev", "api", &[], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[])
        .await
        .unwrap();
    assert_eq!(attested.svid.cert_chain.len(), 2, "leaf and intermediate");
    assert_eq!(attested.bundle.certs, vec![root_der.clone()]);
    openssl_verify(dir.path(), &root_pem, &attested.svid.cert_chain);
    let first_intermediate = attested.svid.cert_chain[1].clone();

    // Two SDK workloads talk mTLS trusting the root only, while the
    // intermediate rotates under them.
    let pair = MtlsPair::start(&broker, &[]).await;

    let mut session = client.authenticated(&attested.svid).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rotations = 0;
    let mut last = first_intermediate.clone();
    while rotations < 2 {
        assert!(Instant::now() < deadline, "no CA rotation seen");
        let (reply, _) = call(pair.port, &pair.connector)
            .await
            .expect("mTLS across rotations");
        assert_eq!(reply, "hello spiffe://dev.example.org/client");
        let (renewed, bundle) = session.renew().await.expect("renew");
        assert_eq!(
            bundle.certs,
            vec![root_der.clone()],
            "the root stays the anchor"
        );
        openssl_verify(dir.path(), &root_pem, &renewed.cert_chain);
        if renewed.cert_chain[1] != last {
            rotations += 1;
            last = renewed.cert_chain[1].clone();
        }
        session = client.authenticated(&renewed).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pair.server.abort();
}

#[tokio::test]
async fn an_upstream_certificate_that_is_no_ca_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("leaf.pem"), dir.path().join("leaf.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=not a CA"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    let config = dir.path().join("credbroker.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ngrpc_listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n[[environments]]\nname = \"dev\"\nupstream_ca_cert = {cert:?}\nupstream_ca_key = {key:?}\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = Command::new(credbroker_e2e::binary("credbroker"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a CA certificate"), "{stderr}");
}
