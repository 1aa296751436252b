//! Idle-connection flood: a broker limited to 512 descriptors gets 700
//! HTTP connections that never send a byte; meanwhile gRPC (an admin call,
//! an Attest) must keep answering, and `/healthz` must answer again once
//! the header timeout has closed the idle ones.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use credbroker_client::Evidence;
use credbroker_proto::v1::ListIdentitiesRequest;

use super::process::{BrokerProcess, IDENTITY, http_status};
use super::{Checks, ms};

/// Longest a gRPC call may take while the flood is on.
const GRPC_BOUND: Duration = Duration::from_secs(5);
/// Longest `/healthz` may take to answer during the flood: the idle
/// connections are served 256 at a time (`http_max_connections`) and each
/// batch is closed by the 10 s header timeout, so 700 take three rounds.
const HEALTHZ_BOUND: Duration = Duration::from_secs(35);
/// Longest `/healthz` may take once the idle connections are gone.
const AFTER_BOUND: Duration = Duration::from_secs(2);

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> (Duration, Option<String>) {
    let began = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(60), f).await;
    let err = match r {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer in 60 s".to_owned()),
    };
    (began.elapsed(), err)
}

fn grpc_row(checks: &mut Checks, what: &str, (elapsed, err): (Duration, Option<String>)) {
    let measured = match &err {
        None => ms(elapsed),
        Some(e) => format!("{} (failed: {e})", ms(elapsed)),
    };
    checks.check(
        what,
        measured,
        format!("<= {}", ms(GRPC_BOUND)),
        err.is_none() && elapsed <= GRPC_BOUND,
    );
}

/// Opens `connections` idle HTTP connections to `broker` (started with a
/// descriptor limit) and measures what still answers.
pub async fn run(broker: &mut BrokerProcess, connections: usize) -> Result<Checks> {
    let mut checks = Checks::default();
    let mut admin = broker.admin().await?;
    let client = broker.client().await?;
    let token = admin.join_token(IDENTITY).await?;
    let fds_before = broker.fds().unwrap_or(0);
    let mut idle = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", broker.http_port))
            .await
            .context("opening an idle connection (raise this shell's ulimit -n?)")?;
        idle.push(stream);
    }
    // Let the broker accept what it will before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    checks.note("idle HTTP connections opened", idle.len());
    checks.note(
        "broker descriptors before / with the flood",
        format!("{fds_before} / {}", broker.fds().unwrap_or(0)),
    );
    let list = timed(
        admin
            .grpc()
            .list_identities(ListIdentitiesRequest::default()),
    )
    .await;
    grpc_row(&mut checks, "admin ListIdentities during the flood", list);
    let attest = timed(client.attest(&Evidence::JoinToken(token), &[])).await;
    grpc_row(&mut checks, "Attest during the flood", attest);
    let began = Instant::now();
    let mut healthz = None;
    while began.elapsed() < HEALTHZ_BOUND + Duration::from_secs(10) {
        if let Ok(status) = http_status(broker.http_port, "/healthz", Duration::from_secs(45)).await
        {
            healthz = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let waited = began.elapsed();
    checks.check(
        "/healthz during the flood",
        format!(
            "{} after {}",
            healthz.map_or("none".into(), |s| s.to_string()),
            ms(waited)
        ),
        format!("200 within {}", ms(HEALTHZ_BOUND)),
        healthz == Some(200) && waited <= HEALTHZ_BOUND,
    );
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let began = Instant::now();
    let after = http_status(broker.http_port, "/healthz", AFTER_BOUND)
        .await
        .ok();
    checks.check(
        "/healthz after the flood",
        format!(
            "{} after {}",
            after.map_or("none".into(), |s| s.to_string()),
            ms(began.elapsed())
        ),
        format!("200 within {}", ms(AFTER_BOUND)),
        after == Some(200),
    );
    let alive = broker.alive();
    checks.check("broker still running", alive, "true", alive);
    Ok(checks)
}
