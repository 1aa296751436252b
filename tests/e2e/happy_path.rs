//! The walkthrough from the README, checked with standard tools.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, agent, http, jwt, x509};

#[tokio::test]
async fn agent_once_writes_credentials_that_standard_tools_verify() {
    let broker = TestBroker::start().await;
    broker.create_identity(
        "dev",
        "payments/api",
        &["billing", "https://ledger.example.org"],
        &["charge", "refund"],
    );
    let token = broker.join_token("dev", "payments/api");
    let out = broker.scratch("out");
    let bundle = broker.bundle_path();
    let url = broker.url();
    let result = agent(&[
        "--broker",
        &url,
        "--join-token",
        &token,
        "--jwt-audience",
        "billing",
        "--jwt-audience",
        "https://ledger.example.org",
        "--once",
        "--bundle",
        bundle.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "agent failed: {}\n{}",
        String::from_utf8_lossy(&result.stderr),
        broker.log()
    );
    // The token never appears in the broker's log.
    assert!(!broker.log().contains(&token));

    // Files, with private material readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("svid_key.pem"), 0o600);
    assert_eq!(mode("jwt/billing.token"), 0o600);
    assert!(out.join("jwt/https___ledger.example.org.token").exists());

    // The certificate chains to the bundle and follows the X509-SVID profile.
    let chain = x509::pem_certs(&std::fs::read(out.join("svid.pem")).unwrap());
    let bundle_certs = x509::pem_certs(&std::fs::read(out.join("bundle.pem")).unwrap());
    let leaf = x509::parse(&chain[0]);
    let ca = x509::parse(&bundle_certs[0]);
    x509::assert_svid(&leaf, &ca, "spiffe://dev.example.org/payments/api");
    let lifetime = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (3600..=3600 + 60).contains(&lifetime),
        "1h default plus backdating, got {lifetime}s"
    );
    // The key in svid_key.pem matches the certificate.
    let key_pem = std::fs::read_to_string(out.join("svid_key.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    assert_eq!(
        key.public_key_raw(),
        leaf.public_key().subject_public_key.data.as_ref()
    );

    // openssl agrees, when it is installed.
    if let Ok(o) = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg(out.join("svid.pem"))
        .output()
    {
        assert!(
            o.status.success(),
            "openssl verify: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    // The JWT verifies against the JWKS found through OIDC discovery.
    let discovery =
        http::get_json(broker.http_port(), "/dev/.well-known/openid-configuration").await;
    let issuer = discovery["issuer"].as_str().unwrap().to_owned();
    assert_eq!(
        issuer,
        format!("http://127.0.0.1:{}/dev", broker.http_port())
    );
    let jwks_path = discovery["jwks_uri"]
        .as_str()
        .unwrap()
        .split_once("/dev/")
        .unwrap()
        .1
        .to_owned();
    let jwks = http::get_json(broker.http_port(), &format!("/dev/{jwks_path}")).await;
    let token = std::fs::read_to_string(out.join("jwt/billing.token")).unwrap();
    let claims = jwt::verify(&token, &jwks, "billing", &issuer).expect("JWT verifies");
    assert_eq!(claims["sub"], "spiffe://dev.example.org/payments/api");
    assert_eq!(claims["env"], "dev");
    assert_eq!(claims["scope"], "charge refund");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().unwrap().len() >= 22);
    // Issued at attestation (no client certificate yet): no binding.
    assert!(claims.get("cnf").is_none());

    // The SPIFFE bundle endpoint carries the same CA and JWT key.
    let spiffe = http::get_json(broker.http_port(), "/dev/bundle").await;
    let x5c = spiffe["keys"][0]["x5c"][0].as_str().unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(x5c)
        .unwrap();
    assert_eq!(der, bundle_certs[0].as_ref());
    assert_eq!(spiffe["keys"][1]["use"], "jwt-svid");
    assert_eq!(spiffe["keys"][1]["kid"], jwks["keys"][0]["kid"]);
}

#[tokio::test]
async fn sdk_attests_fetches_jwts_and_renews() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "worker", &["billing"], &["read", "write"]);
    let client = broker.client().await;
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "worker")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest");
    assert_eq!(attested.identity, ("dev".to_owned(), "worker".to_owned()));
    assert_eq!(attested.jwts.len(), 1);

    let session = client.authenticated(&attested.svid).await.expect("mTLS");
    let jwt = session
        .fetch_jwt(&JwtRequest::audience("billing").scope("read"))
        .await
        .expect("fetch JWT");
    assert_eq!(jwt.scopes, vec!["read"]);
    let payload: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let thumbprint = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        &attested.svid.cert_chain[0],
    ));
    assert!(
        payload.get("cnf").is_none(),
        "bearer token (the identity does not require binding): {thumbprint} {payload}"
    );
    assert_eq!(payload["scope"], "read");

    let (renewed, bundle) = session.renew().await.expect("renew");
    assert_ne!(renewed.serial, attested.svid.serial);
    assert_eq!(renewed.spiffe_id, "spiffe://dev.example.org/worker");
    let leaf = x509::parse(&renewed.cert_chain[0]);
    let ca = x509::parse(&bundle.certs[0]);
    x509::assert_svid(&leaf, &ca, "spiffe://dev.example.org/worker");
    // The renewed certificate carries a new key made by the SDK.
    assert_ne!(
        renewed.private_key.secret_pkcs8_der(),
        attested.svid.private_key.secret_pkcs8_der()
    );
    // And it works for the next call.
    let next = client.authenticated(&renewed).await.unwrap();
    next.fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("JWT with renewed SVID");

    // The inventory shows the issuance.
    let shown: serde_json::Value = serde_json::from_str(&broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "worker", "--output", "json",
    ]))
    .unwrap();
    assert!(shown["last_issued_at"].is_string(), "{shown}");
    assert!(shown["last_seen_at"].is_string());
}

#[tokio::test]
async fn agent_keeps_rotating_credentials_on_disk() {
    // Lifetimes of seconds so several rotations happen during the test.
    let broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"4s\"\ndefault_jwt = \"4s\"\n",
    )
    .await;
    broker.create_identity("dev", "rotating", &["billing"], &[]);
    let token = broker.join_token("dev", "rotating");
    let out = broker.scratch("rotating");
    let mut child = broker.spawn_agent(&token, &out, &["billing"]);
    let serial = |path: &std::path::Path| -> Option<String> {
        let pem = std::fs::read(path).ok()?;
        let certs = x509::pem_certs(&pem);
        Some(x509::parse(certs.first()?).raw_serial_as_string())
    };
    let mut serials = Vec::new();
    let mut tokens = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(12);
    while std::time::Instant::now() < deadline && serials.len() < 4 {
        if let Some(s) = serial(&out.join("svid.pem"))
            && serials.last() != Some(&s)
        {
            serials.push(s);
        }
        if let Ok(t) = std::fs::read_to_string(out.join("jwt/billing.token"))
            && tokens.last() != Some(&t)
        {
            tokens.push(t);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        serials.len() >= 3,
        "expected rotations, saw {serials:?}\n{}",
        broker.log()
    );
    assert!(tokens.len() >= 3, "JWT rotated too: {}", tokens.len());
    // The key on disk always matches the certificate on disk.
    let leaf = x509::pem_certs(&std::fs::read(out.join("svid.pem")).unwrap());
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(out.join("svid_key.pem")).unwrap())
        .unwrap();
    assert_eq!(
        key.public_key_raw(),
        x509::parse(&leaf[0])
            .public_key()
            .subject_public_key
            .data
            .as_ref()
    );
}
