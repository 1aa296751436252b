//! Revocation benchmark: how fast a revocation reaches the workloads that
//! watch for it, and what a revocation check costs on the verification path.
//!
//! It measures two things and prints a table for each.
//!
//! 1. **Propagation to 1,000 subscribers.** A real broker starts in this
//!    process (SQLite store in a temporary directory, gRPC over TLS on
//!    `127.0.0.1:0`) on its own Tokio runtime with a single worker thread, to
//!    stand for one server core. Through the Admin API with the admin client
//!    certificate it registers an identity `watcher` and attests it a few
//!    times with a multi-use join token (one X.509-SVID per connection). The
//!    SDK then opens `--subscribers` `WatchRevocations` streams spread over
//!    `--connections` mutually authenticated HTTP/2 connections (1,000 over
//!    10 by default, so no connection comes near the HTTP/2 limit on
//!    concurrent streams). A second identity, `target` (audience `bench`),
//!    attests once and fetches one JWT per revocation. After one unmeasured
//!    warm-up revocation that every stream must deliver, the JWTs are revoked
//!    by `jti` one at a time through `Admin.Revoke`, `--interval-ms` apart.
//!    For every (revocation, subscriber) pair it takes the time from just
//!    before the Revoke call was sent until that subscriber's stream yielded
//!    the event with that revocation's `seq`, and prints p50, p99 and max of
//!    those, the same for the slowest subscriber of each revocation (when the
//!    last one had it), the Revoke RPC latency (which includes the durable
//!    write), and how many events were missed, duplicated or out of order.
//!
//! 2. **`RevocationList::covers` with 100,000 entries.** Using the library
//!    directly, it loads `--entries` revoked `jti`s plus a few identity,
//!    environment and owner entries, then times `--checks` calls of
//!    `covers()` per case, on this thread: a JWT that is not revoked (a miss,
//!    which looks in every index), a revoked `jti` (a hit in the first
//!    index), a JWT of a revoked identity (a hit in the identity index), and
//!    an alternating mix of misses and `jti` hits. It prints nanoseconds per
//!    check.
//!
//! Every wait is bounded (connects, RPCs, stream openings, event delivery,
//! broker shutdown), so the program always ends by itself.
//!
//! Run it in release mode:
//!
//! ```text
//! cargo run --release -p credbroker-examples --example revocation_bench
//! cargo run --release -p credbroker-examples --example revocation_bench -- --subscribers 2000 --connections 20
//! ```
//!
//! Broker and subscribers share the machine (the subscribers run on a second
//! single-threaded runtime), so the figures depend on it: core count and
//! speed, other load, CPU frequency scaling, disk sync latency for the
//! durable Revoke. In a deployment the subscribers sit on other machines and
//! add network latency, but they do not compete with the broker for CPU.
//! Compare figures only between runs on the same machine. No `tracing`
//! subscriber is installed, so the broker's audit events cost nothing beyond
//! their durable record.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use credbroker::model::{EnvName, IdentityKey, IdentityName};
use credbroker::revocation::{CredentialFacts, Revocation, RevocationList, Target};
use credbroker_client::{Client, Evidence, JwtRequest, X509Svid};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{RevokeRequest, revoke_request};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use support::{
    CALL_TIMEOUT, ENV, Endpoint, InProcessBroker, NewIdentity, admin_client, check_range, cpus,
    create_identity, join_token, millis, percentile, runtime,
};

/// Identity whose SVIDs open the revocation streams.
const WATCHER: &str = "watcher";
/// Identity whose JWTs are revoked.
const TARGET: &str = "target";
/// Audience the target identity may ask for.
const AUDIENCE: &str = "bench";
/// Longest every subscriber may take to deliver the warm-up revocation.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest subscribers may take, after the last Revoke returned, to deliver
/// what they have not delivered yet.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Revocation benchmark for credbroker (see the file's documentation).
#[derive(Debug, Parser)]
#[command(name = "revocation_bench")]
struct Args {
    /// WatchRevocations streams open while revoking.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// mTLS connections the streams are spread over (each with its own SVID).
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Measured revocations (one JWT each).
    #[arg(long, default_value_t = 50)]
    revocations: usize,
    /// Milliseconds between the starts of consecutive Revoke calls.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Revoked jti entries in the list for the covers() benchmark.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// covers() calls timed per case.
    #[arg(long, default_value_t = 2_000_000)]
    checks: u64,
}

impl Args {
    fn check(&self) -> Result<()> {
        check_range("--connections", self.connections, 1..=100)?;
        check_range("--subscribers", self.subscribers, 1..=20_000)?;
        ensure!(
            self.subscribers.div_ceil(self.connections) <= 100,
            "at most 100 streams per connection: raise --connections"
        );
        check_range("--revocations", self.revocations, 1..=999)?;
        ensure!(
            self.interval_ms <= 10_000,
            "--interval-ms must be at most 10000"
        );
        check_range("--entries", self.entries, 1..=10_000_000)?;
        check_range("--checks", self.checks, 1..=1_000_000_000)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.check()?;
    println!(
        "credbroker revocation benchmark, host has {} CPUs; figures depend on the machine",
        cpus()
    );
    println!();

    let propagation = propagation_bench(&args);
    match &propagation {
        Ok(p) => print_propagation(&args, p),
        Err(e) => println!("1. propagation benchmark failed: {e:#}\n"),
    }
    let covers = covers_bench(&args)?;
    print_covers(&args, &covers);

    let p = propagation?;
    if p.missed > 0 || p.revoke_errors > 0 || p.stream_problems > 0 || p.wrong_events > 0 {
        bail!("some events were missed or calls failed (see above)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 1. Propagation
// ---------------------------------------------------------------------------

/// What the propagation benchmark measured.
#[derive(Debug, Default)]
struct Propagation {
    /// Time from sending Revoke until a subscriber had the event, sorted.
    delivery: Vec<Duration>,
    /// Per revocation, the time until the last subscriber had it, sorted.
    last_subscriber: Vec<Duration>,
    /// Revoke RPC latencies of successful calls, sorted.
    revoke_rpc: Vec<Duration>,
    /// Successful measured revocations.
    revoked: usize,
    revoke_errors: usize,
    first_revoke_error: Option<String>,
    /// (revocation, subscriber) pairs never delivered.
    missed: usize,
    /// Events delivered twice, out of order, or not matching what was revoked.
    duplicates: usize,
    out_of_order: usize,
    wrong_events: usize,
    /// Streams that ended, failed or timed out before the last revocation.
    stream_problems: usize,
    first_stream_problem: Option<String>,
    /// Time to open all streams.
    open_time: Duration,
}

/// Runs the propagation benchmark against a broker started for it, and
/// stops the broker afterwards.
fn propagation_bench(args: &Args) -> Result<Propagation> {
    let client_rt = runtime("subscribers")?;
    let broker = InProcessBroker::start()?;
    let plan = SubscriberPlan {
        subscribers: args.subscribers,
        connections: args.connections,
        revocations: args.revocations,
        interval: Duration::from_millis(args.interval_ms),
    };
    let result = broker.run_client(client_rt, "benchmark", move |endpoint| async move {
        run(plan, &endpoint).await
    });
    broker.stop(result)
}

/// The shape of the propagation run.
#[derive(Debug, Clone, Copy)]
struct SubscriberPlan {
    subscribers: usize,
    connections: usize,
    revocations: usize,
    interval: Duration,
}

/// Told to every subscriber once the last revocation is known: its `seq`
/// and by when it must have arrived.
type Finish = Option<(i64, tokio::time::Instant)>;

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// `(seq, kind, value, when received)` in arrival order.
    events: Vec<(i64, String, String, Instant)>,
    /// Why the stream stopped early, if it did.
    problem: Option<String>,
}

/// The client side of the propagation benchmark: registers the identities,
/// opens the streams, revokes, and tallies what the subscribers saw.
async fn run(plan: SubscriberPlan, endpoint: &Endpoint) -> Result<Propagation> {
    let mut admin = admin_client(endpoint).await?;

    let identities: [(&str, &[&str]); 2] = [(WATCHER, &[]), (TARGET, &[AUDIENCE])];
    for (name, audiences) in identities {
        create_identity(
            &mut admin,
            NewIdentity {
                name,
                owner: "revocation-bench",
                purpose: "revocation benchmark",
                audiences,
                scopes: &[],
            },
        )
        .await?;
    }
    let watcher_token = join_token(&mut admin, WATCHER, plan.connections as u32).await?;
    let target_token = join_token(&mut admin, TARGET, 1).await?;

    let client = within(
        "connecting the workload client",
        Client::connect(&endpoint.url, &endpoint.bundle),
    )
    .await?;

    // One SVID per subscriber connection.
    let mut watcher_svids: Vec<X509Svid> = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let attested = within(
            "attesting the watcher",
            client.attest(&Evidence::JoinToken(watcher_token.clone()), &[]),
        )
        .await?;
        watcher_svids.push(attested.svid);
    }

    // The JWTs to revoke: one for warm-up, one per measured revocation.
    let target = within(
        "attesting the target",
        client.attest(&Evidence::JoinToken(target_token), &[]),
    )
    .await?;
    let target = within(
        "connecting with the target's SVID",
        client.authenticated(&target.svid),
    )
    .await?;
    let request = JwtRequest::audience(AUDIENCE);
    let mut jtis = Vec::with_capacity(plan.revocations + 1);
    for _ in 0..=plan.revocations {
        jtis.push(within("FetchJwt", target.fetch_jwt(&request)).await?.jti);
    }
    drop(target);

    // Open the streams, round-robin over the connections.
    eprintln!(
        "opening {} WatchRevocations streams over {} connections",
        plan.subscribers, plan.connections
    );
    let opened = Instant::now();
    let mut connections = Vec::with_capacity(plan.connections);
    for svid in &watcher_svids {
        connections
            .push(within("connecting with a watcher SVID", client.authenticated(svid)).await?);
    }
    let (finish_tx, finish_rx) = watch::channel::<Finish>(None);
    let (first_tx, mut first_rx) = mpsc::channel::<()>(plan.subscribers);
    let hard_deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut subscribers: Vec<JoinHandle<Seen>> = Vec::with_capacity(plan.subscribers);
    for i in 0..plan.subscribers {
        let stream = within(
            "opening a WatchRevocations stream",
            connections[i % plan.connections].watch_revocations(0),
        )
        .await?;
        subscribers.push(tokio::spawn(subscriber(
            stream,
            finish_rx.clone(),
            first_tx.clone(),
            hard_deadline,
        )));
    }
    drop(first_tx);
    let open_time = opened.elapsed();

    // Warm-up: every stream must deliver one revocation before measuring.
    eprintln!("warm-up revocation");
    within("warm-up Revoke", revoke(&mut admin, &jtis[0])).await?;
    let warm = tokio::time::timeout(WARMUP_TIMEOUT, async {
        let mut n = 0;
        while n < plan.subscribers && first_rx.recv().await.is_some() {
            n += 1;
        }
        n
    })
    .await;
    match warm {
        Ok(n) if n == plan.subscribers => {}
        Ok(n) => bail!(
            "only {n} of {} streams delivered the warm-up revocation (others ended)",
            plan.subscribers
        ),
        Err(_) => bail!(
            "not every stream delivered the warm-up revocation within {}s",
            WARMUP_TIMEOUT.as_secs()
        ),
    }

    // Measured revocations.
    eprintln!(
        "revoking {} JWTs, {:?} apart",
        plan.revocations, plan.interval
    );
    let mut out = Propagation {
        open_time,
        ..Propagation::default()
    };
    // seq -> (jti, when the Revoke call was sent)
    let mut sent: HashMap<i64, (String, Instant)> = HashMap::new();
    let mut last_seq = 0;
    let mut ticks = tokio::time::interval(plan.interval.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for jti in &jtis[1..] {
        ticks.tick().await;
        let t0 = Instant::now();
        let outcome = tokio::time::timeout(CALL_TIMEOUT, revoke(&mut admin, jti)).await;
        let rpc = t0.elapsed();
        let error = match outcome {
            Ok(Ok(seq)) => {
                out.revoke_rpc.push(rpc);
                if sent.insert(seq, (jti.clone(), t0)).is_some() {
                    format!("two revocations got seq {seq}")
                } else {
                    last_seq = last_seq.max(seq);
                    continue;
                }
            }
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        };
        out.revoke_errors += 1;
        out.first_revoke_error.get_or_insert(error);
    }
    out.revoked = sent.len();

    // Let every subscriber drain up to the last seq, then collect.
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    let _ = finish_tx.send(Some((last_seq, drain_deadline)));
    let mut seen = Vec::with_capacity(subscribers.len());
    for handle in subscribers {
        // Each subscriber stops by the drain deadline; the margin is only
        // for a task that cannot be polled.
        let collected =
            tokio::time::timeout_at(drain_deadline + Duration::from_secs(5), handle).await;
        match collected {
            Ok(Ok(s)) => seen.push(s),
            Ok(Err(e)) => bail!("a subscriber task panicked: {e}"),
            Err(_) => bail!("a subscriber did not stop after its deadline"),
        }
    }
    drop(connections);

    tally(&mut out, &sent, last_seq, &seen);
    Ok(out)
}

/// Sorts what the subscribers saw against what was revoked.
fn tally(
    out: &mut Propagation,
    sent: &HashMap<i64, (String, Instant)>,
    last_seq: i64,
    seen: &[Seen],
) {
    let mut slowest: HashMap<i64, Duration> = HashMap::new();
    for s in seen {
        let mut prev = 0;
        let mut got: HashMap<i64, Instant> = HashMap::new();
        for (seq, kind, value, at) in &s.events {
            if *seq < prev {
                out.out_of_order += 1;
            }
            prev = prev.max(*seq);
            let Some((jti, t0)) = sent.get(seq) else {
                // The warm-up revocation, or a failed Revoke that still
                // committed; not measured.
                continue;
            };
            if kind != "jti" || value != jti {
                out.wrong_events += 1;
                continue;
            }
            if got.insert(*seq, *at).is_some() {
                out.duplicates += 1;
                continue;
            }
            let latency = at.saturating_duration_since(*t0);
            out.delivery.push(latency);
            let slot = slowest.entry(*seq).or_default();
            *slot = (*slot).max(latency);
        }
        out.missed += sent.keys().filter(|seq| !got.contains_key(seq)).count();
        let reached_end = prev >= last_seq;
        if let Some(p) = &s.problem
            && !reached_end
        {
            out.stream_problems += 1;
            out.first_stream_problem.get_or_insert_with(|| p.clone());
        }
    }
    // A revocation that some subscriber missed has no "last subscriber" time.
    let missed_by_someone = |seq: &i64| {
        seen.iter()
            .any(|s| !s.events.iter().any(|(q, ..)| q == seq))
    };
    out.last_subscriber = slowest
        .into_iter()
        .filter(|(seq, _)| !missed_by_someone(seq))
        .map(|(_, d)| d)
        .collect();
    out.delivery.sort_unstable();
    out.last_subscriber.sort_unstable();
    out.revoke_rpc.sort_unstable();
}

/// One subscriber: records every event until it has the last revocation,
/// the stream ends, or its deadline passes.
async fn subscriber(
    mut stream: tonic::Streaming<credbroker_proto::v1::Revocation>,
    mut finish: watch::Receiver<Finish>,
    first: mpsc::Sender<()>,
    hard_deadline: tokio::time::Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut first = Some(first);
    loop {
        let finished = *finish.borrow_and_update();
        let deadline = match finished {
            Some((last, _)) if seen.events.last().is_some_and(|e| e.0 >= last) => return seen,
            Some((_, by)) => by.min(hard_deadline),
            None => hard_deadline,
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(rev)) => {
                    seen.events.push((rev.seq, rev.kind, rev.value, Instant::now()));
                    if let Some(tx) = first.take() {
                        let _ = tx.try_send(());
                    }
                }
                Ok(None) => {
                    seen.problem = Some("the stream ended".into());
                    return seen;
                }
                Err(status) => {
                    seen.problem = Some(format!("stream error: {status}"));
                    return seen;
                }
            },
            changed = finish.changed() => {
                if changed.is_err() {
                    seen.problem = Some("the benchmark stopped waiting".into());
                    return seen;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                seen.problem = Some(if finished.is_some() {
                    format!(
                        "the last revocation had not arrived {}s after it was made",
                        DRAIN_TIMEOUT.as_secs()
                    )
                } else {
                    "the benchmark's hard deadline passed".into()
                });
                return seen;
            }
        }
    }
}

/// Runs `fut` with [`CALL_TIMEOUT`], naming it in errors.
async fn within<T, E>(what: &str, fut: impl Future<Output = Result<T, E>>) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(r) => r.with_context(|| what.to_owned()),
        Err(_) => bail!("{what}: no answer within {}s", CALL_TIMEOUT.as_secs()),
    }
}

/// Revokes one JWT; returns the revocation's `seq`.
async fn revoke(admin: &mut AdminClient<Channel>, jti: &str) -> Result<i64, tonic::Status> {
    let rev = admin
        .revoke(RevokeRequest {
            target: Some(revoke_request::Target::Jti(jti.to_owned())),
            reason: "revocation benchmark".into(),
        })
        .await?
        .into_inner();
    Ok(rev.seq)
}

fn print_propagation(args: &Args, p: &Propagation) {
    println!(
        "1. revocation propagation: {} WatchRevocations streams over {} mTLS connections \
         (opened in {:.0} ms)",
        args.subscribers,
        args.connections,
        p.open_time.as_secs_f64() * 1e3
    );
    println!(
        "   {} jti revocations, {} ms apart; broker on 1 runtime worker thread, subscribers on 1",
        args.revocations, args.interval_ms
    );
    println!("   latency from just before Revoke was sent");
    println!();
    println!(
        "{:<40} {:>8} {:>9} {:>9} {:>9}",
        "", "samples", "p50 ms", "p99 ms", "max ms"
    );
    let row = |name: &str, v: &[Duration]| {
        println!(
            "{:<40} {:>8} {:>9} {:>9} {:>9}",
            name,
            v.len(),
            millis(percentile(v, 0.50)),
            millis(percentile(v, 0.99)),
            millis(v.last().copied())
        );
    };
    row("Revoke RPC (durable, admin call)", &p.revoke_rpc);
    row("event at a subscriber (rev x sub)", &p.delivery);
    row("event at the last subscriber (per rev)", &p.last_subscriber);
    println!();
    println!(
        "missed events: {} of {}   duplicates: {}   out of order: {}   wrong content: {}",
        p.missed,
        p.revoked * args.subscribers,
        p.duplicates,
        p.out_of_order,
        p.wrong_events
    );
    println!(
        "revoke errors: {}   streams that stopped early: {}",
        p.revoke_errors, p.stream_problems
    );
    if let Some(e) = &p.first_revoke_error {
        println!("first revoke error: {e}");
    }
    if let Some(e) = &p.first_stream_problem {
        println!("first stream problem: {e}");
    }
    println!();
}

// ---------------------------------------------------------------------------
// 2. covers()
// ---------------------------------------------------------------------------

/// One timed case of the covers() benchmark.
#[derive(Debug)]
struct CoversCase {
    name: &'static str,
    checks: u64,
    elapsed: Duration,
    /// How many checks found a revocation (a sanity check of the case).
    covered: u64,
}

/// What the covers() benchmark measured.
#[derive(Debug)]
struct Covers {
    jti_entries: usize,
    group_entries: usize,
    build: Duration,
    cases: Vec<CoversCase>,
}

/// splitmix64: a small, fast, deterministic mixer for made-up jtis.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A made-up jti: 32 hex digits, as random-looking as the broker's.
fn fake_jti(n: u64) -> String {
    format!(
        "{:016x}{:016x}",
        splitmix64(n),
        splitmix64(n ^ 0x5555_5555_5555_5555)
    )
}

fn identity_key(env: &str, name: &str) -> Result<IdentityKey> {
    Ok(IdentityKey {
        env: EnvName::new(env).with_context(|| format!("environment {env}"))?,
        name: IdentityName::new(name).with_context(|| format!("identity {name}"))?,
    })
}

fn covers_bench(args: &Args) -> Result<Covers> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?
        .as_secs() as i64;
    let hour = 3600;
    // `identities`: for owner entries, the owner's identities (`env/name`).
    let entry = |seq: i64, target: Target, revoked_at: i64, identities: Vec<String>| Revocation {
        seq,
        target,
        reason: "benchmark".into(),
        operator: "admin".into(),
        revoked_at,
        covers_until: now + hour,
        identities,
    };

    let started = Instant::now();
    let list = RevocationList::default();
    let entries = args.entries as u64;
    list.load((0..entries).map(|i| entry(i as i64 + 1, Target::Jti(fake_jti(i)), now, Vec::new())));
    // Group entries. The checked credentials' environment and owner were
    // revoked an hour before they were issued, so a miss finds those entries
    // and still has to compare times; `revoked-api` is revoked now.
    let mut seq = entries as i64;
    let mut groups = Vec::new();
    for i in 0..10 {
        groups.push((
            Target::Identity(identity_key(ENV, &format!("retired-{i}"))?),
            now,
            Vec::new(),
        ));
    }
    groups.push((
        Target::Identity(identity_key(ENV, "revoked-api")?),
        now,
        Vec::new(),
    ));
    groups.push((Target::Env(EnvName::new(ENV)?), now - hour, Vec::new()));
    groups.push((Target::Env(EnvName::new("staging")?), now, Vec::new()));
    for i in 0..4 {
        groups.push((
            Target::Owner(format!("team-{i}")),
            now,
            vec![format!("{ENV}/team-{i}-svc")],
        ));
    }
    groups.push((
        Target::Owner("payments".into()),
        now - hour,
        vec![format!("{ENV}/api"), format!("{ENV}/revoked-api")],
    ));
    let group_entries = groups.len();
    list.load(groups.into_iter().map(|(target, at, identities)| {
        seq += 1;
        entry(seq, target, at, identities)
    }));
    let build = started.elapsed();
    ensure!(
        list.len() == args.entries + group_entries,
        "the list holds {} entries, expected {}",
        list.len(),
        args.entries + group_entries
    );

    // Pools cycled through so lookups do not all hit one cache line.
    const POOL: usize = 4096;
    let api = identity_key(ENV, "api")?;
    let revoked_api = identity_key(ENV, "revoked-api")?;
    let hits: Vec<String> = (0..POOL as u64)
        .map(|i| fake_jti(splitmix64(i) % entries))
        .collect();
    let misses: Vec<String> = (0..POOL as u64).map(|i| fake_jti(entries + i)).collect();
    fn facts<'a>(jti: &'a str, identity: &'a IdentityKey, issued_at: i64) -> CredentialFacts<'a> {
        CredentialFacts {
            jti: Some(jti),
            serial: None,
            identity,
            owner: Some("payments"),
            issued_at,
            // Every check a real verification makes, the key included.
            signed_by: Some("bench-kid"),
        }
    }
    let miss_facts: Vec<_> = misses.iter().map(|j| facts(j, &api, now)).collect();
    let hit_facts: Vec<_> = hits.iter().map(|j| facts(j, &api, now)).collect();
    let identity_hit_facts: Vec<_> = misses
        .iter()
        .map(|j| facts(j, &revoked_api, now - 60))
        .collect();
    let mixed_facts: Vec<_> = (0..POOL)
        .map(|i| {
            if i % 2 == 0 {
                miss_facts[i]
            } else {
                hit_facts[i]
            }
        })
        .collect();

    let time = |name: &'static str, pool: &[CredentialFacts<'_>]| {
        // Warm-up, untimed.
        for f in pool.iter().cycle().take(pool.len() * 4) {
            black_box(list.covers(black_box(f)));
        }
        let mut covered = 0u64;
        let t0 = Instant::now();
        for f in pool.iter().cycle().take(args.checks as usize) {
            if black_box(list.covers(black_box(f))).is_some() {
                covered += 1;
            }
        }
        CoversCase {
            name,
            checks: args.checks,
            elapsed: t0.elapsed(),
            covered,
        }
    };
    let cases = vec![
        time("miss (not revoked)", &miss_facts),
        time("hit: revoked jti", &hit_facts),
        time("hit: revoked identity", &identity_hit_facts),
        time("mixed 50% miss / 50% jti hit", &mixed_facts),
    ];
    let expect = [0, args.checks, args.checks, args.checks / 2];
    for (case, want) in cases.iter().zip(expect) {
        ensure!(
            case.covered.abs_diff(want) <= 1,
            "{}: {} of {} checks were covered, expected {want}",
            case.name,
            case.covered,
            case.checks
        );
    }
    Ok(Covers {
        jti_entries: args.entries,
        group_entries,
        build,
        cases,
    })
}

fn print_covers(args: &Args, c: &Covers) {
    println!(
        "2. RevocationList::covers() with {} revoked jtis + {} identity/env/owner entries \
         (loaded in {:.0} ms), 1 thread",
        c.jti_entries,
        c.group_entries,
        c.build.as_secs_f64() * 1e3
    );
    println!(
        "   JWT facts (jti, identity, owner, issued_at), no serial; {} checks per case",
        args.checks
    );
    println!();
    println!(
        "{:<32} {:>11} {:>10} {:>10}",
        "case", "checks", "covered", "ns/check"
    );
    for case in &c.cases {
        println!(
            "{:<32} {:>11} {:>10} {:>10.1}",
            case.name,
            case.checks,
            case.covered,
            case.elapsed.as_nanos() as f64 / case.checks as f64
        );
    }
}
