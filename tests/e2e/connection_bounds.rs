//! Connections and streams are bounded: idle HTTP connections cannot
//! silence the broker (a cap below the descriptor limit, header and idle
//! timeouts, running out of descriptors logged), WatchRevocations streams
//! are capped per caller, and a stream cursor past the end is refused.

use std::time::{Duration, Instant};

use credbroker_client::Evidence;
use credbroker_e2e::TestBroker;
use credbroker_e2e::http;
use credbroker_proto::v1::WatchRevocationsRequest;
use credbroker_proto::v1::workload_client::WorkloadClient;
use tokio::net::TcpStream;
use tonic::Code;

const IDLE_FLOOD: usize = 700;
const FD_LIMIT: &str = "512";

/// Opens `n` TCP connections to the HTTP port that never send a byte.
async fn idle_flood(port: u16, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        // Past the server's backlog a connect may hang: skip, don't wait.
        match tokio::time::timeout(
            Duration::from_millis(200),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            _ => continue,
        }
    }
    held
}

/// Polls until `/healthz`, an Attest and an admin call all answer; how long
/// that took.
async fn answers_again(broker: &TestBroker) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        let health = tokio::time::timeout(
            Duration::from_secs(2),
            http::get(broker.http_port(), "/healthz"),
        )
        .await;
        if matches!(health, Ok(Ok((200, _)))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz never answered again:\n{}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let client = broker.client().await;
    tokio::time::timeout(
        Duration::from_secs(20),
        client.attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[]),
    )
    .await
    .expect("Attest answers in time")
    .expect("Attest answers");
    broker.cli_ok(&["identity", "list"]);
    start.elapsed()
}

fn limit_fds(broker: &TestBroker) {
    let pid = broker.pid().unwrap().to_string();
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={FD_LIMIT}:{FD_LIMIT}")])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn idle_http_connections_cannot_silence_the_broker() {
    // Short timeouts so the test is quick; the defaults are 10 s and 60 s.
    let broker = TestBroker::start_with(
        &["dev"],
        "[connections]\nhttp_header_timeout = \"8s\"\nhttp_idle_timeout = \"8s\"\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    limit_fds(&broker);
    let flood = Instant::now();
    let held = idle_flood(broker.http_port(), IDLE_FLOOD).await;
    println!(
        "holding {} idle HTTP connections, opened in {:?}",
        held.len(),
        flood.elapsed()
    );
    // The cap (256) keeps HTTP below the descriptor limit: gRPC answers
    // even while the flood is held.
    let client = tokio::time::timeout(Duration::from_secs(10), broker.client())
        .await
        .expect("gRPC connects during the flood");
    tokio::time::timeout(
        Duration::from_secs(10),
        client.attest(&Evidence::JoinToken(broker.join_token("dev", "api")), &[]),
    )
    .await
    .expect("Attest answers during the flood, in time")
    .expect("Attest answers during the flood");
    let took = answers_again(&broker).await;
    println!("healthz, Attest and an admin call answered {took:?} into the flood");
    drop(held);
}

#[tokio::test]
async fn running_out_of_descriptors_is_logged_and_recovered_from() {
    // A cap above the descriptor limit: accept fails with EMFILE until the
    // idle timeout closes the flood.
    let broker = TestBroker::start_with(
        &["dev"],
        "[connections]\nhttp_max_connections = 2000\nhttp_header_timeout = \"2s\"\n\
         http_idle_timeout = \"3s\"\n",
    )
    .await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    limit_fds(&broker);
    let held = idle_flood(broker.http_port(), IDLE_FLOOD).await;
    println!("holding {} idle HTTP connections", held.len());
    let took = answers_again(&broker).await;
    println!("answered again after {took:?}");
    let log = broker.log();
    assert!(
        log.contains("cannot accept connections: out of file descriptors"),
        "{log}"
    );
    drop(held);
}

#[tokio::test]
async fn revocation_streams_are_capped_per_caller_and_cursors_checked() {
    let broker = TestBroker::start_with(
        &["dev"],
        "[connections]\nrevocation_streams_per_caller = 3\n",
    )
    .await;
    let admin = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut client = WorkloadClient::new(admin);

    // A cursor past the end names the end.
    let err = client
        .watch_revocations(WatchRevocationsRequest { after_seq: 1000 })
        .await
        .unwrap_err();
    println!("{err:?}");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("latest revocation sequence 0"),
        "{err:?}"
    );

    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            client
                .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
                .await
                .expect("within the cap")
                .into_inner(),
        );
    }
    let err = client
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap_err();
    println!("{err:?}");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("revocation_streams_per_caller"),
        "{err:?}"
    );
    // Closing one frees its slot.
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
            .await
        {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(Instant::now() < deadline, "the slot never came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A TLS connection to the broker's gRPC port that never makes a call.
async fn silent_tls(broker: &TestBroker) -> tokio_rustls::client::TlsStream<TcpStream> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in credbroker_e2e::x509::pem_certs(&broker.bundle_pem()) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let port: u16 = broker.url().rsplit(':').next().unwrap().parse().unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.expect("TLS handshake")
}

#[tokio::test]
async fn idle_grpc_connections_are_closed_but_streams_are_kept() {
    let broker =
        TestBroker::start_with(&["dev"], "[connections]\ngrpc_idle_timeout = \"2s\"\n").await;
    // A revocation stream, quiet for longer than the idle timeout.
    let admin = broker.channel(Some(broker.admin_identity())).await.unwrap();
    let mut stream = WorkloadClient::new(admin)
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();

    // A connection that never makes a call is closed.
    let mut silent = silent_tls(&broker).await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            use tokio::io::AsyncReadExt;
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // e.g. the server's HTTP/2 SETTINGS
            }
        }
    })
    .await;
    println!("silent connection closed after {:?}", started.elapsed());
    assert!(closed.is_ok(), "an idle gRPC connection stayed open");

    // The stream's connection was spared: it still delivers.
    broker.create_identity("dev", "api", &[], &[]);
    broker
        .revoke(
            credbroker_proto::v1::revoke_request::Target::Identity(
                credbroker_proto::v1::IdentityRef {
                    env: "dev".into(),
                    name: "api".into(),
                },
            ),
            "test",
        )
        .await;
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the event arrives")
        .expect("the stream is still open")
        .expect("an event");
    assert_eq!(event.kind, "identity");
}
