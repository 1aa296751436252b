//! One node agent as the broker sees it: attested once with a join token,
//! then one mutually authenticated connection carrying its entry stream and
//! every mint for its workloads, each renewed at half its lifetime.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use credbroker_client::node::EntryKey;
use credbroker_client::{Client, Evidence, JwtRequest, RefreshPolicy, WorkloadClient};
use credbroker_proto::v1::{NodeEntriesUpdate, NodeEntry};
use tokio::task::JoinSet;

use super::tally::{Kind, Tally};
use super::{AUDIENCE, Spread};

/// A renewal falls due at this time for this entry, whose credential (if
/// it has one yet) expires at the last instant.
type Due = Reverse<(Instant, usize, Kind, Option<Instant>)>;

/// A finished mint: the entry, what it renewed, when it was due, until
/// when the entry's previous credential was good, and the new one's expiry.
type Minted = (usize, Kind, Instant, Option<Instant>, Result<SystemTime>);

/// One workload as its node agent knows it.
#[derive(Debug)]
struct Workload {
    key: EntryKey,
    jwt_half: Duration,
    x509_half: Duration,
}

impl Workload {
    fn from_entry(entry: &NodeEntry) -> Result<Self> {
        let identity = entry
            .identity
            .as_ref()
            .context("an entry without identity")?;
        Ok(Self {
            key: EntryKey {
                env: identity.env.clone(),
                name: identity.name.clone(),
            },
            jwt_half: Duration::from_secs(u64::from(entry.jwt_ttl_seconds)) / 2,
            x509_half: Duration::from_secs(u64::from(entry.x509_ttl_seconds)) / 2,
        })
    }

    fn half_life(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Jwt => self.jwt_half,
            Kind::X509 => self.x509_half,
        }
    }
}

/// A node attested and following its entries.
pub struct NodeAgent {
    index: u32,
    session: WorkloadClient,
    entries: tonic::Streaming<NodeEntriesUpdate>,
    workloads: Vec<Workload>,
}

impl NodeAgent {
    /// Attests node `index` with `join_token` at the broker, opens its
    /// session and entry stream, and takes the first snapshot.
    pub async fn join(
        index: u32,
        url: &str,
        bundle_pem: &[u8],
        join_token: String,
    ) -> Result<Self> {
        let client = Client::connect(url, bundle_pem)
            .await
            .context("connecting to the broker")?;
        let attested = client
            .attest(&Evidence::JoinToken(join_token), &[])
            .await
            .with_context(|| format!("attesting node {index}"))?;
        let session = client.authenticated(&attested.svid).await?;
        drop(client);
        let mut entries = session.watch_node_entries().await?;
        let first = entries
            .message()
            .await
            .with_context(|| format!("node {index}: WatchNodeEntries"))?
            .with_context(|| format!("node {index}: the entry stream ended at once"))?;
        ensure!(
            first.snapshot,
            "node {index}: the first update is not a snapshot"
        );
        let workloads = first
            .upserts
            .iter()
            .map(Workload::from_entry)
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            index,
            session,
            entries,
            workloads,
        })
    }

    /// Workloads in its snapshot.
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    /// The lifetimes of its first workload (JWT, X.509), as the broker
    /// sent them.
    pub fn lifetimes(&self) -> Option<(Duration, Duration)> {
        self.workloads
            .first()
            .map(|w| (w.jwt_half * 2, w.x509_half * 2))
    }

    /// Renews every workload's credentials on schedule until `until`, with
    /// at most `in_flight` mints on the wire, reporting to `tally`.
    pub async fn serve(self, until: Instant, in_flight: usize, tally: Arc<Tally>) {
        let Self {
            index,
            session,
            mut entries,
            workloads,
        } = self;
        let workloads = Arc::new(workloads);
        let now = Instant::now();
        let mut spread = Spread::new(u64::from(index));
        let mut due: BinaryHeap<Due> = BinaryHeap::with_capacity(workloads.len() * 2);
        for (i, w) in workloads.iter().enumerate() {
            for kind in [Kind::Jwt, Kind::X509] {
                let first = w.half_life(kind).mul_f64(spread.next_fraction());
                due.push(Reverse((now + first, i, kind, None)));
            }
        }
        let mut calls: JoinSet<Minted> = JoinSet::new();
        let mut stream_open = true;
        loop {
            let now = Instant::now();
            while calls.len() < in_flight
                && let Some(Reverse((at, i, kind, held_until))) = due.peek().copied()
                && at <= now
            {
                due.pop();
                let (session, workloads) = (session.clone(), Arc::clone(&workloads));
                calls.spawn(async move {
                    let key = &workloads[i].key;
                    let minted = mint(&session, key, kind).await;
                    (i, kind, at, held_until, minted)
                });
            }
            let next_due = due
                .peek()
                .map(|d| d.0.0)
                .filter(|_| calls.len() < in_flight);
            tokio::select! {
                Some(done) = calls.join_next(), if !calls.is_empty() => {
                    let Ok((i, kind, at, held_until, minted)) = done else { continue };
                    let finished = Instant::now();
                    match minted {
                        Ok(expires) => {
                            let lag = finished.saturating_duration_since(at);
                            let lapsed = held_until.is_some_and(|until| finished > until);
                            tally.renewed(kind, lag, lapsed);
                            let left = expires
                                .duration_since(SystemTime::now())
                                .unwrap_or_default();
                            // As the agent does: half of what is left, ±10 %.
                            let renew = RefreshPolicy::default().renew_after(left);
                            due.push(Reverse((finished + renew, i, kind, Some(finished + left))));
                        }
                        Err(e) => {
                            tally.failed(format!("node {index}: {e:#}"));
                            // As an agent would: try again a second later.
                            let retry = finished + Duration::from_secs(1);
                            due.push(Reverse((retry, i, kind, held_until)));
                        }
                    }
                }
                () = sleep_until(next_due) => {}
                update = entries.message(), if stream_open => match update {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        stream_open = false;
                        tally.failed(format!("node {index}: the entry stream ended"));
                    }
                    Err(status) => {
                        stream_open = false;
                        tally.failed(format!("node {index}: the entry stream failed: {status}"));
                    }
                },
                () = tokio::time::sleep_until(until.into()) => return,
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Mints one credential for `key`; returns when it expires.
async fn mint(session: &WorkloadClient, key: &EntryKey, kind: Kind) -> Result<SystemTime> {
    Ok(match kind {
        Kind::Jwt => {
            session
                .mint_workload_jwt(key, &JwtRequest::audience(AUDIENCE))
                .await?
                .expires_at
        }
        Kind::X509 => session.mint_workload_svid(key).await?.0.expires_at,
    })
}
