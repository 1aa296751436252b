//! Request-time context: an identity with `--allow-cidr` is refused (and
//! the refusal audited) when Attest, FetchJwt or RenewX509 come from any
//! other address. Loopback has a whole /8, so a client bound to 127.0.0.2
//! is "another host" for the broker.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use credbroker_proto::v1::workload_client::WorkloadClient;
use credbroker_proto::v1::{FetchJwtRequest, JwtRequest as ProtoJwtRequest, RenewX509Request};
use hyper_util::rt::TokioIo;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Connects to the broker from a chosen source address.
#[derive(Clone)]
struct FromAddr {
    source: IpAddr,
    broker: SocketAddr,
}

impl tower_service::Service<http::Uri> for FromAddr {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(this.source, 0))?;
            Ok(TokioIo::new(socket.connect(this.broker).await?))
        })
    }
}

async fn workload_from(
    broker: &TestBroker,
    source: &str,
    svid: Option<&credbroker_client::X509Svid>,
) -> WorkloadClient<tonic::transport::Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(broker.bundle_pem()))
        .domain_name("127.0.0.1");
    if let Some(svid) = svid {
        tls = tls.identity(Identity::from_pem(
            svid.cert_chain_pem(),
            svid.private_key_pem(),
        ));
    }
    let addr: SocketAddr = broker.url().trim_start_matches("https://").parse().unwrap();
    let channel = Endpoint::from_shared(broker.url())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_with_connector(FromAddr {
            source: source.parse().unwrap(),
            broker: addr,
        })
        .await
        .expect("connect from source address");
    WorkloadClient::new(channel)
}

#[tokio::test]
async fn allow_cidr_refuses_calls_from_other_addresses() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let broker = TestBroker::start().await;
    let create = |name: &str, cidr: &str| {
        broker.cli_ok(&[
            "identity",
            "create",
            "--env",
            "dev",
            "--name",
            name,
            "--owner",
            "o",
            "--purpose",
            "p",
            "--audience",
            "billing",
            "--allow-cidr",
            cidr,
        ])
    };
    let shown = create("far", "10.2.0.0/16");
    assert!(shown.contains("10.2.0.0/16"), "{shown}");
    create("near", "127.0.0.1/32");
    let out = broker.cli(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "bad",
        "--owner",
        "o",
        "--purpose",
        "p",
        "--allow-cidr",
        "10.2.3.4/16",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("host bits set"));

    // Attest from 127.0.0.1 for an identity allowing only 10.2.0.0/16.
    let client = broker.client().await;
    let err = client
        .attest(&Evidence::JoinToken(broker.join_token("dev", "far")), &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    assert!(
        err.to_string().contains(
            "peer address 127.0.0.1 is outside the networks identity dev/far allows (10.2.0.0/16)"
        ),
        "{err}"
    );

    // Attest from an allowed address, then FetchJwt and RenewX509 from
    // 127.0.0.2 with the same, valid SVID.
    let attested = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", "near")),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest from 127.0.0.1");
    let mut elsewhere = workload_from(&broker, "127.0.0.2", Some(&attested.svid)).await;
    let jwt = FetchJwtRequest {
        jwt: Some(ProtoJwtRequest {
            audiences: vec!["billing".into()],
            scopes: vec![],
            ttl_seconds: 0,
        }),
    };
    let err = elsewhere.fetch_jwt(jwt.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("peer address 127.0.0.2 is outside"),
        "{err:?}"
    );
    let csr = super::platform_attestation::csr();
    let err = elsewhere
        .renew_x509(RenewX509Request { csr: csr.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Positive control: the same calls from 127.0.0.1 work.
    let mut here = workload_from(&broker, "127.0.0.1", Some(&attested.svid)).await;
    here.fetch_jwt(jwt)
        .await
        .expect("fetch from allowed address");
    here.renew_x509(RenewX509Request { csr })
        .await
        .expect("renew from allowed address");

    let log = broker.log();
    for action in ["attest", "fetch_jwt", "renew_x509"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("action=\"{action}\""))
                    && l.contains("decision=\"denied\"")
                    && l.contains("is outside the networks")),
            "{action} refusal not audited"
        );
    }
}
