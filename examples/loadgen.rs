//! Issuance load generator: how many credentials one broker core issues, and
//! how long each takes.
//!
//! It starts a real broker in this process (SQLite store in a temporary
//! directory, gRPC over TLS on `127.0.0.1:0`) on its own Tokio runtime with a
//! single worker thread, to stand for one server core. Like an operator, it
//! registers an identity (audience `bench`, scope `read`) and a join token
//! through the Admin API with the admin client certificate. Then, on a second
//! single-threaded Tokio runtime, a workload attests with the SDK once and
//! calls over one mutually authenticated HTTP/2 connection:
//!
//! * `FetchJwt` — an ES256 JWT-SVID for audience `bench`, bound to the
//!   caller's certificate;
//! * `RenewX509` — a new X.509-SVID from a CSR. The CSRs (and their P-256
//!   keys) are generated before the clock starts and cycled through, so the
//!   timed section holds only the RPC and the broker's work (CSR parse and
//!   signature check, leaf signing), not the client's key generation.
//!
//! Each RPC is driven with 1 call in flight and with 64 calls in flight
//! (clones of one `WorkloadClient` multiplexed on one connection), each for a
//! fixed time after a warm-up, and never more than `--max-requests` calls, so
//! every case stops by itself. It prints requests per second, p50 and p99
//! latency of successful calls, and the number of failed calls, then shuts
//! the broker down.
//!
//! Run it in release mode:
//!
//! ```text
//! cargo run --release -p credbroker-examples --example loadgen
//! cargo run --release -p credbroker-examples --example loadgen -- --duration 10 --concurrency 1,8,64
//! ```
//!
//! Client and server share the machine, so the figures depend on it (core
//! count and speed, other load, CPU frequency scaling); on a machine with two
//! cores each runtime gets about one. Compare figures only between runs on
//! the same machine. No `tracing` subscriber is installed, so the broker's
//! per-issuance audit events cost nothing here; a deployed broker that writes
//! them somewhere pays for that too.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use credbroker_client::{Client, Evidence, JwtRequest, WorkloadClient};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::PrivatePkcs8KeyDer;

use support::{
    CALL_TIMEOUT, Endpoint, InProcessBroker, NewIdentity, admin_client, check_range, cpus,
    create_identity, join_token, millis, percentile, runtime,
};

/// Name of the benchmark identity.
const IDENTITY: &str = "loadgen";
/// Audience the identity may ask for.
const AUDIENCE: &str = "bench";
/// Scope the identity may ask for.
const SCOPE: &str = "read";

/// Issuance load generator for credbroker (see the file's documentation).
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Seconds to measure each case.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of unmeasured warm-up before each case.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Calls in flight, comma-separated; one case per value.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    concurrency: Vec<usize>,
    /// Most calls per case (warm-up included separately).
    #[arg(long, default_value_t = 2_000_000)]
    max_requests: u64,
    /// Distinct pre-generated CSRs that RenewX509 cycles through.
    #[arg(long, default_value_t = 256)]
    csr_pool: usize,
}

impl Args {
    fn check(&self) -> Result<()> {
        for (name, secs) in [("--duration", self.duration), ("--warmup", self.warmup)] {
            ensure!(
                secs.is_finite() && (0.0..=3600.0).contains(&secs),
                "{name} must be between 0 and 3600 seconds, got {secs}"
            );
        }
        ensure!(self.duration > 0.0, "--duration must be more than 0");
        ensure!(
            !self.concurrency.is_empty()
                && self.concurrency.iter().all(|&c| (1..=10_000).contains(&c)),
            "--concurrency must list values between 1 and 10000"
        );
        ensure!(self.max_requests > 0, "--max-requests must be more than 0");
        check_range("--csr-pool", self.csr_pool, 1..=100_000)
    }
}

/// The RPC being measured.
#[derive(Debug, Clone, Copy)]
enum Op {
    FetchJwt,
    RenewX509,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::FetchJwt => "FetchJwt",
            Op::RenewX509 => "RenewX509",
        }
    }
}

/// A CSR and the private key (PKCS#8 DER) it was made with.
#[derive(Debug)]
struct Csr {
    der: Vec<u8>,
    key: Vec<u8>,
}

impl Csr {
    /// Owned copies, as `renew_with_csr` takes them.
    fn parts(&self) -> (Vec<u8>, PrivatePkcs8KeyDer<'static>) {
        (self.der.clone(), PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// What one case measured.
#[derive(Debug)]
struct CaseResult {
    op: Op,
    in_flight: usize,
    ok: u64,
    errors: u64,
    elapsed: Duration,
    p50: Option<Duration>,
    p99: Option<Duration>,
    first_error: Option<String>,
}

/// What one of the concurrent callers saw.
#[derive(Debug, Default)]
struct CallerResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Limits shared by the callers of one case.
#[derive(Debug)]
struct Budget {
    started: AtomicU64,
    max: u64,
    deadline: Instant,
}

impl Budget {
    /// Whether another call may start.
    fn take(&self) -> bool {
        Instant::now() < self.deadline && self.started.fetch_add(1, Ordering::Relaxed) < self.max
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;

    let client_rt = runtime("loadgen")?;
    let broker = InProcessBroker::start()?;
    let results = broker.run_client(client_rt, "load generator", move |endpoint| async move {
        run(&args, &endpoint).await
    });
    // Printed before the broker stops, so its "stopped cleanly" comes last.
    let printed = results.and_then(|r| print_results(&r));
    broker.stop(printed)
}

/// The client side: registers and attests a workload, then runs every case
/// on its connection.
async fn run(args: &Args, endpoint: &Endpoint) -> Result<Vec<CaseResult>> {
    let token = register(endpoint).await?;

    let client = Client::connect(&endpoint.url, &endpoint.bundle)
        .await
        .context("connecting the workload client")?;
    let attested = client
        .attest(&Evidence::JoinToken(token), &[])
        .await
        .context("attesting with the join token")?;
    let workload = client
        .authenticated(&attested.svid)
        .await
        .context("connecting with the SVID")?;

    eprintln!("generating {} P-256 keys and CSRs", args.csr_pool);
    let csrs: Arc<[Csr]> = (0..args.csr_pool)
        .map(|_| new_csr())
        .collect::<Result<Vec<_>>>()?
        .into();

    // One call of each kind first, so a broken setup fails with its reason
    // instead of a table full of errors.
    workload
        .fetch_jwt(&JwtRequest::audience(AUDIENCE))
        .await
        .context("first FetchJwt")?;
    let (csr, key) = csrs[0].parts();
    workload
        .renew_with_csr(csr, key)
        .await
        .context("first RenewX509")?;

    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let mut results = Vec::new();
    for op in [Op::FetchJwt, Op::RenewX509] {
        for &in_flight in &args.concurrency {
            if !warmup.is_zero() {
                eprintln!("{} x{in_flight}: warming up for {warmup:?}", op.name());
                case(op, in_flight, warmup, args.max_requests, &workload, &csrs).await?;
            }
            eprintln!("{} x{in_flight}: measuring for {duration:?}", op.name());
            results.push(case(op, in_flight, duration, args.max_requests, &workload, &csrs).await?);
        }
    }
    Ok(results)
}

/// Registers the benchmark identity and returns a join token for it, as an
/// operator would with `credbroker identity create` and `token create`.
async fn register(endpoint: &Endpoint) -> Result<String> {
    let mut admin = admin_client(endpoint).await?;
    create_identity(
        &mut admin,
        NewIdentity {
            name: IDENTITY,
            owner: "loadgen",
            purpose: "issuance benchmark",
            audiences: &[AUDIENCE],
            scopes: &[SCOPE],
        },
    )
    .await?;
    join_token(&mut admin, IDENTITY, 1).await
}

/// A fresh P-256 key and a CSR for it, as the SDK's `renew()` makes them.
fn new_csr() -> Result<Csr> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok(Csr {
        der: csr.der().to_vec(),
        key: key.serialize_der(),
    })
}

/// Runs `in_flight` callers of `op` until `duration` has passed or
/// `max_requests` calls have started.
async fn case(
    op: Op,
    in_flight: usize,
    duration: Duration,
    max_requests: u64,
    workload: &WorkloadClient,
    csrs: &Arc<[Csr]>,
) -> Result<CaseResult> {
    let start = Instant::now();
    let budget = Arc::new(Budget {
        started: AtomicU64::new(0),
        max: max_requests,
        deadline: start + duration,
    });
    let callers: Vec<_> = (0..in_flight)
        .map(|i| {
            tokio::spawn(caller(
                op,
                i,
                workload.clone(),
                Arc::clone(csrs),
                Arc::clone(&budget),
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for handle in callers {
        let seen = handle.await.context("a caller task panicked")?;
        latencies.extend(seen.latencies);
        errors += seen.errors;
        first_error = first_error.or(seen.first_error);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(CaseResult {
        op,
        in_flight,
        ok: latencies.len() as u64,
        errors,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        first_error,
    })
}

/// One caller: one call at a time, back to back, while the budget allows.
async fn caller(
    op: Op,
    index: usize,
    workload: WorkloadClient,
    csrs: Arc<[Csr]>,
    budget: Arc<Budget>,
) -> CallerResult {
    let jwt_request = JwtRequest::audience(AUDIENCE);
    let mut seen = CallerResult::default();
    let mut next_csr = index;
    while budget.take() {
        // Prepared before the clock starts.
        let csr = match op {
            Op::FetchJwt => None,
            Op::RenewX509 => {
                next_csr = (next_csr + 1) % csrs.len();
                Some(csrs[next_csr].parts())
            }
        };
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
            match csr {
                None => workload.fetch_jwt(&jwt_request).await.map(drop),
                Some((csr, key)) => workload.renew_with_csr(csr, key).await.map(drop),
            }
        })
        .await;
        let latency = t0.elapsed();
        let error = match outcome {
            Ok(Ok(())) => {
                seen.latencies.push(latency);
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        };
        seen.errors += 1;
        seen.first_error.get_or_insert(error);
    }
    seen
}

fn print_results(results: &[CaseResult]) -> Result<()> {
    println!(
        "credbroker issuance, broker on 1 runtime worker thread, client on 1, host has {} CPUs",
        cpus()
    );
    println!(
        "one mTLS HTTP/2 connection; RenewX509 CSRs pre-generated (P-256), key generation not timed"
    );
    println!("latency of successful calls; req/s counts successful calls only");
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>7}",
        "rpc", "in-flight", "calls", "req/s", "p50 ms", "p99 ms", "errors"
    );
    for r in results {
        println!(
            "{:<10} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>7}",
            r.op.name(),
            r.in_flight,
            r.ok + r.errors,
            r.ok as f64 / r.elapsed.as_secs_f64(),
            millis(r.p50),
            millis(r.p99),
            r.errors
        );
    }
    let mut failed = false;
    for r in results {
        if let Some(e) = &r.first_error {
            failed = true;
            println!("{} x{} first error: {e}", r.op.name(), r.in_flight);
        }
    }
    if failed {
        bail!("some calls failed");
    }
    Ok(())
}
