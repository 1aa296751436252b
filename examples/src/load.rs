//! Driving a running broker with issuing calls from outside its process:
//! a number of calls kept in flight over a number of mutually authenticated
//! connections, for a fixed time or a fixed count, with the latency of every
//! call, the errors, and the broker's CPU time per credential read from
//! `/proc` — what `issue_bench` prints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use credbroker_client::WorkloadClient;
use credbroker_proto::v1::{FetchJwtRequest, JwtRequest, RenewX509Request};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::procfs::{ProcFiles, clock_ticks};

/// Longest one call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The issuing call being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `FetchJwt`: an ES256 JWT-SVID.
    FetchJwt,
    /// `RenewX509`: an X.509-SVID from a CSR (made before the clock starts).
    RenewX509,
}

impl Rpc {
    /// The name printed in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::FetchJwt => "FetchJwt",
            Self::RenewX509 => "RenewX509",
        }
    }
}

/// How a case ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// After this long (after a warm-up of the same shape).
    After(Duration),
    /// After exactly this many calls, no warm-up: for instruction counting.
    Calls(u64),
}

/// What one case measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Calls that issued a credential.
    pub issued: u64,
    /// Calls that failed, and the first failure.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Latency of every successful call, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the measured part.
    pub elapsed: Duration,
    /// The broker's CPU time (user + system) during the measured part.
    pub broker_cpu: Option<Duration>,
}

impl Outcome {
    /// Credentials per second.
    pub fn rate(&self) -> f64 {
        self.issued as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The broker's CPU time per issued credential.
    pub fn cpu_per_credential(&self) -> Option<Duration> {
        let cpu = self.broker_cpu?;
        (self.issued > 0).then(|| cpu / self.issued as u32)
    }
}

/// CSRs (DER) for fresh P-256 keys, made before any clock starts.
pub fn csr_pool(n: usize) -> Result<Arc<Vec<Vec<u8>>>> {
    (0..n)
        .map(|_| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
            Ok(CertificateParams::default()
                .serialize_request(&key)?
                .der()
                .to_vec())
        })
        .collect::<Result<Vec<_>>>()
        .map(Arc::new)
}

async fn one_call(session: &WorkloadClient, rpc: Rpc, csr: &[u8], audience: &str) -> Result<()> {
    let mut grpc = session.grpc();
    let call = async {
        match rpc {
            Rpc::FetchJwt => grpc
                .fetch_jwt(FetchJwtRequest {
                    jwt: Some(JwtRequest {
                        audiences: vec![audience.to_owned()],
                        ..Default::default()
                    }),
                })
                .await
                .map(|_| ()),
            Rpc::RenewX509 => grpc
                .renew_x509(RenewX509Request { csr: csr.to_vec() })
                .await
                .map(|_| ()),
        }
    };
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) => Err(anyhow::anyhow!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// Per-worker tallies.
#[derive(Default)]
struct Tally {
    issued: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<Duration>,
}

/// Keeps `in_flight` calls going, spread over `sessions` (one connection
/// each), until `stop`; `broker` is read before and after.
pub async fn run_case(
    sessions: &[WorkloadClient],
    rpc: Rpc,
    in_flight: usize,
    stop: Stop,
    csrs: &Arc<Vec<Vec<u8>>>,
    audience: &str,
    broker: Option<&mut ProcFiles>,
) -> Result<Outcome> {
    if let Stop::After(duration) = stop {
        // Warm-up: connections, caches and the broker's batching settle.
        let warm = Stop::After(duration.min(Duration::from_secs(2)));
        drive(sessions, rpc, in_flight, warm, csrs, audience).await?;
    }
    let ticks = clock_ticks();
    let mut broker = broker;
    let mut cpu = || broker.as_mut().and_then(|p| p.cpu_ticks());
    let cpu_before = cpu();
    let started = Instant::now();
    let tallies = drive(sessions, rpc, in_flight, stop, csrs, audience).await?;
    let elapsed = started.elapsed();
    let cpu_after = cpu();
    let broker_cpu = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(Duration::from_secs_f64((b - a) as f64 / ticks)),
        _ => None,
    };
    let mut out = Outcome {
        issued: 0,
        errors: 0,
        first_error: None,
        latencies: Vec::new(),
        elapsed,
        broker_cpu,
    };
    for t in tallies {
        out.issued += t.issued;
        out.errors += t.errors;
        out.first_error = out.first_error.or(t.first_error);
        out.latencies.extend(t.latencies);
    }
    out.latencies.sort_unstable();
    Ok(out)
}

async fn drive(
    sessions: &[WorkloadClient],
    rpc: Rpc,
    in_flight: usize,
    stop: Stop,
    csrs: &Arc<Vec<Vec<u8>>>,
    audience: &str,
) -> Result<Vec<Tally>> {
    let deadline = match stop {
        Stop::After(d) => Some(Instant::now() + d),
        Stop::Calls(_) => None,
    };
    let mut workers = Vec::with_capacity(in_flight);
    for w in 0..in_flight {
        let session = sessions[w % sessions.len()].clone();
        let csrs = Arc::clone(csrs);
        let audience = audience.to_owned();
        // Split a fixed count evenly; the first workers take the remainder.
        let quota = match stop {
            Stop::Calls(n) => {
                let n = n as usize;
                Some((n / in_flight + usize::from(w < n % in_flight)) as u64)
            }
            Stop::After(_) => None,
        };
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut i = w;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d)
                    || quota.is_some_and(|q| tally.issued + tally.errors >= q)
                {
                    return tally;
                }
                let csr = &csrs[i % csrs.len()];
                i += in_flight;
                let started = Instant::now();
                match one_call(&session, rpc, csr, &audience).await {
                    Ok(()) => {
                        tally.issued += 1;
                        tally.latencies.push(started.elapsed());
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }));
    }
    let mut tallies = Vec::with_capacity(in_flight);
    for w in workers {
        tallies.push(w.await.context("a load worker panicked")?);
    }
    Ok(tallies)
}
