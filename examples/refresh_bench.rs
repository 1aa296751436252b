//! Refresh load benchmark: many SDK credential sources renewing against one
//! broker, before and after a broker restart.
//!
//! It starts the real `credbroker` binary as a separate process (its own
//! temporary data directory, gRPC and HTTP on free `127.0.0.1` ports,
//! `[ttl] floor = "1s"`, X.509 lifetime `--ttl`, default 30 s), registers one
//! identity and enough multi-use join tokens through the Admin API, then runs
//! `--sources` (default 10,000) [`CredentialSource`]s in this process. Each
//! source attests once, then renews its X.509-SVID at about half its
//! remaining lifetime ±10 % jitter (`--jitter`) over its own mTLS
//! connection, retrying with jittered exponential backoff when the broker is
//! away. A new serial on a source's watch channel counts as one renewal.
//!
//! 1. **Attestation**: all sources start, at most `--attest-concurrency`
//!    attesting at a time; it reports how long until all hold credentials.
//! 2. **Steady state** for `--duration` seconds (default 60): renewals per
//!    second against the expected `sources / (ttl / 2)`, the broker's CPU
//!    (utime + stime from `/proc/<pid>/stat`, 100 % = one core), memory
//!    (`VmRSS`, `VmHWM` from `/proc/<pid>/status`) and open files, the same
//!    for this process, and how evenly renewals fall within each renewal
//!    round (half a TTL): sources that attested together drift apart round
//!    after round thanks to the jitter.
//! 3. **Restart**: SIGTERM (via `kill`), `--outage` seconds down (default
//!    5), the same binary started again on the same config and ports, then
//!    `--after` seconds watched (default 1.5 × ttl). The sources keep their
//!    credentials and retry with backoff.
//!
//! For phases 2 and 3 it prints a per-second histogram (renewals, broker CPU,
//! RSS and open files, this process's open files, and the least lifetime an
//! SVID had left when it was replaced) and the max/mean ratio, so a
//! thundering herd, or its absence, is visible. It counts sources that ever
//! had no valid credential (`SourceState::Unavailable`) and exits with an
//! error if any did although the broker was unavailable for less than half
//! a lifetime. Every wait is bounded; the broker process is killed at the
//! end and on every error path, and its log (`--broker-log`, default `warn`)
//! is summarised.
//!
//! Build the broker in release mode first; the example looks for it next to
//! its own directory (`target/<profile>/credbroker`, or `--broker-bin`):
//!
//! ```text
//! cargo build --release -p credbroker && cargo run --release -p credbroker-examples --example refresh_bench -- --sources 10000
//! ```
//!
//! Each source holds one TLS connection to the broker (mTLS with its SVID;
//! the anonymous one it attests over is closed once it holds an SVID), and
//! a second for a moment while it attests or renews, so 10,000 sources need
//! more than 10,000 open files in this process and in the broker (which
//! inherits the limit).
//! The standard library cannot raise `RLIMIT_NOFILE` and `libc` is not a
//! dependency here, so the example checks the limit and stops with a clear
//! message when it is too low: run it under `ulimit -n 65536` (which needs
//! root, or a raised hard limit), or pass a smaller `--sources`.
//!
//! Figures depend on the machine: the broker and all sources share its
//! cores, so the sources' key generation and TLS handshakes compete with
//! the broker for CPU. On the two-core machine this was written on, with an
//! open-files hard limit of 20,000 (when sources held two connections each,
//! at most about 9,280 sources; with one, about 16,000), 7,500 sources kept
//! up at the default TTL (about 500 renewals/s, the broker using about 70 %
//! of one core and the sources as much again); 9,000 did not. With 4,000
//! sources the broker held 4,023 open files (one connection per source).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use credbroker_client::{CredentialSource, Evidence, RefreshPolicy, SourceConfig, SourceState};
use credbroker_examples::broker::Broker;
use credbroker_examples::procfs::{ProcFiles, clock_ticks};
use credbroker_proto::v1::{CreateIdentityRequest, CreateJoinTokenRequest, IdentityRef};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// Environment the benchmark identity lives in (served by default).
const ENV: &str = "dev";
/// Name of the benchmark identity.
const IDENTITY: &str = "refresh-bench";
/// Most uses one join token may carry (the Admin API's limit).
const USES_PER_TOKEN: u32 = 1000;
/// Sources sharing one token: half its uses, so each source could attest
/// once more if its SVID expired during an outage.
const SOURCES_PER_TOKEN: usize = 500;
/// Lifetime of the join tokens.
const TOKEN_TTL_SECS: u32 = 3600;
/// Longest one Admin API call or HTTP probe may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the broker may take to answer `/readyz` after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the broker may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one source may take to get its first credentials.
const SOURCE_ATTEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest this process waits for its source tasks to end.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Width of the longest histogram bar.
const BAR_WIDTH: usize = 32;

/// Refresh load benchmark for credbroker (see the file's documentation).
#[derive(Debug, Parser)]
#[command(name = "refresh_bench")]
struct Args {
    /// Credential sources (simulated workloads) run in this process.
    #[arg(long, default_value_t = 10_000)]
    sources: usize,
    /// X.509-SVID lifetime in seconds; sources renew at about half of it.
    #[arg(long, default_value_t = 30)]
    ttl: u32,
    /// Seconds of steady state measured.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds the broker stays down between its exit and its restart.
    #[arg(long, default_value_t = 5)]
    outage: u64,
    /// Seconds watched once the restarted broker is ready (default 1.5 × --ttl).
    #[arg(long)]
    after: Option<u64>,
    /// Sources attesting at the same time while they start.
    #[arg(long, default_value_t = 64)]
    attest_concurrency: usize,
    /// Renewal jitter, ± this fraction of the delay (the SDK default is 0.1).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// The broker's log filter (`CREDBROKER_LOG`).
    #[arg(long, default_value = "warn")]
    broker_log: String,
    /// The `credbroker` binary (default: `credbroker` in the directory above
    /// this example's, e.g. `target/release/`).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
}

impl Args {
    fn check(&self) -> Result<()> {
        ensure!(
            (1..=100_000).contains(&self.sources),
            "--sources must be between 1 and 100000"
        );
        ensure!(
            (2..=3600).contains(&self.ttl),
            "--ttl must be between 2 and 3600 seconds"
        );
        ensure!(
            (1..=3600).contains(&self.duration),
            "--duration must be between 1 and 3600 seconds"
        );
        ensure!(self.outage <= 600, "--outage must be at most 600 seconds");
        ensure!(
            (1..=3600).contains(&self.after()),
            "--after must be between 1 and 3600 seconds"
        );
        ensure!(
            (1..=10_000).contains(&self.attest_concurrency),
            "--attest-concurrency must be between 1 and 10000"
        );
        ensure!(
            (0.0..=0.5).contains(&self.jitter),
            "--jitter must be between 0 and 0.5"
        );
        Ok(())
    }

    fn after(&self) -> u64 {
        self.after.unwrap_or(u64::from(self.ttl) * 3 / 2)
    }

    /// Longest the attestation phase may take.
    fn attest_phase_timeout(&self) -> Duration {
        Duration::from_secs(60) + Duration::from_millis(20) * self.sources as u32
    }

    /// Seconds covered by the per-second buckets: every phase at its longest.
    fn timeline_secs(&self) -> usize {
        let longest = self.attest_phase_timeout()
            + Duration::from_secs(self.duration + self.outage + self.after() + 10)
            + STOP_TIMEOUT
            + READY_TIMEOUT;
        longest.as_secs() as usize
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;
    let files_limit = check_open_files(args.sources)?;
    let bin = broker_binary(args.broker_bin.as_deref())?;
    let mut broker = BrokerProcess::new(bin, args.ttl, &args.broker_log)?;
    let log_path = broker.log_path.clone();
    let outcome = bench(&args, &mut broker, files_limit).await;
    // Kill the broker (if still running) before reading its last words.
    broker.kill();
    print_log_summary(&log_path);
    outcome
}

// ---------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------

async fn bench(args: &Args, broker: &mut BrokerProcess, files_limit: u64) -> Result<()> {
    let n = args.sources;
    let clk_tck = clock_ticks();
    println!(
        "credbroker refresh benchmark: {n} sources, X.509 TTL {}s, renewal jitter ±{:.0}%, \
         {} CPUs shared by broker and sources; figures depend on the machine",
        args.ttl,
        args.jitter * 100.0,
        std::thread::available_parallelism().map_or(0, |c| c.get()),
    );
    let started_in = broker.start().await?;
    println!(
        "broker {} started in {:.2}s (pid {}, gRPC 127.0.0.1:{}, log {})",
        broker.bin.display(),
        started_in.as_secs_f64(),
        broker.pid.load(Ordering::Relaxed),
        broker.grpc_port,
        broker.log_path.display()
    );

    let url = format!("https://127.0.0.1:{}", broker.grpc_port);
    let bundle =
        std::fs::read(broker.data_dir.join("broker-ca.pem")).context("reading broker-ca.pem")?;
    let tokens = register(
        &url,
        &broker.data_dir,
        args.ttl,
        n.div_ceil(SOURCES_PER_TOKEN),
    )
    .await?;

    // Phase 1: attestation.
    let tally = Arc::new(Tally::new(args.timeline_secs()));
    let sampler = {
        let (tally, pid) = (Arc::clone(&tally), Arc::clone(&broker.pid));
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || sample_every_second(&tally, &pid, clk_tck))
            .context("starting the sampler thread")?
    };
    let _stop_sampler = StopOnDrop(Arc::clone(&tally));
    let permits = Arc::new(Semaphore::new(args.attest_concurrency));
    let policy = RefreshPolicy {
        jitter: args.jitter,
        ..RefreshPolicy::default()
    };
    let attest_start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let config = SourceConfig {
            broker: url.clone(),
            bundle_pem: bundle.clone(),
            evidence: Evidence::JoinToken(tokens[i / SOURCES_PER_TOKEN].clone()),
            jwt_audiences: Vec::new(),
            policy,
        };
        tasks.push(tokio::spawn(run_source(
            config,
            Arc::clone(&tally),
            Arc::clone(&permits),
        )));
    }
    let deadline = attest_start + args.attest_phase_timeout();
    loop {
        let done = tally.ready.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed);
        if done >= n {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "only {done} of {n} sources attested within {}s",
                args.attest_phase_timeout().as_secs()
            );
        }
        broker.check_alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attest_time = attest_start.elapsed();
    let failed = tally.failed.load(Ordering::Relaxed);
    println!();
    println!(
        "1. attestation ({} in flight at most)",
        args.attest_concurrency
    );
    println!(
        "   {} of {n} sources ready in {:.2}s ({:.0} attestations/s); {failed} failed",
        n - failed,
        attest_time.as_secs_f64(),
        (n - failed) as f64 / attest_time.as_secs_f64()
    );
    if let Some(problem) = tally
        .first_problem
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        println!("   first problem: {problem}");
    }
    ensure!(failed == 0, "{failed} sources could not attest (see above)");

    // Phase 2: steady state, from the next whole second.
    let steady_from = tally.secs_elapsed_ceil();
    tally.sleep_until_sec(steady_from).await;
    let steady_to = steady_from + args.duration as usize;
    tally.sleep_until_sec_checked(steady_to, broker).await?;
    let samples = sampler_snapshot(&tally, steady_to - 1).await;
    // Readings taken as the phase started and as it ended.
    let (first, last) = (
        reading_at(&samples, steady_from),
        reading_at(&samples, steady_to),
    );
    let secs = args.duration as f64;
    let cpu_pct =
        |ticks: fn(Sample) -> Option<u64>| match (first.and_then(ticks), last.and_then(ticks)) {
            (Some(a), Some(b)) => format!(
                "{:.0}%",
                b.saturating_sub(a) as f64 / clk_tck / secs * 100.0
            ),
            _ => "-".into(),
        };
    let steady = tally.window(steady_from, steady_to);
    let expected = n as f64 / (f64::from(args.ttl) / 2.0);
    println!();
    println!("2. steady state, {}s", args.duration);
    println!(
        "   renewals: {} = {:.1}/s, {:.0}% of the {expected:.1}/s expected (sources / (ttl/2)); \
         per second min {} max {} max/mean {:.2}",
        steady.total,
        steady.mean,
        steady.mean / expected * 100.0,
        steady.min,
        steady.max,
        steady.ratio()
    );
    println!(
        "   least lifetime left on a replaced SVID: {}",
        left(tally.min_left(steady_from, steady_to))
    );
    println!(
        "   broker CPU {} of one core, RSS {} -> {} (peak {}); this process CPU {}, RSS {}",
        cpu_pct(|s| s.ticks),
        mib(first.and_then(|s| s.rss_kb)),
        mib(last.and_then(|s| s.rss_kb)),
        mib(last.and_then(|s| s.hwm_kb)),
        cpu_pct(|s| s.own_ticks),
        mib(last.and_then(|s| s.own_rss_kb)),
    );
    println!(
        "   most open files: broker {}, this process {} (limit {})",
        peak(&samples, steady_from, steady_to, |s| s.fds),
        peak(&samples, steady_from, steady_to, |s| s.own_fds.count()),
        files_limit,
    );
    println!(
        "   sources ever unavailable: {}",
        tally.unavailable.load(Ordering::Relaxed)
    );
    print_rounds(&tally, steady_from, steady_to, args.ttl);
    let scale = steady.max.max(1);
    print_histogram(&tally, &samples, steady_from, steady_to, scale, &[]);

    // Phase 3: restart.
    let kill_sec = steady_to;
    let killed_at = Instant::now();
    let stop = broker.stop().await?;
    let exited_sec = tally.secs_elapsed();
    tokio::time::sleep(Duration::from_secs(args.outage)).await;
    let restart_sec = tally.secs_elapsed();
    let started_in = broker.start().await?;
    let ready_sec = tally.secs_elapsed();
    let down = killed_at.elapsed();
    let after_from = tally.secs_elapsed_ceil();
    let after_to = after_from + args.after() as usize;
    tally.sleep_until_sec_checked(after_to, broker).await?;
    let samples = sampler_snapshot(&tally, after_to - 1).await;
    tally.stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let outage_window = tally.window(kill_sec, after_from);
    let after = tally.window(after_from, after_to);
    let unavailable = tally.unavailable.load(Ordering::Relaxed);
    let short_outage = down.as_secs_f64() * 2.0 < f64::from(args.ttl);
    println!();
    println!("3. broker restart");
    println!(
        "   SIGTERM at t={kill_sec}s: {} in {:.2}s; down {}s more; started again in {:.2}s; \
         no service for {:.1}s in all",
        stop.describe(),
        stop.elapsed.as_secs_f64(),
        args.outage,
        started_in.as_secs_f64(),
        down.as_secs_f64(),
    );
    println!(
        "   renewals while stopping/down/starting (t={kill_sec}..{after_from}s): {}",
        outage_window.total
    );
    println!(
        "   next {}s: {} renewals = {:.1}/s; per second max {} max/mean {:.2}, \
         max / steady mean {:.2}",
        args.after(),
        after.total,
        after.mean,
        after.max,
        after.ratio(),
        after.max as f64 / steady.mean.max(f64::MIN_POSITIVE)
    );
    println!(
        "   least lifetime left on a replaced SVID after the restart: {}",
        left(tally.min_left(kill_sec, after_to))
    );
    println!(
        "   restarted broker RSS at the end: {}; most open files: broker {}, this process {}",
        mib(reading_at(&samples, after_to).and_then(|s| s.rss_kb)),
        peak(&samples, after_from, after_to, |s| s.fds),
        peak(&samples, kill_sec, after_to, |s| s.own_fds.count()),
    );
    println!(
        "   sources ever unavailable after attesting: {unavailable}{}",
        if short_outage {
            " (expected 0: the outage was shorter than half a TTL)"
        } else {
            " (the outage was not shorter than half a TTL, so some may expire)"
        }
    );
    if let Some(problem) = tally
        .first_problem
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        println!("   first problem: {problem}");
    }
    let marks = [
        (kill_sec, "SIGTERM"),
        (exited_sec, "exited"),
        (restart_sec, "started"),
        (ready_sec, "ready"),
    ];
    print_histogram(
        &tally,
        &samples,
        kill_sec,
        after_to,
        scale.max(after.max).max(outage_window.max),
        &marks,
    );

    // Teardown: sources first (their connections close), then the broker.
    for task in &tasks {
        task.abort();
    }
    let _ = tokio::time::timeout(TEARDOWN_TIMEOUT, async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    let stop = broker.stop().await?;
    println!();
    println!(
        "broker stopped at the end: {} in {:.2}s",
        stop.describe(),
        stop.elapsed.as_secs_f64()
    );
    ensure!(
        unavailable == 0 || !short_outage,
        "{unavailable} sources had no valid credential although the outage was shorter than half \
         a TTL"
    );
    Ok(())
}

/// Registers the benchmark identity and `count` join tokens; returns them.
async fn register(url: &str, data_dir: &Path, ttl: u32, count: usize) -> Result<Vec<String>> {
    let mut admin = Broker::from_data_dir(url.to_owned(), data_dir)?
        .admin()
        .await?
        .grpc_clone();
    admin
        .create_identity(CreateIdentityRequest {
            env: ENV.into(),
            name: IDENTITY.into(),
            owner: "refresh-bench".into(),
            purpose: "refresh load benchmark".into(),
            x509_ttl_seconds: ttl,
            ..Default::default()
        })
        .await
        .context("creating the benchmark identity")?;
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        let token = admin
            .create_join_token(CreateJoinTokenRequest {
                identity: Some(IdentityRef {
                    env: ENV.into(),
                    name: IDENTITY.into(),
                }),
                ttl_seconds: TOKEN_TTL_SECS,
                uses: USES_PER_TOKEN,
            })
            .await
            .context("creating a join token")?
            .into_inner();
        tokens.push(token.token);
    }
    Ok(tokens)
}

// ---------------------------------------------------------------------------
// Sources and what they report
// ---------------------------------------------------------------------------

/// What all sources report, by second since the benchmark started.
struct Tally {
    t0: Instant,
    /// Renewals seen in each second.
    renewals: Vec<AtomicU32>,
    /// Least lifetime (ms) the replaced SVID had left, per second.
    min_left_ms: Vec<AtomicU64>,
    /// Broker CPU (% of one core) and RSS (KiB) sampled at the end of each
    /// second; `None` while the broker is down.
    samples: Mutex<Vec<Option<Sample>>>,
    /// Sources holding their first credentials.
    ready: AtomicUsize,
    /// Sources that could not attest.
    failed: AtomicUsize,
    /// Sources that published `Unavailable` after their first credentials.
    unavailable: AtomicUsize,
    /// The first failure or unavailability reason seen.
    first_problem: Mutex<Option<String>>,
    /// Tells the sampler thread to end.
    stop: AtomicBool,
}

/// What the sampler read at the end of one second.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Broker CPU time so far (utime + stime), in clock ticks.
    ticks: Option<u64>,
    /// Broker CPU over the second, % of one core.
    cpu_pct: Option<f64>,
    /// Broker resident memory.
    rss_kb: Option<u64>,
    /// Broker peak resident memory.
    hwm_kb: Option<u64>,
    /// Files the broker has open.
    fds: Option<usize>,
    /// This process's CPU time so far, in clock ticks.
    own_ticks: Option<u64>,
    /// This process's resident memory.
    own_rss_kb: Option<u64>,
    /// Files this process has open.
    own_fds: FileCount,
}

/// How many files a process has open, as far as this process can tell.
#[derive(Debug, Clone, Copy)]
enum FileCount {
    Count(usize),
    /// This process has no descriptor left to even look (EMFILE).
    Exhausted,
    Unknown,
}

impl FileCount {
    fn count(self) -> Option<usize> {
        match self {
            Self::Count(n) => Some(n),
            Self::Exhausted | Self::Unknown => None,
        }
    }
}

/// Stops the sampler thread when dropped (also on error paths).
struct StopOnDrop(Arc<Tally>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Renewal counts over a range of seconds.
struct Window {
    total: u64,
    mean: f64,
    min: u64,
    max: u64,
}

impl Window {
    fn ratio(&self) -> f64 {
        if self.mean > 0.0 {
            self.max as f64 / self.mean
        } else {
            0.0
        }
    }
}

impl Tally {
    fn new(secs: usize) -> Self {
        Self {
            t0: Instant::now(),
            renewals: (0..secs).map(|_| AtomicU32::new(0)).collect(),
            min_left_ms: (0..secs).map(|_| AtomicU64::new(u64::MAX)).collect(),
            samples: Mutex::new(vec![None; secs]),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            unavailable: AtomicUsize::new(0),
            first_problem: Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    fn secs_elapsed(&self) -> usize {
        self.t0.elapsed().as_secs() as usize
    }

    fn secs_elapsed_ceil(&self) -> usize {
        self.t0.elapsed().as_secs_f64().ceil() as usize
    }

    async fn sleep_until_sec(&self, sec: usize) {
        tokio::time::sleep_until((self.t0 + Duration::from_secs(sec as u64)).into()).await;
    }

    /// Sleeps until second `sec`, failing early if the broker exits.
    async fn sleep_until_sec_checked(&self, sec: usize, broker: &mut BrokerProcess) -> Result<()> {
        let end = self.t0 + Duration::from_secs(sec as u64);
        while Instant::now() < end {
            broker.check_alive()?;
            let step = end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            tokio::time::sleep(step).await;
        }
        Ok(())
    }

    fn renewed(&self, left: Duration) {
        let sec = self.secs_elapsed();
        if let (Some(count), Some(min)) = (self.renewals.get(sec), self.min_left_ms.get(sec)) {
            count.fetch_add(1, Ordering::Relaxed);
            min.fetch_min(left.as_millis() as u64, Ordering::Relaxed);
        }
    }

    fn problem(&self, what: String) {
        let mut first = self.first_problem.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(what);
    }

    fn window(&self, from: usize, to: usize) -> Window {
        let counts: Vec<u64> = (from..to)
            .map(|s| {
                self.renewals
                    .get(s)
                    .map_or(0, |c| u64::from(c.load(Ordering::Relaxed)))
            })
            .collect();
        let total: u64 = counts.iter().sum();
        Window {
            total,
            mean: total as f64 / counts.len().max(1) as f64,
            min: counts.iter().copied().min().unwrap_or(0),
            max: counts.iter().copied().max().unwrap_or(0),
        }
    }

    fn min_left(&self, from: usize, to: usize) -> Option<Duration> {
        (from..to)
            .filter_map(|s| self.min_left_ms.get(s))
            .map(|m| m.load(Ordering::Relaxed))
            .filter(|&m| m != u64::MAX)
            .min()
            .map(Duration::from_millis)
    }
}

/// One workload: starts a source (holding an attestation permit until its
/// first credentials), then counts its renewals until aborted.
async fn run_source(config: SourceConfig, tally: Arc<Tally>, permits: Arc<Semaphore>) {
    let Ok(permit) = permits.acquire_owned().await else {
        return;
    };
    let source = CredentialSource::start(config);
    let mut rx = source.watch();
    let first = tokio::time::timeout(SOURCE_ATTEST_TIMEOUT, first_credentials(&mut rx)).await;
    drop(permit);
    let (mut serial, mut expires_at) = match first {
        Ok(Ok(held)) => held,
        Ok(Err(reason)) => {
            tally.problem(format!("attestation: {reason}"));
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            tally.problem(format!(
                "attestation: no credentials within {}s",
                SOURCE_ATTEST_TIMEOUT.as_secs()
            ));
            tally.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    tally.ready.fetch_add(1, Ordering::Relaxed);
    let mut was_unavailable = false;
    while rx.changed().await.is_ok() {
        let state = rx.borrow_and_update().clone();
        match state {
            SourceState::Ready(creds) if creds.svid.serial != serial => {
                let left = expires_at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tally.renewed(left);
                serial.clone_from(&creds.svid.serial);
                expires_at = creds.svid.expires_at;
            }
            SourceState::Unavailable { reason, .. } if !was_unavailable => {
                was_unavailable = true;
                tally.unavailable.fetch_add(1, Ordering::Relaxed);
                tally.problem(format!("unavailable: {reason}"));
            }
            _ => {}
        }
    }
    drop(source);
}

/// Waits for a source's first credentials: their serial and expiry, or why
/// the source gave up.
async fn first_credentials(
    rx: &mut tokio::sync::watch::Receiver<SourceState>,
) -> Result<(String, SystemTime), String> {
    loop {
        match &*rx.borrow_and_update() {
            SourceState::Ready(creds) => {
                return Ok((creds.svid.serial.clone(), creds.svid.expires_at));
            }
            SourceState::Unavailable {
                reason,
                retrying: false,
            } => return Err(reason.clone()),
            SourceState::Starting | SourceState::Unavailable { .. } => {}
        }
        rx.changed()
            .await
            .map_err(|_| "the source stopped".to_owned())?;
    }
}

// ---------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------

/// The `credbroker` binary: `--broker-bin`, else next to this example's
/// directory (`target/<profile>/examples/..`), else `$CREDBROKER_BIN_DIR`.
fn broker_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match (explicit, std::env::var_os("CREDBROKER_BIN_DIR")) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(dir)) => PathBuf::from(dir).join("credbroker"),
        (None, None) => {
            let exe = std::env::current_exe().context("locating this executable")?;
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .context("this executable has no grandparent directory")?;
            profile_dir.join("credbroker")
        }
    };
    ensure!(
        path.is_file(),
        "{} not found; build the broker first with `cargo build --release -p credbroker` \
         (same profile as this example), or pass --broker-bin",
        path.display()
    );
    Ok(path)
}

/// A free TCP port on 127.0.0.1 (free when asked; nothing holds it).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener
        .local_addr()
        .context("reading a bound address")?
        .port())
}

/// The broker as a child process; killed when dropped.
struct BrokerProcess {
    bin: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    log_filter: String,
    grpc_port: u16,
    http_port: u16,
    child: Option<Child>,
    /// The running broker's pid, 0 while none runs (read by the sampler).
    pid: Arc<AtomicU32>,
    // Last: removed after the child is killed (see `Drop`).
    _dir: TempDir,
}

/// How a stop went.
struct Stopped {
    elapsed: Duration,
    /// `None` when it had to be killed.
    status: Option<ExitStatus>,
}

impl Stopped {
    fn describe(&self) -> String {
        match self.status {
            Some(status) if status.success() => "exited cleanly".into(),
            Some(status) => format!("exited with {status}"),
            None => format!(
                "did not exit within {}s of SIGTERM, killed",
                STOP_TIMEOUT.as_secs()
            ),
        }
    }
}

impl BrokerProcess {
    /// Writes the config (free ports, TTL floor 1 s, X.509 default `ttl`).
    fn new(bin: PathBuf, ttl: u32, log_filter: &str) -> Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let data_dir = dir.path().join("data");
        let grpc_port = free_port()?;
        let http_port = free_port()?;
        let toml = format!(
            "data_dir = {data_dir:?}\n\
             grpc_listen = \"127.0.0.1:{grpc_port}\"\n\
             http_listen = \"127.0.0.1:{http_port}\"\n\
             \n\
             [ttl]\n\
             floor = \"1s\"\n\
             default_x509 = \"{ttl}s\"\n\
             \n\
             # Thousands of sources from one address: no per-peer limits.\n\
             [rate_limits]\n\
             attest_per_second_per_peer = 0\n\
             sign_per_second_per_peer = 0\n"
        );
        let config = dir.path().join("credbroker.toml");
        std::fs::write(&config, toml).context("writing the broker config")?;
        Ok(Self {
            bin,
            config,
            data_dir,
            log_path: dir.path().join("broker.log"),
            log_filter: log_filter.to_owned(),
            grpc_port,
            http_port,
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
            _dir: dir,
        })
    }

    /// Starts the broker and waits until `/readyz` answers 200; returns how
    /// long that took.
    async fn start(&mut self) -> Result<Duration> {
        let began = Instant::now();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("opening broker.log")?;
        let child = Command::new(&self.bin)
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("CREDBROKER_DATA_DIR")
            .env("CREDBROKER_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.pid.store(child.id(), Ordering::Relaxed);
        self.child = Some(child);
        let deadline = began + READY_TIMEOUT;
        loop {
            if matches!(http_status(self.http_port, "/readyz").await, Ok(200)) {
                return Ok(began.elapsed());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "the broker did not become ready within {}s (log: {})",
                READY_TIMEOUT.as_secs(),
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the broker (SIGKILL) if it runs, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::Relaxed);
    }

    /// Fails if the broker process has exited.
    fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the broker is not running");
        };
        if let Some(status) = child.try_wait().context("checking the broker process")? {
            self.child = None;
            self.pid.store(0, Ordering::Relaxed);
            bail!(
                "the broker exited unexpectedly with {status} (log: {})",
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// Sends SIGTERM (with `kill`) and waits for the exit; kills it if it
    /// takes longer than [`STOP_TIMEOUT`].
    async fn stop(&mut self) -> Result<Stopped> {
        let began = Instant::now();
        let mut child = self.child.take().context("the broker is not running")?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        if !matches!(&sent, Ok(s) if s.success()) {
            let _ = child.kill();
            let _ = child.wait();
            self.pid.store(0, Ordering::Relaxed);
            bail!("could not send SIGTERM to the broker with `kill`: {sent:?}");
        }
        let status = loop {
            if let Some(status) = child.try_wait().context("waiting for the broker")? {
                break Some(status);
            }
            if began.elapsed() >= STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.pid.store(0, Ordering::Relaxed);
        Ok(Stopped {
            elapsed: began.elapsed(),
            status,
        })
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The status code of `GET path` on 127.0.0.1:`port`, within [`CALL_TIMEOUT`].
async fn http_status(port: u16, path: &str) -> Result<u16> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(CALL_TIMEOUT, get)
        .await
        .context("HTTP request timed out")??;
    let head = String::from_utf8_lossy(&raw);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")
}

// ---------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------

/// Fails clearly unless this process may open enough files for `sources`;
/// returns the soft limit.
fn check_open_files(sources: usize) -> Result<u64> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    let mut values = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .context("no open-files limit in /proc/self/limits")?
        .split_whitespace()
        .map(|v| {
            if v == "unlimited" {
                Ok(u64::MAX)
            } else {
                v.parse::<u64>().context("parsing the open-files limit")
            }
        });
    let soft = values.next().context("no soft open-files limit")??;
    let hard = values.next().context("no hard open-files limit")??;
    let needed = files_needed(sources);
    if soft >= needed {
        return Ok(soft);
    }
    let most = (1..=sources)
        .rev()
        .find(|&n| files_needed(n) <= hard)
        .unwrap_or(0);
    let hint = if hard >= needed {
        format!(
            "raise the soft limit up to the hard limit ({hard}), e.g. `ulimit -n {needed}`, \
             then run again"
        )
    } else {
        format!(
            "the hard limit ({hard}) is too low as well: raise it (as root with \
             CAP_SYS_RESOURCE, `ulimit -n 65536`, or in /etc/security/limits.conf) or pass \
             --sources {most} or fewer"
        )
    };
    bail!(
        "{sources} sources need about {needed} open files (one TLS connection each, two for \
         a moment, in this process and in the broker, which inherits the limit) but the soft limit is {soft}.\n\
         The standard library cannot raise it, so {hint}."
    )
}

/// Open files `sources` need in this process and in the broker: one
/// connection per source (mTLS with its SVID), a second for a moment while
/// it attests or renews, plus a margin.
fn files_needed(sources: usize) -> u64 {
    (sources + sources / 5 + 512) as u64
}

/// How many files process `pid` (0: this one) has open.
fn open_files(pid: u32) -> FileCount {
    /// "Too many open files" on Linux.
    const EMFILE: i32 = 24;
    let dir = if pid == 0 {
        "/proc/self/fd".to_owned()
    } else {
        format!("/proc/{pid}/fd")
    };
    match std::fs::read_dir(dir) {
        Ok(entries) => FileCount::Count(entries.count()),
        Err(e) if e.raw_os_error() == Some(EMFILE) => FileCount::Exhausted,
        Err(_) => FileCount::Unknown,
    }
}

/// Samples the broker's CPU, memory and open files, and this process's, at
/// the end of every second until `tally.stop` is set. A thread of its own,
/// so a busy runtime cannot delay it.
fn sample_every_second(tally: &Tally, pid: &AtomicU32, clk_tck: f64) {
    let mut own = ProcFiles::open(0);
    let mut broker: Option<ProcFiles> = None;
    // (pid, CPU ticks, when read) of the last good broker reading.
    let mut last: Option<(u32, u64, Instant)> = None;
    let mut sec: u64 = 1;
    while !tally.stop.load(Ordering::Relaxed) {
        let wait = (tally.t0 + Duration::from_secs(sec)).saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait.min(Duration::from_millis(200)));
            continue;
        }
        let now = Instant::now();
        let current = pid.load(Ordering::Relaxed);
        if broker.as_ref().map(ProcFiles::pid) != Some(current) {
            broker = (current != 0).then(|| ProcFiles::open(current)).flatten();
        }
        let ticks = broker.as_mut().and_then(ProcFiles::cpu_ticks);
        let cpu_pct = ticks.map(|ticks| match last {
            Some((p, base, at)) if p == current => {
                let wall = now.saturating_duration_since(at).as_secs_f64().max(1e-3);
                ticks.saturating_sub(base) as f64 / clk_tck / wall * 100.0
            }
            // A new process: it started within the last second or so.
            _ => ticks as f64 / clk_tck * 100.0,
        });
        if let Some(ticks) = ticks {
            last = Some((current, ticks, now));
        }
        let (rss_kb, hwm_kb) = broker.as_mut().map_or((None, None), ProcFiles::memory_kb);
        let sample = Sample {
            ticks,
            cpu_pct,
            rss_kb,
            hwm_kb,
            fds: (current != 0)
                .then(|| open_files(current).count())
                .flatten(),
            own_ticks: own.as_mut().and_then(ProcFiles::cpu_ticks),
            own_rss_kb: own.as_mut().and_then(|o| o.memory_kb().0),
            own_fds: open_files(0),
        };
        // The sample covers the second that just ended.
        let mut samples = tally.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = samples.get_mut(sec as usize - 1) {
            *slot = Some(sample);
        }
        drop(samples);
        sec = sec.max(now.saturating_duration_since(tally.t0).as_secs()) + 1;
    }
}

/// The reading taken as second `sec` began (at the end of `sec - 1`).
fn reading_at(samples: &[Option<Sample>], sec: usize) -> Option<Sample> {
    samples.get(sec.checked_sub(1)?).copied().flatten()
}

/// The samples so far, once the one for second `last` is in (waiting at
/// most a second for it: it is taken just as that second ends).
async fn sampler_snapshot(tally: &Tally, last: usize) -> Vec<Option<Sample>> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let samples = tally
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if samples.get(last).is_none_or(Option::is_some) || Instant::now() >= deadline {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------

/// The largest `field` of the samples in seconds `from..to`, or `-`.
fn peak(
    samples: &[Option<Sample>],
    from: usize,
    to: usize,
    field: impl Fn(&Sample) -> Option<usize>,
) -> String {
    samples
        .get(from..to.min(samples.len()))
        .unwrap_or_default()
        .iter()
        .flatten()
        .filter_map(field)
        .max()
        .map_or_else(|| "-".into(), |n| n.to_string())
}

fn mib(kb: Option<u64>) -> String {
    kb.map_or_else(|| "-".into(), |kb| format!("{:.0} MiB", kb as f64 / 1024.0))
}

fn left(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// How evenly renewals fall within each renewal round (half a TTL) of
/// `from..to`: with jitter, sources that started together drift apart
/// round after round, so max/mean falls towards 1.
fn print_rounds(tally: &Tally, from: usize, to: usize, ttl: u32) {
    let round = (ttl as usize).div_ceil(2);
    if to - from < 2 * round {
        return;
    }
    println!("   spread within each renewal round ({round}s):");
    println!(
        "   {:>11} {:>8} {:>6} {:>6} {:>8}",
        "t (s)", "renewals", "min/s", "max/s", "max/mean"
    );
    for start in (from..to).step_by(round).take_while(|s| s + round <= to) {
        let w = tally.window(start, start + round);
        println!(
            "   {:>11} {:>8} {:>6} {:>6} {:>8.2}",
            format!("{start}..{}", start + round),
            w.total,
            w.min,
            w.max,
            w.ratio()
        );
    }
}

/// One row per second in `from..to`: renewals, a bar scaled to `scale`,
/// broker CPU and RSS, the least lifetime left on a replaced SVID, and any
/// event marked for that second.
fn print_histogram(
    tally: &Tally,
    samples: &[Option<Sample>],
    from: usize,
    to: usize,
    scale: u64,
    marks: &[(usize, &str)],
) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!();
    println!(
        "   {:>5} {:>8}  {:<BAR_WIDTH$} {:>6} {:>7} {:>6} {:>6} {:>6}",
        "t (s)", "renewals", "", "broker", "broker", "broker", "bench", "least"
    );
    println!(
        "   {:>5} {:>8}  {:<BAR_WIDTH$} {:>6} {:>7} {:>6} {:>6} {:>6}",
        "", "", "", "CPU %", "RSS MiB", "files", "files", "left s"
    );
    for sec in from..to {
        let count = tally
            .renewals
            .get(sec)
            .map_or(0, |c| u64::from(c.load(Ordering::Relaxed)));
        let bar = "#".repeat((count as usize * BAR_WIDTH).div_ceil(scale.max(1) as usize));
        let sample = samples.get(sec).copied().flatten();
        let cpu = opt(sample.and_then(|s| s.cpu_pct).map(|c| format!("{c:.0}")));
        let rss = opt(sample
            .and_then(|s| s.rss_kb)
            .map(|kb| format!("{:.0}", kb as f64 / 1024.0)));
        let fds = opt(sample.and_then(|s| s.fds).map(|n| n.to_string()));
        let own_fds = match sample.map(|s| s.own_fds) {
            Some(FileCount::Count(n)) => n.to_string(),
            Some(FileCount::Exhausted) => "FULL".into(),
            _ => "-".into(),
        };
        let min_left = tally
            .min_left_ms
            .get(sec)
            .map(|m| m.load(Ordering::Relaxed))
            .filter(|&m| m != u64::MAX)
            .map_or_else(|| "-".into(), |ms| format!("{:.1}", ms as f64 / 1e3));
        let mut line = format!(
            "   {sec:>5} {count:>8}  {bar:<BAR_WIDTH$} {cpu:>6} {rss:>7} {fds:>6} {own_fds:>6} \
             {min_left:>6}"
        );
        for (_, what) in marks.iter().filter(|(s, _)| *s == sec) {
            let _ = write!(line, "  <- {what}");
        }
        println!("{line}");
    }
}

/// Counts the broker log's warnings and errors and shows a few.
fn print_log_summary(path: &Path) {
    let Ok(log) = std::fs::read_to_string(path) else {
        return;
    };
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("error"))
        .collect();
    println!(
        "broker log: {} lines, {} warnings/errors",
        log.lines().count(),
        problems.len()
    );
    let mut shown = Vec::new();
    for line in problems {
        // Drop the timestamp so repeats of one message collapse.
        let text = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest.trim_start());
        let key: String = text.chars().take(80).collect();
        if !shown.contains(&key) {
            println!("  {}", text.chars().take(300).collect::<String>());
            shown.push(key);
            if shown.len() == 5 {
                break;
            }
        }
    }
}
