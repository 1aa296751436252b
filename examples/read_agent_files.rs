//! Reads the credentials `credbroker-agent` writes, as any program could
//! (see `credbroker_examples::agent_files`): the SPIFFE ID, serial and
//! expiry of `svid.pem`, whether `svid_key.pem` is its key and whether it
//! chains to `bundle.pem`, and the claims of each `jwt/<audience>.token`.
//! No broker access is needed.
//!
//! Start the agent (with a join token from `credbroker token create`), then
//! read its files; `--watch` re-reads them whenever they change, which shows
//! each rotation:
//!
//! ```text
//! ./target/debug/credbroker-agent --bundle credbroker-data/broker-ca.pem --join-token "$TOKEN" --out-dir svid --jwt-audience billing
//! cargo run -p credbroker-examples --example read_agent_files -- --dir svid --watch
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use credbroker_examples::agent_files::{read, watch};

/// Reads and checks the agent's credential files.
#[derive(Debug, Parser)]
#[command(name = "read_agent_files")]
struct Args {
    /// The agent's `--out-dir`.
    #[arg(long, default_value = "svid")]
    dir: PathBuf,
    /// Keep running and re-read the files whenever they change.
    #[arg(long)]
    watch: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.watch {
        print!("{}", read(&args.dir)?);
        return Ok(());
    }
    watch(&args.dir, Duration::from_secs(1), |files| {
        println!(
            "--- {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        match files {
            Ok(files) => print!("{files}"),
            Err(e) => println!("error: {e:#}"),
        }
        ControlFlow::Continue(())
    });
    Ok(())
}
