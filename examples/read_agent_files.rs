//! Reads the credentials `credbroker-agent` writes, as any program could
//! (see `credbroker_examples::agent_files`): the SPIFFE ID, serial and
//! expiry of `svid.pem`, whether `svid_key.pem` is its key and whether it
//! chains to `bundle.pem`, whether it is expired, and the claims of each
//! `jwt/<audience>.token`. No broker access is needed; with `--crl URL`
//! (the broker's `http://HOST:7080/ENV/crl`) it also says whether the
//! certificate was revoked.
//!
//! Start the agent (with a join token from `credbroker token create`), then
//! read its files; `--watch` re-reads them whenever they change, which shows
//! each rotation:
//!
//! ```text
//! ./target/debug/credbroker-agent --bundle credbroker-data/broker-ca.pem --join-token-file join.token --out-dir svid --jwt-audience billing
//! cargo run -p credbroker-examples --example read_agent_files -- --dir svid --watch --crl http://127.0.0.1:7080/dev/crl
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use credbroker_examples::agent_files::{AgentFiles, check_crl, read, watch};

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
    /// Also check the certificate against this CRL, e.g. the broker's
    /// http://127.0.0.1:7080/dev/crl.
    #[arg(long, value_name = "URL")]
    crl: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let fetcher = credbroker_client::http::HttpFetcher::new(None);
    // Reads the files, then (with --crl) asks the broker's CRL about them.
    let look = |dir: &std::path::Path| -> Result<AgentFiles> {
        let mut files = read(dir)?;
        if let Some(url) = &args.crl {
            let crl = runtime
                .block_on(fetcher.get(url))
                .with_context(|| format!("fetching the CRL {url}"))?;
            check_crl(&mut files, dir, &crl)?;
        }
        Ok(files)
    };
    if !args.watch {
        print!("{}", look(&args.dir)?);
        return Ok(());
    }
    watch(&args.dir, Duration::from_secs(1), |_| {
        println!(
            "--- {}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        );
        match look(&args.dir) {
            Ok(files) => print!("{files}"),
            Err(e) => println!("error: {e:#}"),
        }
        ControlFlow::Continue(())
    });
    Ok(())
}
