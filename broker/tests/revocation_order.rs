//! Concurrent revocations must reach subscribers complete and in sequence
//! order. This runs the broker in-process on a single-threaded runtime,
//! where task wake-up order differs most from completion order (the case
//! that once made subscribers skip events).

use std::time::Duration;

use credbroker::Config;
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::workload_client::WorkloadClient;
use credbroker_proto::v1::{RevokeRequest, WatchRevocationsRequest, revoke_request};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn admin_channel(data_dir: &std::path::Path, url: String) -> Channel {
    let read = |p: &str| std::fs::read(data_dir.join(p)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("broker-ca.pem")))
        .identity(Identity::from_pem(
            read("admin/admin.pem"),
            read("admin/admin.key"),
        ));
    Channel::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_revocations_are_streamed_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let running = credbroker::start(config).await.unwrap();
    let url = format!("https://127.0.0.1:{}", running.grpc_addr.port());
    let channel = admin_channel(dir.path(), url).await;

    let mut stream = WorkloadClient::new(channel.clone())
        .watch_revocations(WatchRevocationsRequest { after_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    let admin = AdminClient::new(channel);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut admin = admin.clone();
        calls.spawn(async move {
            admin
                .revoke(RevokeRequest {
                    target: Some(revoke_request::Target::Env("dev".into())),
                    reason: format!("drill {i}"),
                })
                .await
                .map(|r| r.into_inner().seq)
        });
    }
    let mut seqs: Vec<i64> = calls
        .join_all()
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    seqs.sort();
    let mut seen = Vec::new();
    while seen.len() < seqs.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("every event arrives")
            .unwrap()
            .unwrap();
        seen.push(event.seq);
    }
    assert_eq!(seen, seqs);
    drop(stream);
    running.shutdown().await.unwrap();
}
