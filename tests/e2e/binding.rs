//! Sender-constrained JWTs (RFC 8705): an identity created with
//! `--require-binding` gets JWTs carrying `cnf.x5t#S256` of the certificate
//! they were issued to, and a verifier accepts them only from that
//! certificate; other identities get bearer tokens without `cnf`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credbroker_client::{Evidence, JwtRequest, JwtVerifier, VerifyError};
use credbroker_e2e::TestBroker;

fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
}

fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Registers `dev/NAME` with audience `billing`, requiring bound JWTs.
fn create_bound(broker: &TestBroker, name: &str) {
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        name,
        "--owner",
        "team-test",
        "--purpose",
        "binding test",
        "--audience",
        "billing",
        "--require-binding",
    ]);
}

#[tokio::test]
async fn bound_jwts_are_accepted_only_from_their_certificate() {
    let broker = TestBroker::start().await;
    create_bound(&broker, "bound");
    let shown = broker.cli_ok(&[
        "identity", "show", "--env", "dev", "--name", "bound", "--output", "json",
    ]);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["require_binding"], true);

    let client = broker.client().await;
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "bound")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest");
    let leaf = attested.svid.cert_chain[0].to_vec();
    // Issued with the first SVID: bound to it.
    assert_eq!(
        claims(&attested.jwts[0].token)["cnf"]["x5t#S256"],
        thumbprint(&leaf)
    );
    let session = client.authenticated(&attested.svid).await.expect("mTLS");
    let fetched = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("fetch");
    assert_eq!(claims(&fetched.token)["cnf"]["x5t#S256"], thumbprint(&leaf));

    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();
    // As a bearer token it is refused.
    assert_eq!(
        verifier.verify(&fetched.token).await.unwrap_err(),
        VerifyError::BindingRequired
    );
    // From its own certificate it is accepted.
    let ok = verifier
        .verify_presented(&fetched.token, &leaf)
        .await
        .expect("bound token from its certificate");
    assert!(ok.bound);
    // From another certificate of the same identity (a renewed one, as a
    // thief holding a copy of the token and a certificate of its own would
    // present) it is refused.
    let (renewed, _) = session.renew().await.expect("renew");
    let other = renewed.cert_chain[0].to_vec();
    assert_eq!(
        verifier
            .verify_presented(&fetched.token, &other)
            .await
            .unwrap_err(),
        VerifyError::BoundToAnotherCertificate
    );

    // Introspection reports the binding and checks a presented certificate.
    let answer = session.introspect_token(&fetched.token).await.unwrap();
    assert!(answer.active, "{}", answer.reason);
    assert_eq!(answer.cnf_x5t_s256, thumbprint(&leaf));
    let answer = session
        .introspect_token_presented(&fetched.token, &leaf)
        .await
        .unwrap();
    assert!(answer.active, "{}", answer.reason);
    let answer = session
        .introspect_token_presented(&fetched.token, &other)
        .await
        .unwrap();
    assert!(!answer.active);
    assert!(
        answer.reason.contains("bound to another certificate"),
        "{}",
        answer.reason
    );
}

#[tokio::test]
async fn identities_without_binding_get_bearer_tokens() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "bearer", &["billing"], &[]);
    let client = broker.client().await;
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "bearer")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest");
    let session = client.authenticated(&attested.svid).await.expect("mTLS");
    let fetched = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("fetch");
    for token in [&attested.jwts[0].token, &fetched.token] {
        assert!(claims(token).get("cnf").is_none(), "bearer token has cnf");
    }
    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();
    let ok = verifier.verify(&fetched.token).await.expect("bearer");
    assert!(!ok.bound);
    let answer = session.introspect_token(&fetched.token).await.unwrap();
    assert!(answer.active);
    assert!(answer.cnf_x5t_s256.is_empty());
}

#[tokio::test]
async fn binding_cannot_be_required_of_node_served_identities() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "node-1", &[], &[]);
    let out = broker.cli(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "served",
        "--owner",
        "team-test",
        "--purpose",
        "binding test",
        "--parent",
        "dev/node-1",
        "--selector",
        "unix:uid=1000",
        "--require-binding",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("require_binding cannot be combined with a parent"),
        "{stderr}"
    );
    let list = broker.cli_ok(&["identity", "list", "--output", "json"]);
    assert!(!list.contains("served"), "nothing created: {list}");
}

/// A relying party: a tonic server over mTLS (its own server certificate,
/// client certificates checked against the `dev` bundle) whose only method
/// answers with what [`JwtVerifier::verify_request`] made of the request.
mod relying_party {
    use credbroker_client::JwtVerifier;
    use credbroker_proto::v1::workload_server::{Workload, WorkloadServer};
    use credbroker_proto::v1::*;
    use tonic::{Request, Response, Status};

    pub struct Service(pub JwtVerifier);

    fn unused<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not part of this relying party"))
    }

    #[tonic::async_trait]
    impl Workload for Service {
        async fn introspect(
            &self,
            request: Request<IntrospectRequest>,
        ) -> Result<Response<IntrospectResponse>, Status> {
            Ok(Response::new(match self.0.verify_request(&request).await {
                Ok(jwt) => IntrospectResponse {
                    active: true,
                    sub: jwt.spiffe_id,
                    ..Default::default()
                },
                Err(e) => IntrospectResponse {
                    reason: e.to_string(),
                    ..Default::default()
                },
            }))
        }
        async fn attest(
            &self,
            _: Request<AttestRequest>,
        ) -> Result<Response<AttestResponse>, Status> {
            unused()
        }
        async fn fetch_jwt(
            &self,
            _: Request<FetchJwtRequest>,
        ) -> Result<Response<FetchJwtResponse>, Status> {
            unused()
        }
        async fn renew_x509(
            &self,
            _: Request<RenewX509Request>,
        ) -> Result<Response<RenewX509Response>, Status> {
            unused()
        }
        async fn get_jwks(
            &self,
            _: Request<GetJwksRequest>,
        ) -> Result<Response<GetJwksResponse>, Status> {
            unused()
        }
        type WatchRevocationsStream = tokio_stream::Empty<Result<Revocation, Status>>;
        async fn watch_revocations(
            &self,
            _: Request<WatchRevocationsRequest>,
        ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
            unused()
        }
        type WatchNodeEntriesStream = tokio_stream::Empty<Result<NodeEntriesUpdate, Status>>;
        async fn watch_node_entries(
            &self,
            _: Request<WatchNodeEntriesRequest>,
        ) -> Result<Response<Self::WatchNodeEntriesStream>, Status> {
            unused()
        }
        async fn mint_workload_svid(
            &self,
            _: Request<MintWorkloadSvidRequest>,
        ) -> Result<Response<MintWorkloadSvidResponse>, Status> {
            unused()
        }
        async fn mint_workload_jwt(
            &self,
            _: Request<MintWorkloadJwtRequest>,
        ) -> Result<Response<MintWorkloadJwtResponse>, Status> {
            unused()
        }
    }

    pub fn server(verifier: JwtVerifier) -> WorkloadServer<Service> {
        WorkloadServer::new(Service(verifier))
    }
}

#[tokio::test]
async fn a_tonic_server_checks_the_binding_against_the_tls_client_certificate() {
    use credbroker_proto::v1::IntrospectRequest;
    use credbroker_proto::v1::workload_client::WorkloadClient;
    use tonic::transport::{
        Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig,
    };

    let broker = TestBroker::start().await;
    for name in ["bound", "thief"] {
        create_bound(&broker, name);
    }
    let client = broker.client().await;
    let attest = |name: &'static str| {
        let client = client.clone();
        let token = broker.join_token("dev", name);
        async move {
            client
                .attest(
                    &Evidence::JoinToken(token),
                    &[JwtRequest::audience("billing")],
                )
                .await
                .expect("attest")
        }
    };
    let owner = attest("bound").await;
    let thief = attest("thief").await;
    let token = owner.jwts[0].token.clone();

    // The relying party's own TLS identity and the `dev` trust bundle.
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let bundle = credbroker_client::pem_encode("CERTIFICATE", &owner.bundle.certs[0]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let verifier = JwtVerifier::new(&client, "dev", "billing").await.unwrap();
    tokio::spawn(
        Server::builder()
            .tls_config(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(
                        server_cert.pem(),
                        server_key.serialize_pem(),
                    ))
                    .client_ca_root(Certificate::from_pem(&bundle))
                    .client_auth_optional(true),
            )
            .unwrap()
            .add_service(relying_party::server(verifier))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let call = |svid: Option<&credbroker_client::X509Svid>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(server_cert.pem()))
            .domain_name("localhost");
        if let Some(svid) = svid {
            tls = tls.identity(Identity::from_pem(
                svid.cert_chain_pem(),
                svid.private_key_pem(),
            ));
        }
        let token = token.clone();
        async move {
            let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .expect("connect to the relying party");
            let mut request = tonic::Request::new(IntrospectRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            WorkloadClient::new(channel)
                .introspect(request)
                .await
                .expect("call")
                .into_inner()
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();

    let from_owner = call(Some(&owner.svid)).await;
    assert!(from_owner.active, "{}", from_owner.reason);
    assert_eq!(from_owner.sub, "spiffe://dev.example.org/bound");
    // The same token over a connection authenticated by another workload's
    // valid SVID: the thief's TLS is fine, the token is not theirs.
    let from_thief = call(Some(&thief.svid)).await;
    assert!(!from_thief.active);
    assert!(
        from_thief.reason.contains("another client certificate"),
        "{}",
        from_thief.reason
    );
    // Over TLS without a client certificate: a bearer presentation.
    let anonymous = call(None).await;
    assert!(!anonymous.active);
    assert!(
        anonymous.reason.contains("presented without mTLS"),
        "{}",
        anonymous.reason
    );
}
