//! The `read_agent_files` example on files written by a real
//! `credbroker-agent`.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use credbroker_e2e::TestBroker;
use credbroker_examples::agent_files::{CertStatus, check_crl, read, watch};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

/// Runs `credbroker-agent --once` for `dev/name` with a fresh join token and
/// a JWT for `example-api`, writing to `out`.
fn agent_once(broker: &TestBroker, name: &str, out: &Path) {
    let token = broker.join_token("dev", name);
    let bundle = broker.bundle_path();
    let output = credbroker_e2e::agent(&[
        "--broker",
        &broker.url(),
        "--bundle",
        bundle.to_str().unwrap(),
        "--join-token",
        &token,
        "--out-dir",
        out.to_str().unwrap(),
        "--jwt-audience",
        "example-api",
        "--once",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn reads_and_checks_what_the_agent_wrote() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "reader", &["example-api"], &[]);
    let out = broker.scratch("svid");
    agent_once(&broker, "reader", &out);

    let files = read(&out).unwrap();
    assert_eq!(files.spiffe_id, "spiffe://dev.example.org/reader");
    assert!(!files.serial.is_empty());
    assert!(files.not_after > SystemTime::now());
    assert_eq!(files.jwts.len(), 1);
    let jwt = &files.jwts[0];
    assert_eq!(jwt.file, "example-api.token");
    assert_eq!(jwt.sub, files.spiffe_id);
    assert_eq!(jwt.aud, ["example-api"]);
    assert!(jwt.exp > SystemTime::now());
    let shown = files.to_string();
    assert!(shown.contains("spiffe://dev.example.org/reader"), "{shown}");

    // Another key next to the certificate is caught.
    let other = KeyPair::generate().unwrap();
    std::fs::write(out.join("svid_key.pem"), other.serialize_pem()).unwrap();
    let err = format!("{:#}", read(&out).unwrap_err());
    assert!(err.contains("not the key of svid.pem"), "{err}");

    // So is a bundle the certificate does not chain to.
    agent_once(&broker, "reader", &out);
    read(&out).unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let stranger = ca.self_signed(&KeyPair::generate().unwrap()).unwrap();
    std::fs::write(out.join("bundle.pem"), stranger.pem()).unwrap();
    let err = format!("{:#}", read(&out).unwrap_err());
    assert!(err.contains("does not verify against bundle.pem"), "{err}");
}

#[tokio::test]
async fn watching_shows_each_rotation() {
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"3s\"\n").await;
    broker.create_identity("dev", "watched", &[], &[]);
    let out = broker.scratch("svid");
    let mut agent = broker.spawn_agent(&broker.join_token("dev", "watched"), &out, &[]);

    let (tx, rx) = mpsc::channel();
    let dir = out.clone();
    std::thread::spawn(move || {
        watch(&dir, Duration::from_millis(200), |files| {
            let sent = files.map_or(Ok(()), |files| tx.send(files.serial));
            if sent.is_ok() {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
    });
    let mut serials = Vec::new();
    while serials.len() < 3 {
        let serial = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the files changed");
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
    }
    drop(rx);
    agent.kill().unwrap();
    agent.wait().unwrap();
}

#[tokio::test]
async fn says_when_the_certificate_is_expired_or_revoked() {
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"2s\"\n").await;
    broker.create_identity("dev", "shown", &["example-api"], &[]);
    let out = broker.scratch("svid");
    agent_once(&broker, "shown", &out);
    let crl_url = format!("http://127.0.0.1:{}/dev/crl", broker.http_port());
    let fetcher = credbroker_client::http::HttpFetcher::new(None);

    let mut files = read(&out).unwrap();
    check_crl(&mut files, &out, &fetcher.get(&crl_url).await.unwrap()).unwrap();
    assert_eq!(files.status, CertStatus::Valid);
    assert!(files.to_string().contains("status     valid"), "{files}");

    broker.cli_ok(&["revoke", "--serial", &files.serial, "--reason", "test"]);
    check_crl(&mut files, &out, &fetcher.get(&crl_url).await.unwrap()).unwrap();
    assert!(
        matches!(files.status, CertStatus::Revoked { .. }),
        "{files}"
    );
    assert!(files.to_string().contains("REVOKED at "), "{files}");

    // A CRL from another CA is refused, not believed.
    let other = TestBroker::start().await;
    let foreign = fetcher
        .get(&format!("http://127.0.0.1:{}/dev/crl", other.http_port()))
        .await
        .unwrap();
    let err = format!("{:#}", check_crl(&mut files, &out, &foreign).unwrap_err());
    assert!(err.contains("not signed by a CA in bundle.pem"), "{err}");

    // Past its NotAfter the certificate is still shown, marked expired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let files = read(&out).unwrap();
    assert_eq!(files.status, CertStatus::Expired);
    assert!(files.to_string().contains("EXPIRED"), "{files}");
}
