//! Broker memory per registered identity: registers `--identities`
//! (default 100,000) through the Admin API of a real `credbroker serve`
//! (started here, like the soak suite: its own temporary data directory,
//! free loopback ports), reads its resident memory (`VmRSS`) before and
//! after, then restarts it (SIGTERM, start again on the same data) and
//! reads it once the identities are loaded from the store.
//!
//! ```text
//! cargo build --release -p credbroker --example identity_memory
//! TMPDIR=/dev/shm ./target/release/examples/identity_memory --identities 100000
//! ```
//!
//! Each identity looks like a service's: a 20-character name, owner and
//! purpose, two audiences and two scopes. Registering is bound by the
//! store's commits (one fsync each): with `TMPDIR` on a tmpfs, the data
//! directory is too and 100,000 take about a minute; on a disk, as long as
//! its fsyncs. Memory is what is measured; it does not depend on where the
//! file is. Prints what it measured; exits non-zero only when a call
//! failed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use credbroker_examples::broker::{ENV, OWNER};
use credbroker_examples::soak::process::{BrokerProcess, broker_binary};
use credbroker_proto::v1::{CreateIdentityRequest, IdentityRef};

#[derive(Debug, Parser)]
#[command(about = "Measure the broker's memory per registered identity")]
struct Args {
    /// Identities to register.
    #[arg(long, default_value_t = 100_000)]
    identities: usize,
    /// CreateIdentity calls in flight.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// The `credbroker` binary (default: next to this example's directory).
    #[arg(long)]
    broker_bin: Option<std::path::PathBuf>,
}

fn request(i: usize) -> CreateIdentityRequest {
    CreateIdentityRequest {
        env: ENV.into(),
        name: format!("svc/payments-{i:08}"),
        owner: OWNER.into(),
        purpose: format!("identity_memory: service {i:08}"),
        audiences: vec!["billing".into(), "ledger".into()],
        scopes: vec!["read".into(), "write".into()],
        ..Default::default()
    }
}

/// RSS in KiB once it has settled (two equal readings 500 ms apart).
async fn settled_rss(broker: &mut BrokerProcess) -> Result<u64> {
    let mut last = broker.rss_kb().context("reading the broker's VmRSS")?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = broker.rss_kb().context("reading the broker's VmRSS")?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

async fn register(broker: &BrokerProcess, args: &Args) -> Result<Duration> {
    let admin = broker.operator()?.admin().await?;
    let began = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight.max(1) {
        let mut grpc = admin.grpc_clone();
        let next = std::sync::Arc::clone(&next);
        let total = args.identities;
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                grpc.create_identity(request(i))
                    .await
                    .with_context(|| format!("CreateIdentity #{i}"))?;
                if (i + 1).is_multiple_of(20_000) {
                    println!("  {} registered", i + 1);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(began.elapsed())
}

fn per_identity(after: u64, before: u64, n: usize) -> String {
    format!(
        "{:.2}",
        after.saturating_sub(before) as f64 * 1024.0 / n.max(1) as f64 / 1000.0
    )
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.identities > 0, "--identities must be at least 1");
    let bin = broker_binary(args.broker_bin.as_deref())?;
    let mut broker = BrokerProcess::start(&bin, "", None).await?;
    let empty = settled_rss(&mut broker).await?;
    println!("broker pid {}, {} KiB resident empty", broker.pid(), empty);
    let took = register(&broker, &args).await?;
    println!(
        "registered {} identities in {:.1}s ({:.0}/s)",
        args.identities,
        took.as_secs_f64(),
        args.identities as f64 / took.as_secs_f64()
    );
    let registered = settled_rss(&mut broker).await?;
    let began = Instant::now();
    broker.restart().await?;
    let restarted_in = began.elapsed();
    let reloaded = settled_rss(&mut broker).await?;
    // Loaded, not merely resident: a few of them answer after the restart.
    let mut admin = broker.operator()?.admin().await?;
    for i in [0, args.identities / 2, args.identities - 1] {
        let name = request(i).name;
        admin
            .grpc()
            .get_identity(IdentityRef {
                env: ENV.into(),
                name: name.clone(),
            })
            .await
            .with_context(|| format!("GetIdentity {ENV}/{name} after the restart"))?;
    }
    println!(
        "restarted (SIGTERM, start, ready) in {:.1}s",
        restarted_in.as_secs_f64()
    );
    println!();
    println!("| phase | VmRSS KiB | KB per identity |");
    println!("|---|---:|---:|");
    println!("| empty | {empty} | - |");
    println!(
        "| {} registered | {registered} | {} |",
        args.identities,
        per_identity(registered, empty, args.identities)
    );
    println!(
        "| after a restart | {reloaded} | {} |",
        per_identity(reloaded, empty, args.identities)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    credbroker_examples::exit_code("identity_memory", run(Args::parse()).await)
}
