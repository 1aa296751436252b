//! The soak and abuse suite: each job starts the real broker binary in a
//! temporary directory, does one bounded thing to it, prints what it
//! measured next to its bound, and exits non-zero when a bound is broken.
//!
//! ```text
//! cargo build --release -p credbroker --example soak
//! ./target/release/examples/soak all            # or steady | amplify | idle | fault
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use credbroker_examples::soak::process::{BrokerProcess, broker_binary};
use credbroker_examples::soak::{Checks, amplify, fault, idle, steady};

#[derive(Debug, Parser)]
#[command(about = "Soak and abuse the real broker within bounds")]
struct Args {
    /// The `credbroker` binary (default: next to this example, or
    /// $CREDBROKER_BIN_DIR/credbroker).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    #[command(subcommand)]
    job: Job,
}

#[derive(Debug, Clone, Subcommand)]
enum Job {
    /// Issuance for a fixed time with RSS and descriptors sampled.
    Steady {
        /// How long (half FetchJwt, half RenewX509).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        duration: Duration,
        /// Calls in flight.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
    },
    /// Oversized, over-counted and undecodable requests.
    Amplify,
    /// Idle HTTP connections against a descriptor limit.
    Idle {
        /// Idle connections opened.
        #[arg(long, default_value_t = 700)]
        connections: usize,
        /// The broker's descriptor limit.
        #[arg(long, default_value_t = 512)]
        nofile: u64,
    },
    /// The store locked by another writer, then released.
    Fault,
    /// Every job with its defaults.
    All,
}

async fn job(bin: &std::path::Path, job: Job) -> Result<(String, Checks)> {
    Ok(match job {
        Job::Steady {
            duration,
            in_flight,
        } => {
            let mut b = BrokerProcess::start(bin, "", None).await?;
            (
                format!(
                    "steady load, {}s, {in_flight} in flight",
                    duration.as_secs()
                ),
                steady::run(&mut b, duration, in_flight).await?,
            )
        }
        Job::Amplify => {
            let mut b = BrokerProcess::start(bin, "", None).await?;
            (
                "amplification requests".to_owned(),
                amplify::run(&mut b).await?,
            )
        }
        Job::Idle {
            connections,
            nofile,
        } => {
            let mut b = BrokerProcess::start(bin, "", Some(nofile)).await?;
            (
                format!(
                    "{connections} idle HTTP connections, broker limited to {nofile} descriptors"
                ),
                idle::run(&mut b, connections).await?,
            )
        }
        Job::Fault => {
            let mut b = BrokerProcess::start(bin, "", None).await?;
            (
                "store fault: write lock held, then released".to_owned(),
                fault::run(&mut b).await?,
            )
        }
        Job::All => unreachable!("expanded by main"),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let bin = match broker_binary(args.broker_bin.as_deref()) {
        Ok(bin) => bin,
        Err(e) => {
            eprintln!("soak: {e:#}");
            return ExitCode::from(2);
        }
    };
    let jobs = match args.job {
        Job::All => vec![
            Job::Steady {
                duration: Duration::from_secs(30),
                in_flight: 32,
            },
            Job::Amplify,
            Job::Idle {
                connections: 700,
                nofile: 512,
            },
            Job::Fault,
        ],
        one => vec![one],
    };
    let mut ok = true;
    for j in jobs {
        match job(&bin, j.clone()).await {
            Ok((title, checks)) => {
                checks.print(&title);
                ok &= checks.passed();
            }
            Err(e) => {
                println!("== {j:?}: could not run: {e:#}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("a bound was broken");
        ExitCode::FAILURE
    }
}
