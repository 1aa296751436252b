//! A token issuer started by a test: RS256 and ES256 keys, an HTTP server
//! serving OIDC discovery and the JWKS (rotatable), a GitHub Actions
//! runner's token endpoint and an EC2 instance metadata service (IMDSv2),
//! and helpers that mint tokens and documents exactly like the real ones.
//!
//! RSA keys are generated with the `openssl` CLI (rcgen cannot make RSA
//! keys on ring); signing uses `jsonwebtoken` (RS256/ES256 JWTs) and ring
//! (the AWS document signature, PKCS#1 v1.5 SHA-256).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// An RSA key made by openssl, with a self-signed certificate (which stands
/// in for AWS's public certificate).
pub struct RsaKey {
    /// PKCS#8 PEM.
    pub pem: Vec<u8>,
    /// Self-signed certificate, PEM.
    pub cert_path: PathBuf,
    /// Public key, PEM (what an attacker would use as an HMAC secret).
    pub public_pem: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RsaKey {
    /// Generates a 2048-bit key and certificate under `dir`.
    pub fn generate(dir: &Path, name: &str) -> Self {
        let key = dir.join(format!("{name}.key"));
        let cert = dir.join(format!("{name}.pem"));
        let public = dir.join(format!("{name}.pub"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str().unwrap(),
        ]);
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=test-aws",
            "-days",
            "2",
            "-out",
            cert.to_str().unwrap(),
        ]);
        openssl(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        let cert_pem = std::fs::read(&cert).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&cert_pem).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let x509_parser::public_key::PublicKey::RSA(rsa) = parsed.public_key().parsed().unwrap()
        else {
            panic!("not RSA")
        };
        let strip = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<u8>>()
        };
        Self {
            pem: std::fs::read(&key).unwrap(),
            cert_path: cert,
            public_pem: std::fs::read(&public).unwrap(),
            n: strip(rsa.modulus),
            e: strip(rsa.exponent),
        }
    }

    /// The public JWK.
    pub fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
               "n": URL_SAFE_NO_PAD.encode(&self.n), "e": URL_SAFE_NO_PAD.encode(&self.e)})
    }

    /// Base64 PKCS#1 v1.5 SHA-256 signature of `data` (AWS's `signature`).
    pub fn sign_b64(&self, data: &[u8]) -> String {
        let der = PrivatePkcs8KeyDer::from_pem_slice(&self.pem).unwrap();
        let pair = ring::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
        let mut sig = vec![0u8; pair.public().modulus_len()];
        pair.sign(
            &ring::signature::RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            data,
            &mut sig,
        )
        .unwrap();
        STANDARD.encode(sig)
    }
}

/// A P-256 key.
pub struct EcKey {
    pkcs8: Vec<u8>,
    point: Vec<u8>,
}

impl EcKey {
    /// A fresh key.
    pub fn generate() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        Self {
            pkcs8: pair.serialize_der(),
            point: pair.public_key_raw().to_vec(),
        }
    }

    /// The public JWK.
    pub fn jwk(&self, kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
               "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
               "y": URL_SAFE_NO_PAD.encode(&self.point[33..65])})
    }
}

/// Which key signs a token.
pub enum Signer<'a> {
    /// RS256 with this key and kid.
    Rs256(&'a RsaKey, &'a str),
    /// ES256 with this key and kid.
    Es256(&'a EcKey, &'a str),
}

/// Signs `claims` as a compact JWS.
pub fn sign(claims: &Value, signer: Signer<'_>) -> String {
    let (alg, key, kid) = match signer {
        Signer::Rs256(k, kid) => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&k.pem).unwrap(),
            kid,
        ),
        Signer::Es256(k, kid) => (Algorithm::ES256, EncodingKey::from_ec_der(&k.pkcs8), kid),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with header `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{h}.{}.", URL_SAFE_NO_PAD.encode(claims.to_string()))
}

/// HS256 with `secret` (e.g. the issuer's public key PEM: the classic
/// algorithm-confusion attack).
pub fn hs256(claims: &Value, secret: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// Current unix time.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The payload of a real projected service-account token for pod `pod` of
/// `ns`/`sa`, issued by `iss` for audience `aud`, valid for an hour.
pub fn k8s_claims(iss: &str, aud: &str, ns: &str, sa: &str, pod: &str) -> Value {
    let now = now();
    json!({
        "aud": [aud], "exp": now + 3600, "iat": now, "nbf": now, "iss": iss,
        "jti": format!("jti-{pod}-{now}"),
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": "node-1", "uid": "3d4f2c1e-0000-4000-8000-000000000001"},
            "pod": {"name": pod, "uid": "9a8b7c6d-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": sa, "uid": "1b2c3d4e-0000-4000-8000-000000000003"}
        },
        "sub": format!("system:serviceaccount:{ns}:{sa}")
    })
}

/// The payload of a GitHub Actions OIDC token for `repository`.
pub fn github_claims(iss: &str, aud: &str, repository: &str, jti: &str) -> Value {
    let now = now();
    json!({
        "jti": jti, "sub": format!("repo:{repository}:ref:refs/heads/main"),
        "aud": aud, "ref": "refs/heads/main", "sha": "d6b0a1c2e3f4", "repository": repository,
        "repository_owner": repository.split('/').next().unwrap(), "run_id": "123456",
        "run_number": "7", "run_attempt": "1", "actor": "octocat", "workflow": "deploy",
        "event_name": "push", "ref_type": "branch", "environment": "production",
        "job_workflow_ref": format!("{repository}/.github/workflows/deploy.yml@refs/heads/main"),
        "iss": iss, "nbf": now - 5, "exp": now + 300, "iat": now - 5
    })
}

/// An EC2 instance identity document (pretty-printed like IMDS serves it).
pub fn iid_document(instance_id: &str, pending_time: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({
        "accountId": "123456789012", "architecture": "x86_64",
        "availabilityZone": "eu-west-1a", "billingProducts": null, "devpayProductCodes": null,
        "marketplaceProductCodes": null, "imageId": "ami-0abcdef1234567890",
        "instanceId": instance_id, "instanceType": "t3.micro", "kernelId": null,
        "pendingTime": pending_time, "privateIp": "10.0.1.12", "ramdiskId": null,
        "region": "eu-west-1", "version": "2017-09-30"
    }))
    .unwrap()
}

#[derive(Default)]
struct State {
    jwks: Value,
    jwks_fetches: usize,
    gha: Option<(String, String)>,
    imds: Option<(Vec<u8>, String)>,
}

/// The HTTP side: discovery, JWKS, GitHub runner, IMDS.
#[derive(Clone)]
pub struct TestIssuer {
    port: u16,
    state: Arc<Mutex<State>>,
    https: bool,
}

impl TestIssuer {
    /// Starts serving `jwks` over plain HTTP on a free loopback port.
    pub async fn start(jwks: Value) -> Self {
        Self::serve(jwks, None).await
    }

    /// Like [`TestIssuer::start`] but over https, with a certificate for
    /// 127.0.0.1 from a fresh CA written to `ca_path` (PEM).
    pub async fn start_tls(jwks: Value, ca_path: &Path) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(ca_path, ck.cert.pem()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        Self::serve(
            jwks,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    async fn serve(jwks: Value, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            jwks,
            ..State::default()
        }));
        let issuer = Self {
            port,
            state,
            https: tls.is_some(),
        };
        let server = issuer.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                server.handle(stream).await;
                            }
                        }
                        None => server.handle(tcp).await,
                    }
                });
            }
        });
        issuer
    }

    async fn handle<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let (status, body) = self.answer(&head);
        let reply = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.shutdown().await;
    }

    fn answer(&self, head: &str) -> (&'static str, Vec<u8>) {
        let mut lines = head.lines();
        let mut first = lines.next().unwrap_or("").split_whitespace();
        let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut state = self.state.lock().unwrap();
        match (method, path) {
            ("GET", "/.well-known/openid-configuration") => (
                "200 OK",
                json!({"issuer": self.url(), "jwks_uri": format!("{}/jwks", self.url())})
                    .to_string()
                    .into_bytes(),
            ),
            ("GET", "/jwks") => {
                state.jwks_fetches += 1;
                ("200 OK", state.jwks.to_string().into_bytes())
            }
            ("GET", "/gha-token") => match &state.gha {
                Some((bearer, token))
                    if header("authorization").as_deref() == Some(&format!("bearer {bearer}"))
                        && query.contains("audience=credbroker") =>
                {
                    ("200 OK", json!({"value": token}).to_string().into_bytes())
                }
                _ => ("401 Unauthorized", b"{}".to_vec()),
            },
            ("PUT", "/latest/api/token")
                if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
            {
                ("200 OK", b"imds-session-token".to_vec())
            }
            ("GET", p) if p.starts_with("/latest/dynamic/instance-identity/") => {
                if header("x-aws-ec2-metadata-token").as_deref() != Some("imds-session-token") {
                    return ("401 Unauthorized", Vec::new());
                }
                match (&state.imds, p) {
                    (Some((doc, _)), "/latest/dynamic/instance-identity/document") => {
                        ("200 OK", doc.clone())
                    }
                    (Some((_, sig)), "/latest/dynamic/instance-identity/signature") => {
                        ("200 OK", sig.clone().into_bytes())
                    }
                    _ => ("404 Not Found", Vec::new()),
                }
            }
            _ => ("404 Not Found", Vec::new()),
        }
    }

    /// `http(s)://127.0.0.1:PORT` — the issuer URL (`iss`).
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Replaces the served JWKS (key rotation).
    pub fn set_jwks(&self, jwks: Value) {
        self.state.lock().unwrap().jwks = jwks;
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.state.lock().unwrap().jwks_fetches
    }

    /// Serves `token` at `/gha-token` to callers presenting `bearer`.
    pub fn set_github_token(&self, bearer: &str, token: &str) {
        self.state.lock().unwrap().gha = Some((bearer.to_owned(), token.to_owned()));
    }

    /// Serves `document` and `signature` as the instance identity.
    pub fn set_imds(&self, document: Vec<u8>, signature: String) {
        self.state.lock().unwrap().imds = Some((document, signature));
    }
}

/// `[[attestors]]` TOML for a JWT attestor.
pub fn jwt_attestor_toml(kind: &str, name: &str, env: &str, issuer: &str, extra: &str) -> String {
    format!(
        "[[attestors]]\nkind = \"{kind}\"\nname = \"{name}\"\nenvironment = \"{env}\"\nissuer = \"{issuer}\"\naudience = \"credbroker\"\njwks_min_refresh = \"1s\"\n{extra}\n"
    )
}
