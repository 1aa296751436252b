//! Two services talking mTLS with X.509-SVIDs that rotate every minute while
//! requests keep flowing (see `credbroker_examples::mtls_pair`).
//!
//! It registers `dev/example-server` and `dev/example-client` (owner
//! `examples`, 60 s certificates) through the Admin API with the admin
//! certificate from `--data-dir`, reusing them if they exist, then runs both
//! services in this process and sends a request every 100 ms. It prints each
//! rotation and a running count, and exits non-zero if any request failed.
//!
//! With a broker started by `cargo run -p credbroker -- serve` in the
//! repository root:
//!
//! ```text
//! cargo run -p credbroker-examples --example mtls_pair
//! ```

use std::time::Duration;

use anyhow::{Result, ensure};
use clap::Parser;
use credbroker_examples::broker::BrokerArgs;
use credbroker_examples::mtls_pair::{Options, run};

/// mTLS between two workloads across certificate rotations.
#[derive(Debug, Parser)]
#[command(name = "mtls_pair")]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Seconds to keep sending requests.
    #[arg(long, default_value_t = 150)]
    duration: u64,
    /// Milliseconds between two requests.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Lifetime of the certificates, in seconds, for identities this run
    /// registers (the broker's floor is 60 unless configured lower).
    #[arg(long, default_value_t = 60)]
    x509_ttl: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let options = Options {
        x509_ttl: Duration::from_secs(args.x509_ttl),
        duration: Duration::from_secs(args.duration),
        interval: Duration::from_millis(args.interval_ms.max(1)),
    };
    let report = run(&args.broker.load()?, &options).await?;
    println!("done: {report}");
    ensure!(report.errors == 0, "{} requests failed", report.errors);
    Ok(())
}
