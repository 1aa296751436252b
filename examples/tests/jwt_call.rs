//! The `jwt_call` example against a real broker.

use credbroker_e2e::TestBroker;
use credbroker_examples::broker::Broker;
use credbroker_examples::jwt_call::run;

#[tokio::test]
async fn the_service_accepts_its_token_and_refuses_the_others() {
    let broker = TestBroker::start().await;
    let access = Broker::from_data_dir(broker.url(), &broker.data_dir()).unwrap();
    let calls = run(&access).await.unwrap();
    let answers: Vec<_> = calls.iter().map(|c| (c.status, c.body.as_str())).collect();
    assert_eq!(
        answers,
        [
            (200, "hello spiffe://dev.example.org/example-caller"),
            (401, "audience \"example-api\" is not in the token"),
            (401, "signature does not verify"),
        ]
    );
    assert!(calls.iter().all(|c| c.status == c.expected));

    // A second run reuses the identity registered by the first.
    let again = run(&access).await.unwrap();
    assert!(again.iter().all(|c| c.status == c.expected), "{again:?}");
}

#[test]
fn a_directory_without_the_brokers_files_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = Broker::from_data_dir("https://127.0.0.1:7443".into(), dir.path())
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("broker-ca.pem"), "{err:#}");
}
