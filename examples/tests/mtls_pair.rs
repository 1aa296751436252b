//! The `mtls_pair` example against a real broker issuing 3-second SVIDs.

use std::time::Duration;

use credbroker_e2e::TestBroker;
use credbroker_examples::broker::Broker;
use credbroker_examples::mtls_pair::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_flowing_while_both_certificates_rotate() {
    let broker =
        TestBroker::start_with(&["dev"], "[ttl]\nfloor = \"1s\"\ndefault_x509 = \"3s\"\n").await;
    let access = Broker::from_data_dir(broker.url(), &broker.data_dir()).unwrap();
    let options = Options {
        x509_ttl: Duration::from_secs(3),
        duration: Duration::from_secs(8),
        interval: Duration::from_millis(100),
    };
    let report = run(&access, &options).await.unwrap();
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.requests >= 40, "{report}");
    assert!(report.server_rotations >= 2, "{report}");
    assert!(report.client_rotations >= 2, "{report}");
}
