//! Keys that rotate by themselves, with second-scale lifetimes: issuance
//! and mTLS between two SDK workloads carry on across several CA and JWT
//! key rotations without one failed call or handshake; a JWT signed by the
//! previous key keeps verifying (SDK verifier, jsonwebtoken over the JWKS,
//! PyJWT through OIDC discovery); the schedule survives a restart.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::tls::{AllowedPeers, client_config, server_config};
use credbroker_client::{JwtRequest, JwtVerifier, VerifyError};
use credbroker_e2e::{TestBroker, http, jwt};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{call, serve, source};

/// CA and JWT key live 12 s: a successor is published at 6 s and signs from
/// 10 s, so a rotation every 10 s; credentials live 2 s.
pub(crate) const FAST_ROTATION: &str = "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"2s\"\nx509_ceiling = \"2s\"\ndefault_jwt = \"2s\"\njwt_ceiling = \"2s\"\n[keys]\nca_lifetime = \"12s\"\njwt_key_lifetime = \"12s\"\n";

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The authority key identifier of a leaf: which CA key signed it.
fn issuer_of(cert: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).unwrap();
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| format!("{:X?}", k.0))
            }
            _ => None,
        })
        .expect("the leaf names its CA key")
}

/// PyJWT, a library this project did not write, verifies `token` with the
/// keys it finds through the environment's OIDC discovery document.
fn pyjwt_verifies(broker: &TestBroker, token: &str) -> Result<(), String> {
    let issuer = format!("http://127.0.0.1:{}/dev", broker.http_port());
    let script = r#"
import json, sys, urllib.request
import jwt
issuer, token = sys.argv[1], sys.argv[2]
discovery = json.load(urllib.request.urlopen(issuer + "/.well-known/openid-configuration"))
keys = jwt.PyJWKClient(discovery["jwks_uri"])
jwt.decode(token, keys.get_signing_key_from_jwt(token), algorithms=["ES256"],
           audience="billing", issuer=issuer, leeway=30)
print("verified")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &issuer, token])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn issuance_and_mtls_carry_on_across_rotations() {
    let broker = TestBroker::start_with(&["dev"], FAST_ROTATION).await;
    broker.create_identity("dev", "server", &[], &[]);
    broker.create_identity("dev", "client", &["billing"], &[]);
    let server_source = source(&broker, "server");
    let client_source = source(&broker, "client");
    server_source.ready().await.unwrap();
    client_source.ready().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(&server_source, AllowedPeers::TrustDomain, None).unwrap(),
    ));
    let server = tokio::spawn(serve(listener, acceptor));
    let connector = TlsConnector::from(Arc::new(
        client_config(
            &client_source,
            AllowedPeers::Only(vec!["spiffe://dev.example.org/server".into()]),
            None,
        )
        .unwrap(),
    ));
    let client = broker.client().await;
    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();

    let mut kids = BTreeSet::new();
    let mut cas = BTreeSet::new();
    let mut sequences = BTreeSet::new();
    let mut handshakes = 0;
    let mut calls = 0;
    // A JWT signed by each key, verified again once a newer key signs.
    let mut held: Option<String> = None;
    let mut verified_after_rotation = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(34) {
        let (reply, _) = call(port, &connector)
            .await
            .unwrap_or_else(|e| panic!("handshake {handshakes} failed: {e}"));
        assert_eq!(reply, "hello spiffe://dev.example.org/client");
        handshakes += 1;

        // Issuance through the broker with the client's current SVID.
        let creds = client_source.current().expect("client credentials");
        let session = client.authenticated(&creds.svid).await.expect("session");
        let token = session
            .fetch_jwt(&JwtRequest::audience("billing"))
            .await
            .unwrap_or_else(|e| panic!("FetchJwt {calls} failed: {e}"))
            .token;
        let (renewed, _) = session
            .renew()
            .await
            .unwrap_or_else(|e| panic!("RenewX509 {calls} failed: {e}"));
        calls += 1;
        cas.insert(issuer_of(&renewed.cert_chain[0]));
        let kid = kid_of(&token);
        if let Some(old) = &held
            && kid_of(old) != kid
        {
            // The key that signed `old` is now previous: still published.
            verifier
                .verify(old)
                .await
                .unwrap_or_else(|e| panic!("JWT of the previous key refused: {e}"));
            let jwks = http::get_json(broker.http_port(), "/dev/jwks.json").await;
            jwt::verify(
                old,
                &jwks,
                "billing",
                &format!("http://127.0.0.1:{}/dev", broker.http_port()),
            )
            .unwrap_or_else(|e| panic!("jsonwebtoken refused the previous key's JWT: {e}"));
            pyjwt_verifies(&broker, old)
                .unwrap_or_else(|e| panic!("PyJWT refused the previous key's JWT: {e}"));
            verified_after_rotation += 1;
        }
        kids.insert(kid);
        held = Some(token);
        let bundle = http::get_json(broker.http_port(), "/dev/bundle").await;
        sequences.insert(bundle["spiffe_sequence"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.abort();
    assert!(kids.len() >= 4, "JWT keys seen: {kids:?}");
    assert!(cas.len() >= 4, "CAs seen: {cas:?}");
    assert!(verified_after_rotation >= 3, "{verified_after_rotation}");
    assert!(
        sequences.len() >= 4,
        "spiffe_sequence values: {sequences:?}"
    );
    assert!(handshakes > 100 && calls > 100, "{handshakes} {calls}");
}

#[tokio::test]
async fn the_schedule_survives_a_restart() {
    let mut broker = TestBroker::start_with(&["dev"], FAST_ROTATION).await;
    let listed = |broker: &TestBroker| -> Vec<serde_json::Value> {
        serde_json::from_str(&broker.cli_ok(&["keys", "list", "--env", "dev", "--output", "json"]))
            .unwrap()
    };
    // Wait until a successor is prepared, then restart before it activates.
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let keys = listed(&broker);
        if keys.iter().any(|k| k["state"] == "prepared") {
            break keys;
        }
        assert!(Instant::now() < deadline, "no key was prepared: {keys:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    broker.restart().await;
    let after = listed(&broker);
    let ids = |keys: &[serde_json::Value]| -> BTreeSet<(String, String)> {
        keys.iter()
            .filter(|k| k["state"] != "retired")
            .map(|k| {
                (
                    k["id"].as_str().unwrap().to_owned(),
                    k["activates_at"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // The same keys with the same activation times: nothing regenerated.
    assert!(
        ids(&before).is_subset(&ids(&after)),
        "before {before:?}\nafter {after:?}"
    );
}

fn keys(broker: &TestBroker) -> Vec<serde_json::Value> {
    serde_json::from_str(&broker.cli_ok(&["keys", "list", "--env", "dev", "--output", "json"]))
        .unwrap()
}

fn key_id(keys: &[serde_json::Value], kind: &str, state: &str) -> String {
    keys.iter()
        .find(|k| k["kind"] == kind && k["state"] == state)
        .unwrap_or_else(|| panic!("no {state} {kind} key in {keys:?}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn ca_of(svid: &credbroker_client::X509Svid) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(&svid.cert_chain[0]).unwrap();
    credbroker_client::authority_key_id(&cert).unwrap()
}

/// Waits up to 5 s for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotate_and_retire_by_hand() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let source = credbroker_client::CredentialSource::start(credbroker_client::SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: credbroker_client::Evidence::JoinToken(broker.join_token("dev", "api")),
        jwt_audiences: vec!["billing".into()],
        policy: credbroker_client::RefreshPolicy::default(),
    });
    source.ready().await.unwrap();
    let listed = keys(&broker);
    let first_jwt = key_id(&listed, "jwt", "active");
    let first_ca = key_id(&listed, "x509", "active");
    assert_eq!(ca_of(&source.current().unwrap().svid), first_ca);
    // The attacker's copy of the CA key, taken before it is retired.
    let (_, stolen_ca) = credbroker_e2e::stolen::environment_ca(&broker, "dev").await;

    // Rotate the JWT key by hand: the old one is previous and still verifies.
    broker.cli_ok(&["keys", "rotate", "--env", "dev", "--kind", "jwt"]);
    let listed = keys(&broker);
    let second_jwt = key_id(&listed, "jwt", "active");
    assert_ne!(second_jwt, first_jwt);
    assert_eq!(key_id(&listed, "jwt", "previous"), first_jwt);
    assert_eq!(
        key_id(&listed, "x509", "active"),
        first_ca,
        "x509 untouched"
    );
    let held = source.current().unwrap().jwts["billing"].token.clone();
    assert_eq!(kid_of(&held), first_jwt);
    let client = broker.client().await;
    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();
    let follower = client
        .authenticated(&source.current().unwrap().svid)
        .await
        .unwrap();
    let _following = verifier.follow_revocations(follower);
    verifier
        .verify(&held)
        .await
        .expect("previous key still verifies");

    // Retire it at once: its JWT is revoked, the source fetches one from the
    // new key without waiting for half its life, the JWKS drops it.
    broker.cli_ok(&[
        "keys", "retire", "--env", "dev", "--key", &first_jwt, "--reason", "leaked", "--now",
    ]);
    let jwks = http::get_json(broker.http_port(), "/dev/jwks.json").await;
    assert!(!jwks.to_string().contains(&first_jwt), "{jwks}");
    let session = client
        .authenticated(&source.current().unwrap().svid)
        .await
        .unwrap();
    // Out of the key sets at once (`--now`): nothing verifies it any more.
    let answer = session.introspect_token(&held).await.unwrap();
    assert!(!answer.active);
    assert!(
        answer.reason.contains("unknown signing key"),
        "{}",
        answer.reason
    );
    // A verifier following the revocation stream refuses it as soon as the
    // retirement arrives, before its next key refresh.
    let deadline = Instant::now() + Duration::from_secs(5);
    while verifier.verify(&held).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the verifier still accepts a retired key's JWT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refusal = verifier.verify(&held).await;
    assert!(
        matches!(&refusal, Err(VerifyError::Revoked(r)) if r.contains("signing key retired")),
        "{refusal:?}"
    );
    eventually("the source holds a JWT from the new key", || {
        source.current().is_ok_and(|c| {
            c.jwts
                .get("billing")
                .is_some_and(|j| kid_of(&j.token) == second_jwt)
        })
    })
    .await;

    // Retire the CA that signed the source's SVID: the SVID is refused for
    // everything but renewal, and the source renews from the new CA at once.
    let retired = broker.cli_ok(&[
        "keys",
        "retire",
        "--env",
        "dev",
        "--key",
        &first_ca,
        "--reason",
        "CA key exposed",
    ]);
    assert!(retired.contains("signs in its place"), "{retired}");
    let new_ca = key_id(&keys(&broker), "x509", "active");
    assert_ne!(new_ca, first_ca);
    let refused = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("signing key retired"),
        "{refused}"
    );
    eventually("the source holds an SVID from the new CA", || {
        source.current().is_ok_and(|c| ca_of(&c.svid) == new_ca)
    })
    .await;
    let renewed = client
        .authenticated(&source.current().unwrap().svid)
        .await
        .unwrap();
    renewed
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("the new SVID works");

    // A certificate forged with the stolen (retired) CA key passes TLS —
    // the CA is still published for what it signed — but was never issued
    // by the broker: no renewal for it.
    let forged = credbroker_e2e::stolen::forge_svid(&stolen_ca, "spiffe://dev.example.org/api");
    let mut attacker = broker.raw_workload(Some(forged)).await;
    let refused = attacker
        .renew_x509(credbroker_proto::v1::RenewX509Request {
            csr: credbroker_e2e::x509::csr(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Every step is audited with who did it.
    let audit = broker.cli_ok(&["audit", "--output", "json"]);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    for action in ["keys.rotate", "keys.retire"] {
        assert!(
            entries
                .iter()
                .any(|e| e["action"] == action && e["actor"] == "admin" && e["decision"] == "done"),
            "{action} not audited: {audit}"
        );
    }
}
