//! Which failures move a call to another broker: a replica that answers
//! every call `UNAVAILABLE` (say, its store is down) next to a real broker.
//! Calls that are safe to repeat move on at once; an attestation, which may
//! have spent a single-use token, is not sent a second time by the SDK.

use std::sync::{Arc, Mutex};

use credbroker_client::{Client, Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::workload_server::{Workload, WorkloadServer};
use credbroker_proto::v1::{
    AttestRequest, AttestResponse, FetchJwtRequest, FetchJwtResponse, GetJwksRequest,
    GetJwksResponse, IntrospectRequest, IntrospectResponse, MintWorkloadJwtRequest,
    MintWorkloadJwtResponse, MintWorkloadSvidRequest, MintWorkloadSvidResponse, NodeEntriesUpdate,
    RenewX509Request, RenewX509Response, Revocation, WatchNodeEntriesRequest,
    WatchRevocationsRequest,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// A replica that is up but cannot serve: every call is `UNAVAILABLE`.
#[derive(Clone, Default)]
struct Sick {
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl Sick {
    fn refuse<T>(&self, method: &'static str) -> Result<Response<T>, Status> {
        self.calls.lock().unwrap().push(method);
        Err(Status::unavailable("the store cannot commit"))
    }

    fn calls(&self) -> Vec<&'static str> {
        self.calls.lock().unwrap().clone()
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Workload for Sick {
    type WatchRevocationsStream = Stream<Revocation>;
    type WatchNodeEntriesStream = Stream<NodeEntriesUpdate>;

    async fn attest(&self, _: Request<AttestRequest>) -> Result<Response<AttestResponse>, Status> {
        self.refuse("Attest")
    }
    async fn fetch_jwt(
        &self,
        _: Request<FetchJwtRequest>,
    ) -> Result<Response<FetchJwtResponse>, Status> {
        self.refuse("FetchJwt")
    }
    async fn renew_x509(
        &self,
        _: Request<RenewX509Request>,
    ) -> Result<Response<RenewX509Response>, Status> {
        self.refuse("RenewX509")
    }
    async fn get_jwks(
        &self,
        _: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        self.refuse("GetJwks")
    }
    async fn introspect(
        &self,
        _: Request<IntrospectRequest>,
    ) -> Result<Response<IntrospectResponse>, Status> {
        self.refuse("Introspect")
    }
    async fn watch_revocations(
        &self,
        _: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        self.refuse("WatchRevocations")
    }
    async fn watch_node_entries(
        &self,
        _: Request<WatchNodeEntriesRequest>,
    ) -> Result<Response<Self::WatchNodeEntriesStream>, Status> {
        self.refuse("WatchNodeEntries")
    }
    async fn mint_workload_svid(
        &self,
        _: Request<MintWorkloadSvidRequest>,
    ) -> Result<Response<MintWorkloadSvidResponse>, Status> {
        self.refuse("MintWorkloadSvid")
    }
    async fn mint_workload_jwt(
        &self,
        _: Request<MintWorkloadJwtRequest>,
    ) -> Result<Response<MintWorkloadJwtResponse>, Status> {
        self.refuse("MintWorkloadJwt")
    }
}

/// Starts the sick replica on a loopback port with a certificate for
/// 127.0.0.1 from its own CA; returns its URL and that CA (PEM).
async fn start_sick(sick: Sick) -> (String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(leaf.pem(), key.serialize_pem()));
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(WorkloadServer::new(sick))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (url, ca_cert.pem())
}

#[tokio::test]
async fn unavailable_moves_repeatable_calls_but_never_resends_an_attestation() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let sick = Sick::default();
    let (sick_url, sick_ca) = start_sick(sick.clone()).await;
    // One bundle for both, as replicas share one CA.
    let mut bundle = broker.bundle_pem();
    bundle.extend_from_slice(sick_ca.as_bytes());

    // The sick replica is first: the attestation reaches it and is not
    // sent again elsewhere (its join token may have been spent there).
    let client = Client::connect_any(&[sick_url.as_str(), &broker.url()], &bundle)
        .await
        .unwrap();
    assert_eq!(client.current_broker(), sick_url);
    let token = broker.join_token("dev", "api");
    let err = client
        .attest(&Evidence::JoinToken(token.clone()), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::Unavailable), "{err}");
    assert_eq!(sick.calls(), ["Attest"]);
    // The next call (the caller's retry) goes to the other broker: the
    // sick one is benched.
    let attested = client
        .attest(&Evidence::JoinToken(token), &[])
        .await
        .expect("the retry reaches the healthy broker");
    assert_eq!(sick.calls(), ["Attest"], "the sick replica is benched");
    assert_eq!(client.current_broker(), broker.url());

    // Repeatable calls move on at once: a fresh client starts on the sick
    // replica, and every call still succeeds through the healthy one.
    let client = Client::connect_any(&[sick_url.as_str(), &broker.url()], &bundle)
        .await
        .unwrap();
    let session = client.authenticated(&attested.svid).await.unwrap();
    let jwt = session
        .fetch_jwt(&JwtRequest::audience("billing"))
        .await
        .expect("FetchJwt moves to the healthy broker");
    assert_eq!(jwt.spiffe_id, "spiffe://dev.example.org/api");
    let (renewed, _) = session.renew().await.expect("RenewX509 too");
    assert_eq!(renewed.spiffe_id, attested.svid.spiffe_id);
    assert_eq!(sick.calls(), ["Attest", "FetchJwt"]);
    assert_eq!(client.current_broker(), broker.url());
}

#[tokio::test]
async fn a_token_refused_after_an_interrupted_attempt_says_where_it_may_have_gone() {
    use credbroker_client::{CredentialSource, RefreshPolicy, SourceConfig, SourceError};

    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &[], &[]);
    let sick = Sick::default();
    let (sick_url, sick_ca) = start_sick(sick.clone()).await;
    let mut bundle = broker.bundle_pem();
    bundle.extend_from_slice(sick_ca.as_bytes());
    // The token is spent (as the sick replica might have done before
    // failing), then a source tries it: first on the sick replica, then,
    // as its ordinary retry, on the healthy one, which refuses it.
    let token = broker.join_token("dev", "api");
    broker
        .client()
        .await
        .attest(&Evidence::JoinToken(token.clone()), &[])
        .await
        .unwrap();
    let source = CredentialSource::start(SourceConfig {
        broker: format!("{sick_url},{}", broker.url()),
        bundle_pem: bundle,
        evidence: Evidence::JoinToken(token),
        jwt_audiences: vec![],
        policy: RefreshPolicy {
            min_backoff: std::time::Duration::from_millis(100),
            ..RefreshPolicy::default()
        },
    });
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), source.ready())
        .await
        .unwrap()
        .unwrap_err();
    let SourceError::Unavailable(reason) = err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("already used") && reason.contains(&format!("reached {sick_url}")),
        "{reason}"
    );
    assert_eq!(sick.calls(), ["Attest"]);
}
