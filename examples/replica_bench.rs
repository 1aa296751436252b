//! Revocation fan-out across broker replicas: revokes on the first broker
//! and times how long each other broker takes to push the revocation to
//! its `WatchRevocations` subscriber (which it does only once the change
//! has reached it through the shared store's change feed).
//!
//! ```sh
//! ./target/release/examples/replica_bench \
//!     --broker https://127.0.0.1:7443 --broker https://127.0.0.1:7444 --broker https://127.0.0.1:7445 \
//!     --data-dir /tmp/replica-a --revocations 200
//! ```
//!
//! `--data-dir` is the first broker's (its admin certificate and
//! `broker-ca.pem`; replicas share the CA). Prints p50/p99/max per
//! subscriber broker; exits non-zero if a revocation did not arrive within
//! 5 s or a call failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use credbroker_client::{Client, Evidence, JwtRequest};
use credbroker_examples::broker::{BrokerArgs, Registration};
use credbroker_proto::v1::{RevokeRequest, revoke_request};

/// The benchmark identity.
const IDENTITY: &str = "replica-bench";
/// The audience its JWTs carry.
const AUDIENCE: &str = "bench";
/// Longest a revocation may take to reach a subscriber.
const BOUND: Duration = Duration::from_secs(5);

#[derive(Debug, Parser)]
#[command(about = "Measure revocation fan-out across broker replicas")]
struct Args {
    /// Broker gRPC URLs: revocations are made on the first, watched on the
    /// others (repeat, at least two).
    #[arg(long = "broker", required = true, num_args = 1)]
    brokers: Vec<String>,
    /// The first broker's data directory.
    #[arg(long, default_value = "./credbroker-data")]
    data_dir: std::path::PathBuf,
    /// Revocations to time.
    #[arg(long, default_value_t = 200)]
    revocations: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    credbroker_examples::report::percentile(sorted, p).unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.brokers.len() >= 2, "give at least two --broker URLs");
    let first = BrokerArgs {
        broker: args.brokers[0].clone(),
        data_dir: args.data_dir.clone(),
    }
    .load()?;
    let mut admin = first.admin().await?;
    admin
        .register(&Registration {
            name: IDENTITY,
            purpose: "replica_bench: measures revocation fan-out across replicas",
            audiences: &[AUDIENCE],
            x509_ttl: None,
        })
        .await?;
    // One subscriber per other broker, attested there.
    let mut streams = Vec::new();
    for url in &args.brokers[1..] {
        let client = Client::connect(url, &first.bundle_pem)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let started = Instant::now();
        let attested = loop {
            let token = admin.join_token(IDENTITY).await?;
            match client.attest(&Evidence::JoinToken(token), &[]).await {
                Ok(a) => break a,
                Err(e) if started.elapsed() < BOUND => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e).context(format!("attesting on {url}")),
            }
        };
        let session = client.authenticated(&attested.svid).await?;
        streams.push((url.clone(), session.watch_revocations(0).await?));
    }
    let caller = Client::connect(&args.brokers[0], &first.bundle_pem).await?;
    let token = admin.join_token(IDENTITY).await?;
    let attested = caller.attest(&Evidence::JoinToken(token), &[]).await?;
    let caller = caller.authenticated(&attested.svid).await?;

    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); streams.len()];
    for i in 0..args.revocations {
        let jwt = caller.fetch_jwt(&JwtRequest::audience(AUDIENCE)).await?;
        let started = Instant::now();
        let revoked = admin
            .grpc()
            .revoke(RevokeRequest {
                target: Some(revoke_request::Target::Jti(jwt.jti.clone())),
                reason: format!("replica_bench {i}"),
            })
            .await?
            .into_inner();
        for (k, (url, stream)) in streams.iter_mut().enumerate() {
            loop {
                let event = tokio::time::timeout(BOUND, stream.message())
                    .await
                    .with_context(|| {
                        format!(
                            "{url} did not push revocation #{} within {BOUND:?}",
                            revoked.seq
                        )
                    })??
                    .with_context(|| format!("{url} ended its revocation stream"))?;
                if event.seq == revoked.seq {
                    times[k].push(started.elapsed());
                    break;
                }
            }
        }
    }
    println!("| subscriber broker | revocations | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for ((url, _), mut t) in streams.iter().zip(times) {
        t.sort();
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        println!(
            "| {url} | {} | {} | {} | {} |",
            t.len(),
            ms(percentile(&t, 0.5)),
            ms(percentile(&t, 0.99)),
            ms(*t.last().unwrap_or(&Duration::ZERO))
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    credbroker_examples::exit_code("replica_bench", run(Args::parse()).await)
}
