//! Registering a fleet through the Admin API, resumably: registering a
//! million identities takes a while (each is its own durable commit), so a
//! second run skips every node whose workloads are all there already.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{CreateIdentityRequest, IdentityRef, Selector};
use tonic::Code;
use tonic::transport::Channel;

use super::{AUDIENCE, Fleet};
use crate::broker::{Admin, ENV, OWNER};

/// Lifetimes the fleet's workloads are registered with.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// JWT-SVID lifetime.
    pub jwt: Duration,
    /// X.509-SVID lifetime.
    pub x509: Duration,
}

/// What registering did.
#[derive(Debug, Clone, Copy)]
pub struct Registered {
    /// Identities created by this run.
    pub created: u64,
    /// Nodes found complete from an earlier run.
    pub nodes_skipped: u32,
    /// How long it took.
    pub took: Duration,
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Creates `request`; one that exists already (an earlier, interrupted run)
/// counts as done. Returns whether it was created now.
async fn create(grpc: &mut AdminClient<Channel>, request: CreateIdentityRequest) -> Result<bool> {
    let name = request.name.clone();
    match grpc.create_identity(request).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::AlreadyExists => Ok(false),
        Err(status) => Err(status).with_context(|| format!("CreateIdentity {ENV}/{name}")),
    }
}

async fn exists(grpc: &mut AdminClient<Channel>, name: String) -> Result<bool> {
    let lookup = IdentityRef {
        env: ENV.into(),
        name: name.clone(),
    };
    match grpc.get_identity(lookup).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(status).with_context(|| format!("GetIdentity {ENV}/{name}")),
    }
}

/// Registers node `n` and its workloads in order, so that its last workload
/// existing means the whole node does.
async fn register_node(
    grpc: &mut AdminClient<Channel>,
    fleet: Fleet,
    lifetimes: Lifetimes,
    n: u32,
    created: &AtomicU64,
) -> Result<bool> {
    if exists(grpc, Fleet::workload_name(n, fleet.per_node - 1)).await? {
        return Ok(false);
    }
    let node = Fleet::node_name(n);
    let node_request = CreateIdentityRequest {
        env: ENV.into(),
        name: node.clone(),
        owner: OWNER.into(),
        purpose: "scale_bench: a host running a node agent".into(),
        ..Default::default()
    };
    if create(grpc, node_request).await? {
        created.fetch_add(1, Ordering::Relaxed);
    }
    for w in 0..fleet.per_node {
        let request = CreateIdentityRequest {
            env: ENV.into(),
            name: Fleet::workload_name(n, w),
            owner: OWNER.into(),
            purpose: "scale_bench: a workload served by its node's agent".into(),
            selectors: vec![Selector {
                key: "unix:uid".into(),
                value: Fleet::workload_uid(w).to_string(),
            }],
            audiences: vec![AUDIENCE.into()],
            jwt_ttl_seconds: seconds(lifetimes.jwt),
            x509_ttl_seconds: seconds(lifetimes.x509),
            parent: format!("{ENV}/{node}"),
            ..Default::default()
        };
        if create(grpc, request).await? {
            created.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(true)
}

/// Registers every node of `fleet` and its workloads with `in_flight`
/// nodes at a time, printing progress every ten seconds.
pub async fn register(
    admin: &Admin,
    fleet: Fleet,
    lifetimes: Lifetimes,
    in_flight: usize,
) -> Result<Registered> {
    let began = Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let skipped = Arc::new(AtomicU32::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let mut grpc = admin.grpc_clone();
        let (next, created, skipped) = (next.clone(), created.clone(), skipped.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= fleet.nodes {
                    return Ok::<_, anyhow::Error>(());
                }
                if !register_node(&mut grpc, fleet, lifetimes, n, &created).await? {
                    skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    loop {
        tokio::select! {
            done = workers.join_next() => match done {
                Some(result) => result.context("a registering task panicked")??,
                None => break,
            },
            _ = progress.tick() => {
                let so_far = created.load(Ordering::Relaxed);
                println!(
                    "  {so_far} identities registered ({:.0}/s)",
                    so_far as f64 / began.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(Registered {
        created: created.load(Ordering::Relaxed),
        nodes_skipped: skipped.load(Ordering::Relaxed),
        took: began.elapsed(),
    })
}
