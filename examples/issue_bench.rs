//! External load generator: drives a running `credbroker serve` from this
//! separate process and measures issuance as a client sees it (req/s,
//! p50/p99/p99.9) and as the broker pays for it (CPU per credential, read
//! from `/proc/PID/stat` with `--broker-pid`).
//!
//! Like an operator it registers one identity (`issue-bench`, audience
//! `bench`) through the Admin API with the data directory's admin
//! certificate, attests one workload per connection with a join token, then
//! keeps 1, 32 and 64 calls in flight over those connections (mutual TLS,
//! HTTP/2) for a fixed time after a warm-up:
//!
//! ```text
//! # [rate_limits] sign_per_second_per_peer = 0 in the broker's config: one
//! # address sends everything here.
//! taskset -c 0 ./target/release/credbroker serve --config bench.toml &
//! taskset -c 1 cargo run --release -p credbroker-examples --example issue_bench -- \
//!     --broker-pid $! --duration 10s --in-flight 1,32,64 --connections 1
//! ```
//!
//! `--calls N` instead runs exactly N calls per case with no warm-up, for
//! instruction counts that noise does not move: start the broker under
//! `valgrind --tool=callgrind` (or attach `perf stat -e instructions -p PID`)
//! and divide what it counted by the calls printed here.
//!
//! The figures depend on the machine (cores, frequency scaling, other load):
//! compare runs on one machine only, and say what else was running.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use credbroker_client::{Client, Evidence, WorkloadClient};
use credbroker_examples::broker::{BrokerArgs, Registration};
use credbroker_examples::load::{Outcome, Rpc, Stop, csr_pool, run_case};
use credbroker_examples::procfs::ProcFiles;

/// The benchmark identity.
const IDENTITY: &str = "issue-bench";
/// The audience its JWTs carry.
const AUDIENCE: &str = "bench";

#[derive(Debug, Parser)]
#[command(about = "Measure credential issuance against a running broker")]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The broker's process id, to read its CPU time per credential.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Calls to measure: fetch-jwt, renew-x509 (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "fetch-jwt,renew-x509")]
    rpc: Vec<String>,
    /// Calls kept in flight, one case each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,32,64")]
    in_flight: Vec<usize>,
    /// Connections (each an attested workload) the calls share.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long each case runs after its warm-up.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Instead of a duration: exactly this many calls per case, no warm-up.
    #[arg(long)]
    calls: Option<u64>,
}

fn parse_rpc(name: &str) -> Result<Rpc> {
    match name {
        "fetch-jwt" => Ok(Rpc::FetchJwt),
        "renew-x509" => Ok(Rpc::RenewX509),
        other => bail!("--rpc {other:?}: expected fetch-jwt or renew-x509"),
    }
}

async fn sessions(args: &Args) -> Result<Vec<WorkloadClient>> {
    let broker = args.broker.load()?;
    let mut admin = broker.admin().await?;
    admin
        .register(&Registration {
            name: IDENTITY,
            purpose: "issue_bench: measures credential issuance",
            audiences: &[AUDIENCE],
            x509_ttl: None,
        })
        .await?;
    let mut out = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let token = admin.join_token(IDENTITY).await?;
        let client = Client::connect(&broker.url, &broker.bundle_pem)
            .await
            .context("connecting to the broker")?;
        let attested = client
            .attest(&Evidence::JoinToken(token), &[])
            .await
            .context("attesting the benchmark workload")?;
        out.push(client.authenticated(&attested.svid).await?);
    }
    Ok(out)
}

fn micros(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1e6))
}

fn millis(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    format!("{:.3}", sorted[rank - 1].as_secs_f64() * 1e3)
}

fn print_row(rpc: Rpc, in_flight: usize, connections: usize, o: &Outcome) {
    println!(
        "| {} | {in_flight} | {connections} | {} | {:.0} | {} | {} | {} | {} | {} |",
        rpc.name(),
        o.issued,
        o.rate(),
        millis(&o.latencies, 0.5),
        millis(&o.latencies, 0.99),
        millis(&o.latencies, 0.999),
        o.errors,
        micros(o.cpu_per_credential()),
    );
}

async fn run(args: Args) -> Result<bool> {
    ensure!(
        (1..=64).contains(&args.connections),
        "--connections must be between 1 and 64"
    );
    ensure!(
        args.in_flight.iter().all(|&n| (1..=1024).contains(&n)),
        "--in-flight values must be between 1 and 1024"
    );
    let rpcs = args
        .rpc
        .iter()
        .map(|r| parse_rpc(r))
        .collect::<Result<Vec<_>>>()?;
    let mut broker = match args.broker_pid {
        Some(pid) => Some(
            ProcFiles::open(pid).with_context(|| format!("reading /proc/{pid} (--broker-pid)"))?,
        ),
        None => None,
    };
    let sessions = sessions(&args).await?;
    let csrs = csr_pool(256)?;
    let stop = match args.calls {
        Some(n) => Stop::Calls(n),
        None => Stop::After(args.duration),
    };
    println!(
        "\n| rpc | in flight | conns | issued | req/s | p50 ms | p99 ms | p99.9 ms | errors | broker CPU µs/credential |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut clean = true;
    for &rpc in &rpcs {
        for &in_flight in &args.in_flight {
            let outcome = run_case(
                &sessions,
                rpc,
                in_flight,
                stop,
                &csrs,
                AUDIENCE,
                broker.as_mut(),
            )
            .await?;
            print_row(rpc, in_flight, sessions.len(), &outcome);
            if let Some(e) = &outcome.first_error {
                clean = false;
                eprintln!("  first error: {e}");
                if e.contains("ResourceExhausted") {
                    eprintln!(
                        "  the broker's rate limits refused calls: set [rate_limits] \
                         sign_per_second_per_peer = 0 for a benchmark from one address"
                    );
                }
            }
        }
    }
    if let Some(n) = args.calls {
        println!("\ninstructions mode: {n} calls per case; divide the broker's count by them");
    }
    Ok(clean)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    credbroker_examples::bench_exit_code("issue_bench", run(Args::parse()).await)
}
