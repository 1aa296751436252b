//! Anomaly detection at request time, each rule provoked over the real
//! broker: every finding is an audit record (`action = anomaly`), a count
//! in `credbroker_anomalies_total{kind}` and a flag on the identity's page;
//! `--on-anomaly disable` also disables the identity.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use credbroker_client::{Attestation, Evidence, JwtRequest};
use credbroker_e2e::{TestBroker, http};
use credbroker_proto::v1::workload_client::WorkloadClient;
use credbroker_proto::v1::{FetchJwtRequest, JwtRequest as ProtoJwtRequest};
use serde_json::Value;

const HOME: &str = "127.0.0.1";
const ELSEWHERE: &str = "127.0.0.2";

async fn attest(broker: &TestBroker, env: &str, name: &str) -> Attestation {
    broker
        .client()
        .await
        .attest(
            &Evidence::JoinToken(broker.join_token(env, name)),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest")
}

/// FetchJwt for `audience` with `att`'s SVID, from local address `from`.
async fn fetch_jwt(
    broker: &TestBroker,
    att: &Attestation,
    from: &str,
    audience: &str,
) -> Result<(), tonic::Status> {
    let ip: IpAddr = from.parse().unwrap();
    let identity = (att.svid.cert_chain_pem(), att.svid.private_key_pem());
    let channel = broker.channel_from(identity, ip).await.expect("connect");
    WorkloadClient::new(channel)
        .fetch_jwt(FetchJwtRequest {
            jwt: Some(ProtoJwtRequest {
                audiences: vec![audience.to_owned()],
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
}

/// The anomaly audit records of `kind`.
fn findings(broker: &TestBroker, kind: &str) -> Vec<Value> {
    let out = broker.cli_ok(&["audit", "--limit", "1000", "--output", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "anomaly")
        .filter(|e| {
            e["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with(&format!("{kind}: ")))
        })
        .cloned()
        .collect()
}

async fn metric(broker: &TestBroker, kind: &str) -> u64 {
    let (_, body) = http::get(broker.http_port(), "/metrics").await.unwrap();
    let series = format!("credbroker_anomalies_total{{kind=\"{kind}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

fn create(broker: &TestBroker, env: &str, name: &str, extra: &[&str]) {
    let mut args = vec![
        "identity",
        "create",
        "--env",
        env,
        "--name",
        name,
        "--owner",
        "team-test",
        "--purpose",
        "anomaly test",
        "--audience",
        "billing",
    ];
    args.extend(extra);
    broker.cli_ok(&args);
}

fn status_of(broker: &TestBroker, env: &str, name: &str) -> String {
    let out = broker.cli_ok(&[
        "identity", "show", "--env", env, "--name", name, "--output", "json",
    ]);
    serde_json::from_str::<Value>(&out).unwrap()["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn an_svid_from_a_new_address_and_from_two_addresses_is_flagged() {
    let broker = TestBroker::start().await;
    create(&broker, "dev", "api", &[]);
    let att = attest(&broker, "dev", "api").await;
    // From where it attested: nothing to say.
    fetch_jwt(&broker, &att, HOME, "billing").await.unwrap();
    assert!(findings(&broker, "new_peer").is_empty());
    assert!(findings(&broker, "cloned_svid").is_empty());
    assert_eq!(metric(&broker, "new_peer").await, 0);

    // The same certificate from another host, a moment later.
    fetch_jwt(&broker, &att, ELSEWHERE, "billing")
        .await
        .unwrap();
    let new_peer = findings(&broker, "new_peer");
    assert_eq!(new_peer.len(), 1, "{new_peer:?}");
    assert_eq!(new_peer[0]["identity"], "dev/api");
    assert!(
        new_peer[0]["peer"].as_str().unwrap().starts_with(ELSEWHERE),
        "{new_peer:?}"
    );
    let cloned = findings(&broker, "cloned_svid");
    assert_eq!(cloned.len(), 1, "{cloned:?}");
    let detail = cloned[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(HOME) && detail.contains(ELSEWHERE),
        "{detail}"
    );
    assert_eq!(metric(&broker, "new_peer").await, 1);
    assert_eq!(metric(&broker, "cloned_svid").await, 1);
    // An alert only: the identity keeps working.
    assert_eq!(status_of(&broker, "dev", "api"), "active");

    // The flag on the identity's page.
    let link = broker.cli_ok(&["ui"]).lines().last().unwrap().to_owned();
    let cookie = sign_in(&broker, &link).await;
    let page = get_page(&broker, "/ui/identity?env=dev&name=api", &cookie).await;
    assert!(page.contains("id=\"anomaly-flag\""), "{page}");
    assert!(
        page.contains("cloned_svid") && page.contains("new_peer"),
        "{page}"
    );
}

#[tokio::test]
async fn on_anomaly_disable_disables_the_identity() {
    let broker = TestBroker::start().await;
    create(&broker, "dev", "guarded", &["--on-anomaly", "disable"]);
    let att = attest(&broker, "dev", "guarded").await;
    fetch_jwt(&broker, &att, HOME, "billing").await.unwrap();
    assert_eq!(status_of(&broker, "dev", "guarded"), "active");
    // Presented from elsewhere: flagged, and the identity is disabled.
    let _ = fetch_jwt(&broker, &att, ELSEWHERE, "billing").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_of(&broker, "dev", "guarded") != "disabled" {
        assert!(Instant::now() < deadline, "not disabled:\n{}", broker.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = fetch_jwt(&broker, &att, HOME, "billing").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let audit = broker.cli_ok(&["audit", "--actor", "credbroker", "--output", "json"]);
    assert!(
        audit.contains("identity.disable") && audit.contains("--on-anomaly disable"),
        "{audit}"
    );
}

#[tokio::test]
async fn an_issuance_rate_far_above_the_baseline_is_flagged() {
    let broker = TestBroker::start_with(&["dev"], "[anomalies]\nissuance_spike_min = 5\n").await;
    create(&broker, "dev", "busy", &[]);
    create(&broker, "dev", "calm", &[]);
    let busy = attest(&broker, "dev", "busy").await;
    let calm = attest(&broker, "dev", "calm").await;
    for _ in 0..5 {
        fetch_jwt(&broker, &busy, HOME, "billing").await.unwrap();
    }
    for _ in 0..2 {
        fetch_jwt(&broker, &calm, HOME, "billing").await.unwrap();
    }
    let spikes = findings(&broker, "issuance_spike");
    assert_eq!(spikes.len(), 1, "{spikes:?}");
    assert_eq!(spikes[0]["identity"], "dev/busy");
    assert_eq!(metric(&broker, "issuance_spike").await, 1);
}

#[tokio::test]
async fn a_burst_of_denials_is_flagged() {
    let broker = TestBroker::start_with(&["dev"], "[anomalies]\ndenial_burst = 3\n").await;
    create(&broker, "dev", "prober", &[]);
    let att = attest(&broker, "dev", "prober").await;
    for _ in 0..2 {
        let err = fetch_jwt(&broker, &att, HOME, "payroll").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    assert!(findings(&broker, "denial_burst").is_empty());
    let _ = fetch_jwt(&broker, &att, HOME, "payroll").await.unwrap_err();
    let bursts = findings(&broker, "denial_burst");
    // One for the identity, one for the peer address.
    assert_eq!(bursts.len(), 2, "{bursts:?}");
    let details: Vec<&str> = bursts.iter().filter_map(|b| b["detail"].as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("identity dev/prober")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains(&format!("peer {HOME}"))),
        "{details:?}"
    );
    assert_eq!(metric(&broker, "denial_burst").await, 2);
}

#[tokio::test]
async fn one_peer_asking_for_several_environments_is_flagged() {
    let broker = TestBroker::start_with(&["dev", "prod"], "").await;
    create(&broker, "dev", "web", &[]);
    create(&broker, "prod", "web", &[]);
    attest(&broker, "dev", "web").await;
    assert!(findings(&broker, "cross_env").is_empty());
    attest(&broker, "prod", "web").await;
    let cross = findings(&broker, "cross_env");
    assert_eq!(cross.len(), 1, "{cross:?}");
    let detail = cross[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("dev") && detail.contains("prod") && detail.contains(HOME),
        "{detail}"
    );
    assert_eq!(metric(&broker, "cross_env").await, 1);
}

#[tokio::test]
async fn a_stale_identity_that_becomes_active_is_flagged() {
    let broker = TestBroker::start_with(&["dev"], "[anomalies]\nstale_after = \"2s\"\n").await;
    create(&broker, "dev", "dormant", &[]);
    let att = attest(&broker, "dev", "dormant").await;
    assert!(findings(&broker, "stale_reactivated").is_empty());
    // Nothing issued for longer than stale_after, then a credential.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    fetch_jwt(&broker, &att, HOME, "billing").await.unwrap();
    let stale = findings(&broker, "stale_reactivated");
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert_eq!(stale[0]["identity"], "dev/dormant");
    assert_eq!(metric(&broker, "stale_reactivated").await, 1);
}

/// Signs in to /ui over plain HTTP (POST the link's token); returns the
/// cookie pair.
async fn sign_in(broker: &TestBroker, link: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = &link[link.find("token=").unwrap() + 6..];
    let port = broker.http_port();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = format!("token={token}");
    let req = format!(
        "POST /ui/login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let head = String::from_utf8_lossy(&raw).into_owned();
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    set_cookie.split(';').next().unwrap().to_owned()
}

async fn get_page(broker: &TestBroker, path: &str, cookie: &str) -> String {
    raw_get(broker, path, cookie).await.1
}

async fn raw_get(broker: &TestBroker, path: &str, cookie: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = broker.http_port();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}
