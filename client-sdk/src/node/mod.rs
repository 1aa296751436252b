//! Node mode: one agent per host serving many workloads.
//!
//! The agent attests the *host* with node evidence and keeps the node's own
//! SVID fresh ([`CredentialSource`]). It follows the broker's stream of the
//! identities parented to this node ([`entries`]), attests each local
//! caller of its Workload API from the socket's peer credentials
//! ([`process`]), and serves it the SVIDs and JWTs of exactly the identities
//! whose `unix:` selectors that caller proves, minted through the node's
//! connection and kept fresh in a bounded cache ([`cache`]). Workload keys
//! are generated here, on the host; only CSRs reach the broker.

mod broker;
pub mod cache;
pub mod entries;
pub mod process;
mod service;

use std::collections::BTreeSet;
use std::sync::Arc;

use credbroker_proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use tokio::sync::watch;

pub use cache::{DEFAULT_MAX_SVIDS, SvidCache, SvidState, WorkloadSvid};
pub use entries::{EntriesState, Entry, EntryKey, EntrySet};
pub use process::{ProcessError, ProcessFacts};
pub use service::NodeWorkloadApi;

use crate::client::Client;
use crate::error::ClientError;
use crate::evidence::Evidence;
use crate::source::{CredentialSource, RefreshPolicy, SourceConfig, SourceError};
use crate::uds::UdsListener;

/// What a node agent needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Broker URL, or several replicas separated by commas (used in
    /// order, failing over as [`Brokers`](crate::Brokers) describes).
    pub broker: String,
    /// PEM bundle trusted for the broker's TLS certificate.
    pub bundle_pem: Vec<u8>,
    /// Evidence for the node identity.
    pub evidence: Evidence,
    /// Refresh timing for the node's and the workloads' SVIDs.
    pub policy: RefreshPolicy,
    /// Workload SVIDs held at most.
    pub max_svids: usize,
}

impl NodeConfig {
    /// A configuration with default timing and cache size.
    pub fn new(broker: impl Into<String>, bundle_pem: Vec<u8>, evidence: Evidence) -> Self {
        Self {
            broker: broker.into(),
            bundle_pem,
            evidence,
            policy: RefreshPolicy::default(),
            max_svids: DEFAULT_MAX_SVIDS,
        }
    }

    /// Sets the refresh timing.
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how many workload SVIDs are held at most.
    pub fn max_svids(mut self, max: usize) -> Self {
        self.max_svids = max;
        self
    }
}

/// A running node agent. Dropping it stops its background tasks.
#[derive(Debug)]
pub struct NodeAgent {
    source: CredentialSource,
    entries: watch::Receiver<Arc<EntrySet>>,
    cache: Arc<SvidCache>,
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl NodeAgent {
    /// Attests the node and starts following its entries; waits for the
    /// node's first SVID.
    pub async fn start(config: NodeConfig) -> Result<Self, ClientError> {
        let source = CredentialSource::start(SourceConfig {
            broker: config.broker.clone(),
            bundle_pem: config.bundle_pem.clone(),
            evidence: config.evidence.clone(),
            jwt_audiences: vec![],
            policy: config.policy,
        });
        let node = source
            .ready()
            .await
            .map_err(|e| ClientError::InvalidResponse(format!("node attestation failed: {e}")))?;
        tracing::info!(node = %node.svid.spiffe_id, "node attested");
        let client = Client::connect(&config.broker, &config.bundle_pem).await?;
        let (tx, entries) = watch::channel(Arc::new(EntrySet::default()));
        let cache = SvidCache::new(
            client.clone(),
            source.watch(),
            config.policy,
            config.max_svids,
        );
        let follow = tokio::spawn(entries::follow(
            client.clone(),
            source.watch(),
            tx,
            config.policy,
        ));
        let prune = tokio::spawn(drop_departed(entries.clone(), Arc::clone(&cache)));
        Ok(Self {
            source,
            entries,
            cache,
            client,
            tasks: vec![follow, prune],
        })
    }

    /// The node's own credentials.
    pub fn node_source(&self) -> &CredentialSource {
        &self.source
    }

    /// The identities this node serves, as they change.
    pub fn entries(&self) -> watch::Receiver<Arc<EntrySet>> {
        self.entries.clone()
    }

    /// The workload credential cache.
    pub fn cache(&self) -> &Arc<SvidCache> {
        &self.cache
    }

    /// The Workload API over this agent.
    pub fn workload_api(&self) -> Result<NodeWorkloadApi, SourceError> {
        let node = self.source.current()?;
        Ok(NodeWorkloadApi::new(
            format!("{}/{}", node.identity.0, node.identity.1),
            self.source.watch(),
            self.entries.clone(),
            Arc::clone(&self.cache),
            self.client.clone(),
        ))
    }

    /// Serves the Workload API on an already bound socket (see
    /// [`uds::bind`](crate::uds::bind)) until `shutdown`. Clients may send
    /// any `:authority` (see [`crate::uds::authority`]); each call's
    /// process is attested from the connection's [`PeerCred`](crate::uds::PeerCred).
    pub async fn serve(
        &self,
        listener: UdsListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), std::io::Error> {
        let api = self
            .workload_api()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!(socket = %listener.path().display(), "serving the SPIFFE Workload API for this node's workloads");
        tonic::transport::Server::builder()
            .layer(crate::agent::metrics::CallsLayer)
            .add_service(
                SpiffeWorkloadApiServer::new(api)
                    .max_decoding_message_size(crate::workload_api::MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(listener.incoming(), shutdown)
            .await
            .map_err(std::io::Error::other)
    }
}

/// Drops cached credentials of identities that left the node's set.
async fn drop_departed(mut entries: watch::Receiver<Arc<EntrySet>>, cache: Arc<SvidCache>) {
    loop {
        let keep: BTreeSet<EntryKey> = entries
            .borrow_and_update()
            .entries
            .keys()
            .cloned()
            .collect();
        cache.retain(&keep);
        if entries.changed().await.is_err() {
            return;
        }
    }
}
