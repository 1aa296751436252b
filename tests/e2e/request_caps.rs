//! Request caps: one request cannot make the broker spend without bound.
//! Item counts and string lengths are refused with INVALID_ARGUMENT naming
//! the limit, before any work; oversized messages are refused by size;
//! refusals never echo what was sent; undecodable bytes are the caller's
//! error, not the broker's. Driven from a client this project did not
//! write too (tests/python/broker_attacks.py, grpcio).

use std::path::PathBuf;
use std::process::Command;

use credbroker_e2e::TestBroker;
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{
    AttestRequest, CreateIdentityRequest, GetJwksRequest, JwtRequest, RevokeRequest,
    attest_request, revoke_request,
};
use serde_json::Value;
use tonic::Code;

fn csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec()
}

fn jwts(n: usize) -> Vec<JwtRequest> {
    vec![
        JwtRequest {
            audiences: vec!["billing".into()],
            scopes: vec![],
            ttl_seconds: 0,
        };
        n
    ]
}

/// Peak resident memory of `pid` in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM");
    kib / 1024
}

#[tokio::test]
async fn an_attest_asking_for_100000_jwts_is_refused_cheaply() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let token = broker.join_token("dev", "api");
    let mut raw = broker.raw_workload(None).await;
    let attest = |jwts: Vec<JwtRequest>| AttestRequest {
        evidence: Some(attest_request::Evidence::JoinToken(token.clone())),
        csr: csr(),
        expected_identity: None,
        jwts,
    };

    // 100,000 JWT requests do not even fit the Workload message size.
    let err = raw.attest(attest(jwts(100_000))).await.unwrap_err();
    println!("100,000 JWTs: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("65536"), "names the limit: {err:?}");

    // 1,000 fit the message size and are refused by count, naming the cap.
    let err = raw.attest(attest(jwts(1_000))).await.unwrap_err();
    println!("1,000 JWTs: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("JWT requests in one Attest") && err.message().contains("16"),
        "{err:?}"
    );
    // One JWT request naming too many audiences is refused the same way.
    let many_audiences = JwtRequest {
        audiences: (0..1_000).map(|i| format!("aud-{i}")).collect(),
        scopes: vec![],
        ttl_seconds: 0,
    };
    let err = raw.attest(attest(vec![many_audiences])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("at most 16"), "{err:?}");

    // Refused before anything was spent: the token still works, at the cap.
    let ok = raw
        .attest(attest(jwts(16)))
        .await
        .expect("16 JWTs are fine");
    assert_eq!(ok.into_inner().jwts.len(), 16);
    let peak = peak_rss_mib(broker.pid().unwrap());
    println!("broker peak RSS {peak} MiB");
    assert!(peak < 256, "broker peak RSS {peak} MiB");
}

#[tokio::test]
async fn oversized_fields_are_refused_without_being_echoed() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw_workload(None).await;

    // A 3.9 MB environment name: refused by message size, not quoted.
    let huge = "e".repeat(3_900_000);
    let err = raw
        .get_jwks(GetJwksRequest { env: huge.clone() })
        .await
        .unwrap_err();
    println!("3.9 MB env: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().len() < 300, "{} bytes", err.message().len());

    // One that fits the message is quoted cut short, with its size.
    let big = "e".repeat(60_000);
    let err = raw.get_jwks(GetJwksRequest { env: big }).await.unwrap_err();
    println!("60 kB env: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("(60000 bytes)"), "{err:?}");
    assert!(err.message().len() < 300, "{} bytes", err.message().len());

    // Admin requests: field lengths and list sizes are capped by name.
    let channel = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut admin = AdminClient::new(channel);
    let create = |f: &dyn Fn(&mut CreateIdentityRequest)| {
        let mut r = CreateIdentityRequest {
            env: "dev".into(),
            name: "api".into(),
            owner: "team".into(),
            purpose: "caps".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    for (case, request, limit) in [
        (
            "200 kB env",
            create(&|r| r.env = "d".repeat(200_000)),
            "limit of 512",
        ),
        (
            "200 kB selector key",
            create(&|r| {
                r.selectors = vec![credbroker_proto::v1::Selector {
                    key: "k!".repeat(100_000),
                    value: "v".into(),
                }]
            }),
            "limit of 128",
        ),
        (
            "1,000 audiences",
            create(&|r| r.audiences = (0..1_000).map(|i| format!("a{i}")).collect()),
            "at most 64",
        ),
    ] {
        let err = admin.create_identity(request).await.unwrap_err();
        println!("{case}: {:?} {}", err.code(), err.message());
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        assert!(err.message().contains(limit), "{case}: {err:?}");
        assert!(err.message().len() < 300, "{case}: {}", err.message().len());
    }
    // A 200 kB jti to revoke.
    let err = admin
        .revoke(RevokeRequest {
            target: Some(revoke_request::Target::Jti("j".repeat(200_000))),
            reason: "test".into(),
        })
        .await
        .unwrap_err();
    println!("200 kB jti: {:?} {}", err.code(), err.message());
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message().len());
    // Nothing of the oversized input reached the log either.
    assert!(!broker.log().contains(&"d".repeat(1_000)));
}

fn python() -> String {
    std::env::var("CREDBROKER_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[tokio::test]
async fn a_grpcio_client_gets_clear_refusals() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let token = broker.join_token("dev", "api");
    let scratch = broker.scratch("py-attacks");
    let tests = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let csr_path = scratch.join("csr.der");
    std::fs::write(&csr_path, csr()).unwrap();
    let output = Command::new(python())
        .arg(tests.join("python/broker_attacks.py"))
        .args([
            "--target",
            &format!("127.0.0.1:{}", broker.url().rsplit(':').next().unwrap()),
        ])
        .arg("--bundle")
        .arg(broker.bundle_path())
        .arg("--proto")
        .arg(tests.join("../proto"))
        .arg("--scratch")
        .arg(&scratch)
        .args(["--join-token", &token])
        .arg("--csr")
        .arg(&csr_path)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(
        output.status.code(),
        Some(3),
        "{stderr}\nneeds `pip install grpcio==1.85.3 grpcio-tools==1.85.1`"
    );
    assert!(output.status.success(), "python client failed: {stderr}");
    let r: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    println!("{r:#}");
    assert_eq!(r["garbage"]["code"], "INVALID_ARGUMENT", "{r}");
    assert_eq!(r["garbage_admin"]["code"], "INVALID_ARGUMENT", "{r}");
    assert_eq!(r["jwts_100000"]["code"], "OUT_OF_RANGE", "{r}");
    assert_eq!(r["jwts_1000"]["code"], "INVALID_ARGUMENT", "{r}");
    assert!(
        r["jwts_1000"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("at most 16")),
        "{r}"
    );
    assert_eq!(r["env_3_9_mb"]["code"], "OUT_OF_RANGE", "{r}");
    for case in ["jwts_100000", "jwts_1000", "env_3_9_mb", "env_60_kb"] {
        let len = r[case]["details"].as_str().map_or(usize::MAX, str::len);
        assert!(len < 300, "{case} answered {len} bytes: {r}");
    }
    // The broker is still fine and the token was not spent by the refusals.
    assert_eq!(r["attest_after"]["code"], "OK", "{r}");
}
