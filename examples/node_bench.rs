//! Node-agent benchmark: one real `credbroker-agent --node` serving many
//! workload identities on one host, against a running broker.
//!
//! Like an operator it registers a node identity and a join token through
//! the Admin API, starts the agent, then registers `--identities` workload
//! identities parented to the node, each with the selector `unix:uid=N` for
//! its own uid. After each registration it starts a caller as that uid (this
//! program re-executed with `--probe`, using the `spiffe` crate's Workload
//! API client) that asks for its X.509-SVID until it gets it, and records
//! the time from the `CreateIdentity` reply to the SVID in the caller's
//! hands. It prints:
//!
//! * identity create → first SVID at the caller: p50, p90, p99, max;
//! * the agent's RSS before and after, and per identity served;
//! * with `--broker-pid`, the broker's CPU per identity brought up
//!   (registration plus first mint) and, over a steady phase in which the
//!   agent renews every SVID at half its life, per renewed SVID.
//!
//! It must run as root (callers switch uids). Build everything in release
//! mode first, start a broker with its per-peer rate limits off (all load
//! comes from one address), then run:
//!
//! ```text
//! cargo build --release --workspace --examples
//! printf '[rate_limits]\nattest_per_second_per_peer = 0\nsign_per_second_per_peer = 0\n' > bench.toml
//! ./target/release/credbroker serve --config bench.toml &
//! ./target/release/examples/node_bench --broker-pid $(pgrep -f 'credbroker serve')
//! ```

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use credbroker_examples::broker::{BrokerArgs, ENV, OWNER};
use credbroker_examples::procfs::{ProcFiles, clock_ticks};
use credbroker_proto::v1::{CreateIdentityRequest, QueryAuditRequest, Selector};

/// X.509 lifetime of the benchmark's workload identities (the broker's
/// default floor), so the steady phase sees renewals.
const WORKLOAD_TTL: Duration = Duration::from_secs(60);
/// Longest a caller waits for its first SVID.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(about = "How fast and how cheaply one node agent serves many workloads")]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The broker's pid, to read its CPU time from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Workload identities to register and serve.
    #[arg(long, default_value_t = 1000)]
    identities: u32,
    /// First uid of the callers (one uid per identity).
    #[arg(long, default_value_t = 20_000)]
    uid_base: u32,
    /// Seconds of steady renewal measured after bring-up (0 skips it).
    #[arg(long, default_value_t = 60)]
    steady: u64,
    /// The agent binary (default: next to this example's directory).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// Internal: run as a caller of the Workload API on this socket.
    #[arg(long, hide = true)]
    probe: Option<PathBuf>,
}

/// Caller mode: fetch an X.509-SVID until one comes; print when it came.
async fn probe(socket: &Path) -> Result<()> {
    let endpoint = format!("unix:{}", socket.display());
    let began = Instant::now();
    loop {
        let attempt = async {
            let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
            client.fetch_x509_svid().await
        };
        if let Ok(svid) = attempt.await {
            let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
            println!("{at} {}", svid.spiffe_id());
            return Ok(());
        }
        ensure!(
            began.elapsed() < PROBE_TIMEOUT,
            "no SVID within {PROBE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn agent_bin(args: &Args) -> Result<PathBuf> {
    if let Some(bin) = &args.agent_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe()?;
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate the build directory")?;
    let bin = profile.join("credbroker-agent");
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p credbroker-client` or pass --agent-bin",
        bin.display()
    );
    Ok(bin)
}

struct Agent {
    child: Child,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    credbroker_examples::report::percentile(sorted, p).unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

async fn run(args: Args) -> Result<()> {
    let broker = args.broker.load()?;
    let mut admin = broker.admin().await?;
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let node = format!("bench-node-{run}");
    let node_id = admin
        .grpc()
        .create_identity(CreateIdentityRequest {
            env: ENV.into(),
            name: node.clone(),
            owner: OWNER.into(),
            purpose: "node_bench host".into(),
            ..Default::default()
        })
        .await
        .context("registering the node identity")?
        .into_inner()
        .spiffe_id;
    let token = admin.join_token(&node).await?;

    // Everything callers of other uids touch must be reachable by them.
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let bundle = dir.path().join("broker-ca.pem");
    std::fs::write(&bundle, &broker.bundle_pem)?;
    let socket = dir.path().join("agent.sock");
    let probe_bin = dir.path().join("probe");
    std::fs::copy(std::env::current_exe()?, &probe_bin)?;
    std::fs::set_permissions(&probe_bin, std::fs::Permissions::from_mode(0o755))?;

    let agent = Agent {
        child: Command::new(agent_bin(&args)?)
            .args(["--broker", &broker.url, "--join-token", &token, "--node"])
            .arg("--bundle")
            .arg(&bundle)
            .arg("--workload-api-socket")
            .arg(&socket)
            .args(["--socket-mode", "0666"])
            .args(["--svid-cache-size", &args.identities.max(1).to_string()])
            .env("CREDBROKER_LOG", "warn")
            .stderr(std::fs::File::create(dir.path().join("agent.log"))?)
            .spawn()
            .context("starting the agent")?,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        ensure!(
            Instant::now() < deadline,
            "the agent's socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut agent_proc = ProcFiles::open(agent.child.id()).context("reading the agent's /proc")?;
    let mut broker_proc = args.broker_pid.and_then(ProcFiles::open);
    let ticks = clock_ticks();
    let rss_before = agent_proc.memory_kb().0.unwrap_or(0);
    let cpu_before = broker_proc.as_mut().and_then(ProcFiles::cpu_ticks);

    let mut latencies = Vec::with_capacity(args.identities as usize);
    let mut creates = Vec::with_capacity(args.identities as usize);
    let began = Instant::now();
    for i in 0..args.identities {
        let uid = args.uid_base + i;
        let asked = Instant::now();
        admin
            .grpc()
            .create_identity(CreateIdentityRequest {
                env: ENV.into(),
                name: format!("{node}-w{i}"),
                owner: OWNER.into(),
                purpose: "node_bench workload".into(),
                selectors: vec![Selector {
                    key: "unix:uid".into(),
                    value: uid.to_string(),
                }],
                x509_ttl_seconds: WORKLOAD_TTL.as_secs() as u32,
                parent: format!("{ENV}/{node}"),
                ..Default::default()
            })
            .await
            .with_context(|| format!("registering workload {i}"))?;
        creates.push(asked.elapsed());
        let created = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let out = Command::new(&probe_bin)
            .arg("--probe")
            .arg(&socket)
            .uid(uid)
            .gid(uid)
            .stderr(Stdio::inherit())
            .output()
            .context("running a caller")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(at) = text
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<u128>().ok())
        else {
            bail!("caller {i} (uid {uid}) got no SVID: {text}");
        };
        latencies.push(Duration::from_nanos(at.saturating_sub(created) as u64));
    }
    let bring_up = began.elapsed();
    let rss_after = agent_proc.memory_kb().0.unwrap_or(0);
    let cpu_after = broker_proc.as_mut().and_then(ProcFiles::cpu_ticks);

    latencies.sort();
    creates.sort();
    let n = latencies.len() as f64;
    println!(
        "\nnode agent serving {} workload identities ({} CPUs here)",
        latencies.len(),
        cpus()
    );
    println!("| measure | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (what, values) in [
        ("CreateIdentity reply", &creates),
        ("create → first SVID at the caller", &latencies),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} |",
            ms(percentile(values, 0.5)),
            ms(percentile(values, 0.9)),
            ms(percentile(values, 0.99)),
            ms(*values.last().unwrap_or(&Duration::ZERO)),
        );
    }
    println!(
        "bring-up of all identities took {:.1} s (each: register, start a caller as its uid, wait for its SVID)",
        bring_up.as_secs_f64()
    );
    println!(
        "agent RSS {:.1} MiB → {:.1} MiB: {:.1} KiB per identity served",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        (rss_after.saturating_sub(rss_before)) as f64 / n
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "broker CPU per identity brought up (registration + first mint): {:.0} µs",
            (after - before) as f64 / ticks / n * 1e6
        );
    }
    if args.steady > 0 {
        steady(&args, &mut admin, &node_id, broker_proc.as_mut(), ticks).await?;
    }
    drop(agent);
    Ok(())
}

/// Renewals over a quiet phase: every SVID renews at about half its life.
async fn steady(
    args: &Args,
    admin: &mut credbroker_examples::broker::Admin,
    node_id: &str,
    broker_proc: Option<&mut ProcFiles>,
    ticks: f64,
) -> Result<()> {
    let mut broker_proc = broker_proc;
    let since_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let cpu_before = broker_proc.as_deref_mut().and_then(ProcFiles::cpu_ticks);
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let cpu_after = broker_proc.and_then(ProcFiles::cpu_ticks);
    let events = admin
        .grpc()
        .query_audit(QueryAuditRequest {
            actor: node_id.to_owned(),
            since_ms,
            limit: 10_000,
            ..Default::default()
        })
        .await
        .context("querying the audit log")?
        .into_inner()
        .events;
    let renewed = events
        .iter()
        .filter(|e| e.action == "mint_workload_svid" && e.decision == "issued")
        .count();
    let failed = events.iter().filter(|e| e.decision == "denied").count();
    println!(
        "steady {} s: {renewed} SVIDs renewed ({:.1}/s; {:.1}/s expected at half of {} s), {failed} refused",
        args.steady,
        renewed as f64 / args.steady as f64,
        f64::from(args.identities) / (WORKLOAD_TTL.as_secs_f64() / 2.0),
        WORKLOAD_TTL.as_secs()
    );
    if let (Some(before), Some(after)) = (cpu_before, cpu_after)
        && renewed > 0
    {
        println!(
            "broker CPU per renewed workload SVID: {:.0} µs ({:.1} % of a core)",
            (after - before) as f64 / ticks / renewed as f64 * 1e6,
            (after - before) as f64 / ticks / args.steady as f64 * 100.0
        );
    }
    Ok(())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.probe.clone() {
        Some(socket) => probe(&socket).await,
        None => run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
