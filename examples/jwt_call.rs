//! A call authenticated with a JWT-SVID that the service verifies with the
//! SDK's `JwtVerifier` (see `credbroker_examples::jwt_call`).
//!
//! It registers `dev/example-caller` (owner `examples`, audiences
//! `example-api` and `other-api`) through the Admin API with the admin
//! certificate from `--data-dir`, reusing it if it exists, starts a small
//! HTTP service for audience `example-api` on 127.0.0.1, and calls it three
//! times: with the right token (200), with the caller's token for
//! `other-api` (401) and with a tampered token (401). It exits non-zero if
//! any answer differs.
//!
//! With a broker started by `cargo run -p credbroker -- serve` in the
//! repository root:
//!
//! ```text
//! cargo run -p credbroker-examples --example jwt_call
//! ```

use anyhow::{Result, ensure};
use clap::Parser;
use credbroker_examples::broker::BrokerArgs;
use credbroker_examples::jwt_call::run;

/// A JWT-authenticated call, accepted and refused.
#[derive(Debug, Parser)]
#[command(name = "jwt_call")]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let calls = run(&args.broker.load()?).await?;
    let unexpected: Vec<_> = calls.iter().filter(|c| c.status != c.expected).collect();
    ensure!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    Ok(())
}
