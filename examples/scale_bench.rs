//! Scale benchmark: a fleet of node agents and their workloads — a million
//! by default (1,000 nodes × 1,000 workloads) — renewing 5-minute JWT-SVIDs
//! and 1-hour X.509-SVIDs at half their lives (±10 %, the agent's
//! `RefreshPolicy`) against one running broker: about 7,200 credentials a
//! second.
//!
//! Like an operator it registers the fleet through the Admin API (resumably:
//! a second run against the same data directory skips the nodes already
//! complete), then plays every node agent (see
//! `credbroker_examples::scale`): each attests with a join token, keeps one
//! mTLS connection, follows `WatchNodeEntries` and mints its workloads'
//! credentials on schedule. Every ten seconds and at the end it prints the
//! credentials per second against the rate the fleet needs, the broker's
//! CPU (utime + stime, 100 % = one core), RSS and CPU per credential, this
//! process's CPU, and the renewal lag: how long after its scheduled time
//! each renewal had its credential, and how many ran so late that the
//! credential they replaced had expired ("lapsed").
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! printf '[rate_limits]\nattest_per_second_per_peer = 0\nsign_per_second_per_peer = 0\n' > bench.toml
//! ./target/release/credbroker serve --config bench.toml &
//! ulimit -n 8192   # 1,000 node connections here and in the broker
//! ./target/release/examples/scale_bench --broker-pid $! --duration 5m
//! ```
//!
//! The broker and this process share the machine: on two cores, this
//! process's CPU (printed) is CPU the broker did not get. Benchmarks print
//! what they measured; this one exits non-zero only when a call failed.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use credbroker_examples::broker::BrokerArgs;
use credbroker_examples::procfs::{ProcFiles, clock_ticks};
use credbroker_examples::scale::Fleet;
use credbroker_examples::scale::fleet::{self, Lifetimes};
use credbroker_examples::scale::node::NodeAgent;
use credbroker_examples::scale::tally::{Tally, Window};

#[derive(Debug, Parser)]
#[command(about = "What one broker sustains for a fleet served through node agents")]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// The broker's process id, to read its CPU time and memory.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Node agents.
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Workloads each node serves.
    #[arg(long, default_value_t = 1000)]
    workloads_per_node: u32,
    /// JWT-SVID lifetime of the workloads (when registering them).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    jwt_ttl: Duration,
    /// X.509-SVID lifetime of the workloads (when registering them).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    x509_ttl: Duration,
    /// How long the fleet runs once every node has joined.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    duration: Duration,
    /// Nodes registered at a time.
    #[arg(long, default_value_t = 64)]
    register_in_flight: usize,
    /// Nodes joining (attesting) at a time.
    #[arg(long, default_value_t = 32)]
    join_in_flight: usize,
    /// Mints one node agent keeps on the wire at most.
    #[arg(long, default_value_t = 16)]
    in_flight_per_node: usize,
    /// Register the fleet, then stop (a later run skips the registration).
    #[arg(long)]
    register_only: bool,
    /// Seconds between the progress lines.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    report_every: Duration,
}

/// Readings of a process's CPU and memory over a stretch of time.
struct Meter {
    proc: ProcFiles,
    ticks: f64,
    cpu_at: Option<u64>,
    at: Instant,
}

impl Meter {
    fn new(mut proc: ProcFiles) -> Self {
        Self {
            cpu_at: proc.cpu_ticks(),
            ticks: clock_ticks(),
            proc,
            at: Instant::now(),
        }
    }

    /// CPU seconds used and wall seconds passed since the last reading.
    fn lap(&mut self) -> (f64, f64) {
        let now = self.proc.cpu_ticks();
        let used = match (self.cpu_at, now) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64 / self.ticks,
            _ => f64::NAN,
        };
        let wall = self.at.elapsed().as_secs_f64();
        (self.cpu_at, self.at) = (now, Instant::now());
        (used, wall)
    }

    fn rss_mib(&mut self) -> (f64, f64) {
        let (rss, hwm) = self.proc.memory_kb();
        let mib = |kb: Option<u64>| kb.map_or(f64::NAN, |kb| kb as f64 / 1024.0);
        (mib(rss), mib(hwm))
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
}

/// Joins every node, `in_flight` at a time, each with a fresh join token.
async fn join_all(args: &Args, fleet: Fleet) -> Result<Vec<NodeAgent>> {
    let broker = Arc::new(args.broker.load()?);
    let mut admin = broker.admin().await?;
    let began = Instant::now();
    let mut joining = tokio::task::JoinSet::new();
    let mut nodes = Vec::with_capacity(fleet.nodes as usize);
    let mut next = 0;
    while nodes.len() < fleet.nodes as usize {
        while next < fleet.nodes && joining.len() < args.join_in_flight.max(1) {
            let token = admin.join_token(&Fleet::node_name(next)).await?;
            let broker = Arc::clone(&broker);
            let n = next;
            joining.spawn(async move {
                NodeAgent::join(n, &broker.url, &broker.bundle_pem, token).await
            });
            next += 1;
        }
        let joined = joining
            .join_next()
            .await
            .context("no node left joining")?
            .context("a joining task panicked")??;
        ensure!(
            joined.workloads() == fleet.per_node as usize,
            "a node's snapshot holds {} workloads, not {}",
            joined.workloads(),
            fleet.per_node
        );
        nodes.push(joined);
    }
    println!(
        "{} nodes joined (attested, connected, snapshot of {} entries each) in {:.1} s",
        nodes.len(),
        fleet.per_node,
        began.elapsed().as_secs_f64()
    );
    Ok(nodes)
}

async fn run(args: Args) -> Result<bool> {
    ensure!(
        args.nodes > 0 && args.workloads_per_node > 0,
        "an empty fleet"
    );
    ensure!(
        args.in_flight_per_node > 0,
        "--in-flight-per-node must be at least 1"
    );
    let fleet = Fleet {
        nodes: args.nodes,
        per_node: args.workloads_per_node,
    };
    let mut broker = match args.broker_pid {
        Some(pid) => {
            Some(Meter::new(ProcFiles::open(pid).with_context(|| {
                format!("reading /proc/{pid} (--broker-pid)")
            })?))
        }
        None => None,
    };
    let own = Meter::new(ProcFiles::open(0).context("reading /proc/self")?);

    let admin = args.broker.load()?.admin().await?;
    let lifetimes = Lifetimes {
        jwt: args.jwt_ttl,
        x509: args.x509_ttl,
    };
    println!(
        "registering {} nodes × {} workloads ({} identities) …",
        fleet.nodes,
        fleet.per_node,
        fleet.workloads()
    );
    let registered = fleet::register(&admin, fleet, lifetimes, args.register_in_flight).await?;
    println!(
        "registered {} identities in {:.1} s ({:.0}/s); {} nodes were complete already",
        registered.created,
        registered.took.as_secs_f64(),
        registered.created as f64 / registered.took.as_secs_f64().max(1e-9),
        registered.nodes_skipped
    );
    if let Some(b) = broker.as_mut() {
        let (rss, _) = b.rss_mib();
        println!("broker RSS with the fleet registered: {rss:.0} MiB");
    }
    if args.register_only {
        return Ok(true);
    }

    let nodes = join_all(&args, fleet).await?;
    let (jwt_ttl, x509_ttl) = nodes[0].lifetimes().context("a node without workloads")?;
    let needed = fleet.workloads() as f64
        * (1.0 / (jwt_ttl.as_secs_f64() / 2.0) + 1.0 / (x509_ttl.as_secs_f64() / 2.0));
    println!(
        "JWT-SVIDs live {} s, X.509-SVIDs {} s: renewing each at half its life needs {needed:.1} credentials/s",
        jwt_ttl.as_secs(),
        x509_ttl.as_secs()
    );

    let tally = Arc::new(Tally::default());
    let until = Instant::now() + args.duration;
    let mut agents = tokio::task::JoinSet::new();
    for node in nodes {
        agents.spawn(node.serve(until, args.in_flight_per_node, Arc::clone(&tally)));
    }
    let mut steady = Steady {
        broker,
        own,
        run: Window::default(),
        broker_cpu: 0.0,
        own_cpu: 0.0,
        wall: 0.0,
        broker_peak_rss: 0.0,
    };
    steady.start();
    println!(
        "\n| t s | JWT/s | SVID/s | total/s | lag p50 ms | lag p99 ms | lag max ms | failed | broker CPU % | broker RSS MiB | bench CPU % |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let began = Instant::now();
    let mut report =
        tokio::time::interval_at((began + args.report_every).into(), args.report_every);
    loop {
        tokio::select! {
            _ = report.tick() => steady.row(&tally, began),
            done = agents.join_next() => match done {
                Some(result) => result.context("a node agent panicked")?,
                None => break,
            },
        }
    }
    steady.row(&tally, began);
    Ok(steady.summary(needed))
}

/// The steady phase's readings, window by window and in all.
struct Steady {
    broker: Option<Meter>,
    own: Meter,
    run: Window,
    broker_cpu: f64,
    own_cpu: f64,
    wall: f64,
    broker_peak_rss: f64,
}

impl Steady {
    fn start(&mut self) {
        if let Some(b) = self.broker.as_mut() {
            b.lap();
        }
        self.own.lap();
    }

    /// Prints the window since the last row and adds it to the run.
    fn row(&mut self, tally: &Tally, began: Instant) {
        let mut window = tally.take();
        let (own_cpu, wall) = self.own.lap();
        let (broker_cpu, rss) = match self.broker.as_mut() {
            Some(b) => (b.lap().0, b.rss_mib().0),
            None => (f64::NAN, f64::NAN),
        };
        if wall < 0.05 {
            return;
        }
        self.broker_cpu += broker_cpu;
        self.own_cpu += own_cpu;
        self.wall += wall;
        self.broker_peak_rss = self.broker_peak_rss.max(rss);
        println!(
            "| {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            began.elapsed().as_secs_f64(),
            window.jwts as f64 / wall,
            window.svids as f64 / wall,
            window.credentials() as f64 / wall,
            ms(window.lag(0.5)),
            ms(window.lag(0.99)),
            ms(window.lag(1.0)),
            window.failures,
            broker_cpu / wall * 100.0,
            rss,
            own_cpu / wall * 100.0,
        );
        self.run.absorb(window);
    }

    /// Prints the run's figures; whether no call failed.
    fn summary(mut self, needed: f64) -> bool {
        let run = &mut self.run;
        let rate = run.credentials() as f64 / self.wall;
        println!(
            "\nover {:.0} s: {} JWT-SVIDs and {} X.509-SVIDs minted, {rate:.0} credentials/s ({needed:.0}/s needed), {} failed calls",
            self.wall, run.jwts, run.svids, run.failures
        );
        println!(
            "renewal lag: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms; {} renewals lapsed (the credential they replaced had expired first)",
            ms(run.lag(0.5)),
            ms(run.lag(0.99)),
            ms(run.lag(0.999)),
            ms(run.lag(1.0)),
            run.lapsed,
        );
        if self.broker.is_some() {
            let hwm = self.broker.as_mut().map_or(f64::NAN, |b| b.rss_mib().1);
            println!(
                "broker: {:.0} % of a core, {:.0} µs CPU per credential, RSS up to {:.0} MiB (VmHWM {hwm:.0} MiB)",
                self.broker_cpu / self.wall * 100.0,
                self.broker_cpu / run.credentials().max(1) as f64 * 1e6,
                self.broker_peak_rss,
            );
        }
        println!(
            "this process (all node agents): {:.0} % of a core, {:.0} µs CPU per credential",
            self.own_cpu / self.wall * 100.0,
            self.own_cpu / run.credentials().max(1) as f64 * 1e6,
        );
        if let Some(first) = &run.first_failure {
            eprintln!("first failure: {first}");
        }
        run.failures == 0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    credbroker_examples::bench_exit_code("scale_bench", run(Args::parse()).await)
}
