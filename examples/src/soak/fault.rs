//! A store fault: another process holds the database's write lock. While
//! it does, issuing calls must fail UNAVAILABLE in bounded time (never
//! succeed unaudited) and `/readyz` must say 503; once it lets go, both
//! must recover without a restart.

use std::time::{Duration, Instant};

use anyhow::Result;
use credbroker_client::{JwtRequest, WorkloadClient};
use sqlx::Connection;

use super::process::{AUDIENCE, BrokerProcess, http_status};
use super::{Checks, ms};

/// Longest a call may take to fail while the store is locked (the audit
/// commit gives up after 5 s).
const FAIL_BOUND: Duration = Duration::from_secs(8);
/// Longest recovery may take once the lock is gone.
const RECOVER_BOUND: Duration = Duration::from_secs(10);

async fn fetch(session: &WorkloadClient) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(30),
        session.fetch_jwt(&JwtRequest::audience(AUDIENCE)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 30 s".to_owned()),
    }
}

/// Locks `broker`'s store, measures, releases, measures recovery.
pub async fn run(broker: &mut BrokerProcess) -> Result<Checks> {
    let mut checks = Checks::default();
    let mut admin = broker.admin().await?;
    let session = broker.session(&mut admin).await?;
    fetch(&session).await.map_err(anyhow::Error::msg)?;
    let url = format!(
        "sqlite://{}",
        broker.data_dir.join("credbroker.db").display()
    );
    let mut lock = sqlx::SqliteConnection::connect(&url).await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await?;
    checks.note("store", "write lock held by another connection");

    let began = Instant::now();
    let result = fetch(&session).await;
    let elapsed = began.elapsed();
    let unavailable = result.as_ref().err().is_some_and(|e| {
        e.contains("Unavailable") || e.contains("UNAVAILABLE") || e.contains("unavailable")
    });
    checks.check(
        "FetchJwt while locked",
        format!(
            "{} after {}",
            match &result {
                Ok(()) => "SUCCEEDED".to_owned(),
                Err(e) => e.chars().take(80).collect(),
            },
            ms(elapsed)
        ),
        format!("UNAVAILABLE within {}", ms(FAIL_BOUND)),
        unavailable && elapsed <= FAIL_BOUND,
    );
    let began = Instant::now();
    let ready = http_status(broker.http_port, "/readyz", Duration::from_secs(30))
        .await
        .ok();
    checks.check(
        "/readyz while locked",
        format!(
            "{} after {}",
            ready.map_or("none".into(), |s| s.to_string()),
            ms(began.elapsed())
        ),
        format!("503 within {}", ms(FAIL_BOUND)),
        ready == Some(503) && began.elapsed() <= FAIL_BOUND,
    );

    sqlx::query("ROLLBACK").execute(&mut lock).await?;
    lock.close().await?;
    let began = Instant::now();
    let mut recovered = None;
    while began.elapsed() < RECOVER_BOUND * 3 {
        if fetch(&session).await.is_ok() {
            recovered = Some(began.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checks.check(
        "FetchJwt after release",
        recovered.map_or("never".to_owned(), |d| format!("ok after {}", ms(d))),
        format!("within {}", ms(RECOVER_BOUND)),
        recovered.is_some_and(|d| d <= RECOVER_BOUND),
    );
    // `/readyz` reuses a verdict for 500 ms: poll until it turns.
    let began = Instant::now();
    let mut ready = None;
    while began.elapsed() < RECOVER_BOUND * 3 {
        ready = http_status(broker.http_port, "/readyz", Duration::from_secs(10))
            .await
            .ok();
        if ready == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let waited = began.elapsed();
    checks.check(
        "/readyz after release",
        format!(
            "{} after {}",
            ready.map_or("none".into(), |s| s.to_string()),
            ms(waited)
        ),
        format!("200 within {}", ms(RECOVER_BOUND)),
        ready == Some(200) && waited <= RECOVER_BOUND,
    );
    Ok(checks)
}
