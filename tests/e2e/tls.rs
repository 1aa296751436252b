//! Two workloads talking mTLS with SDK rustls configs while their SVIDs
//! rotate every few seconds: every request succeeds, peers are identified
//! by SPIFFE ID.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credbroker_client::tls::{AllowedPeers, client_config, server_config, spiffe_id};
use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig};
use credbroker_e2e::TestBroker;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub(crate) fn source(broker: &TestBroker, name: &str) -> CredentialSource {
    CredentialSource::start(SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(broker.join_token("dev", name)),
        jwt_audiences: vec![],
        policy: RefreshPolicy::default(),
    })
}

/// Answers each line with the caller's SPIFFE ID.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first().map(|c| spiffe_id(c).unwrap_or_default()))
                .unwrap_or_default();
            let mut line = String::new();
            let (read, mut write) = tokio::io::split(&mut tls);
            if BufReader::new(read).read_line(&mut line).await.is_ok() {
                let _ = write.write_all(format!("hello {peer}\n").as_bytes()).await;
                let _ = write.shutdown().await;
            }
        });
    }
}

/// One request on a new connection; returns the reply and the server's serial.
pub(crate) async fn call(port: u16, connector: &TlsConnector) -> Result<(String, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("workload.invalid").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .map(|c| format!("{:?}", &c.as_ref()[..64.min(c.len())]))
        .unwrap_or_default();
    tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
    let mut reply = String::new();
    BufReader::new(tls)
        .read_line(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    Ok((reply.trim().to_owned(), serial))
}

#[tokio::test]
async fn mtls_keeps_working_across_rotations() {
    let broker = TestBroker::start_with(
        &["dev"],
        "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"3s\"\ndefault_jwt = \"3s\"\n",
    )
    .await;
    broker.create_identity("dev", "server", &[], &[]);
    broker.create_identity("dev", "client", &[], &[]);
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

    let started = Instant::now();
    let mut server_certs = Vec::new();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let (reply, cert) = call(port, &connector)
            .await
            .expect("every request succeeds");
        assert_eq!(reply, "hello spiffe://dev.example.org/client");
        if server_certs.last() != Some(&cert) {
            server_certs.push(cert);
        }
        requests += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(requests > 100, "{requests}");
    assert!(
        server_certs.len() >= 3,
        "server certificate rotated {} times",
        server_certs.len() - 1
    );

    // A client that expects another SPIFFE ID refuses this server.
    let picky = TlsConnector::from(Arc::new(
        client_config(
            &client_source,
            AllowedPeers::Only(vec!["spiffe://dev.example.org/someone-else".into()]),
            None,
        )
        .unwrap(),
    ));
    let err = call(port, &picky).await.unwrap_err();
    assert!(err.contains("not allowed"), "{err}");
    server.abort();
}

#[tokio::test]
async fn a_server_refuses_clients_it_does_not_allow() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "server", &[], &[]);
    broker.create_identity("dev", "intruder", &[], &[]);
    let server_source = source(&broker, "server");
    let client_source = source(&broker, "intruder");
    server_source.ready().await.unwrap();
    client_source.ready().await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(
            &server_source,
            AllowedPeers::Only(vec!["spiffe://dev.example.org/frontend".into()]),
            None,
        )
        .unwrap(),
    ));
    let server = tokio::spawn(serve(listener, acceptor));
    let connector = TlsConnector::from(Arc::new(
        client_config(&client_source, AllowedPeers::TrustDomain, None).unwrap(),
    ));
    assert!(call(port, &connector).await.is_err(), "intruder accepted");
    server.abort();
    // Control: the same client is accepted by a server that allows it, so
    // the refusal above came from the SPIFFE ID rule.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(
            &server_source,
            AllowedPeers::Only(vec!["spiffe://dev.example.org/intruder".into()]),
            None,
        )
        .unwrap(),
    ));
    let server = tokio::spawn(serve(listener, acceptor));
    let (reply, _) = call(port, &connector).await.expect("allowed client");
    assert_eq!(reply, "hello spiffe://dev.example.org/intruder");
    server.abort();
}

#[tokio::test]
async fn the_bearer_interceptor_attaches_a_verifiable_fresh_jwt() {
    use credbroker_client::{BearerInterceptor, JwtVerifier};
    use tonic::service::Interceptor;

    let broker = TestBroker::start().await;
    broker.create_identity("dev", "caller", &["billing"], &[]);
    let caller = CredentialSource::start(SourceConfig {
        broker: broker.url(),
        bundle_pem: broker.bundle_pem(),
        evidence: Evidence::JoinToken(broker.join_token("dev", "caller")),
        jwt_audiences: vec!["billing".into()],
        policy: RefreshPolicy::default(),
    });
    caller.ready().await.unwrap();
    let mut interceptor = BearerInterceptor::new(&caller, "billing");
    let request = interceptor.call(tonic::Request::new(())).unwrap();
    let header = request
        .metadata()
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let token = header.strip_prefix("Bearer ").expect("bearer scheme");
    let verifier = JwtVerifier::new(&broker.client().await, "dev", "billing")
        .await
        .unwrap();
    let verified = verifier.verify(token).await.unwrap();
    assert_eq!(verified.spiffe_id, "spiffe://dev.example.org/caller");
    // An audience the source does not keep: refused locally, nothing sent.
    let mut other = BearerInterceptor::new(&caller, "ledger");
    let err = other.call(tonic::Request::new(())).unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
}
