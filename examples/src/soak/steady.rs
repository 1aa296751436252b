//! Steady issuance for a fixed time while the broker's resident memory and
//! open descriptors are sampled every second: after a warm-up neither may
//! keep growing, and no call may fail.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use super::process::{AUDIENCE, BrokerProcess};
use super::{Checks, ms};
use crate::load::{Rpc, Stop, csr_pool, run_case};

/// Most RSS may grow between the end of the first fifth and the end, KiB.
const RSS_GROWTH_BOUND_KB: u64 = 48 * 1024;
/// Most descriptors may grow over the run.
const FD_GROWTH_BOUND: usize = 16;

/// One sample: seconds since the start, RSS KiB, open descriptors.
type Sample = (u64, u64, usize);

/// Drives FetchJwt and RenewX509 alternately for `duration` in total with
/// `in_flight` calls.
pub async fn run(
    broker: &mut BrokerProcess,
    duration: Duration,
    in_flight: usize,
) -> Result<Checks> {
    let mut checks = Checks::default();
    let mut admin = broker.admin().await?;
    let sessions = vec![broker.session(&mut admin).await?];
    let csrs = csr_pool(256)?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let pid = broker.pid();
    let pid_dir = format!("/proc/{pid}");
    let sampler = {
        let samples = Arc::clone(&samples);
        tokio::spawn(async move {
            let mut procfs = crate::procfs::ProcFiles::open(pid);
            for second in 0u64.. {
                let rss = procfs.as_mut().and_then(|p| p.memory_kb().0).unwrap_or(0);
                let fds = std::fs::read_dir(format!("{pid_dir}/fd"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                if let Ok(mut s) = samples.lock() {
                    s.push((second, rss, fds));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let half = duration / 2;
    let mut issued = 0;
    let mut errors = 0;
    let mut first_error = None;
    for (rpc, span) in [(Rpc::FetchJwt, half), (Rpc::RenewX509, duration - half)] {
        let out = run_case(
            &sessions,
            rpc,
            in_flight,
            Stop::After(span),
            &csrs,
            AUDIENCE,
            None,
        )
        .await?;
        let p99 = out
            .latencies
            .get(out.latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default();
        checks.note(
            &format!("{}: credentials/s", rpc.name()),
            format!("{:.0}", out.rate()),
        );
        checks.note(&format!("{}: p99 latency", rpc.name()), ms(p99));
        issued += out.issued;
        errors += out.errors;
        first_error = first_error.or(out.first_error);
    }
    sampler.abort();
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    checks.note("credentials issued", issued);
    checks.check(
        "failed calls",
        match &first_error {
            Some(e) => format!("{errors} (first: {e})"),
            None => errors.to_string(),
        },
        "0",
        errors == 0,
    );
    let warm = samples.get(samples.len() / 5).copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    let peak_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let (min_fd, max_fd) = (
        samples.iter().map(|s| s.2).min().unwrap_or(0),
        samples.iter().map(|s| s.2).max().unwrap_or(0),
    );
    checks.note("RSS samples (1/s)", samples.len());
    checks.note(
        "RSS after warm-up / at the end / peak",
        format!("{} / {} / {} KiB", warm.1, last.1, peak_rss),
    );
    let growth = last.1.saturating_sub(warm.1);
    checks.check(
        "RSS growth after warm-up",
        format!("{growth} KiB"),
        format!("<= {RSS_GROWTH_BOUND_KB} KiB"),
        growth <= RSS_GROWTH_BOUND_KB,
    );
    checks.check(
        "open descriptors (min..max)",
        format!("{min_fd}..{max_fd}"),
        format!("max - min <= {FD_GROWTH_BOUND}"),
        max_fd - min_fd <= FD_GROWTH_BOUND,
    );
    let alive = broker.alive();
    checks.check("broker still running", alive, "true", alive);
    Ok(checks)
}
