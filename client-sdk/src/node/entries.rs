//! The identities this node serves, followed from the broker's
//! `WatchNodeEntries` stream.
//!
//! Availability fails soft, authorization fails closed: when the stream
//! breaks (broker restart, network) the agent keeps serving the entries it
//! knows while it reconnects with backoff; when the broker says the node
//! itself lost its standing (PERMISSION_DENIED: disabled, retired, revoked)
//! every entry is dropped at once.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use credbroker_proto::v1::{NodeEntriesUpdate, NodeEntry};
use tokio::sync::watch;

use super::process::ProcessFacts;
use crate::client::{Client, WorkloadClient};
use crate::source::{RefreshPolicy, SourceState, timing, usable};

/// `env/name` of a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    /// Environment.
    pub env: String,
    /// Name within the environment.
    pub name: String,
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.env, self.name)
    }
}

/// One identity this node may serve, and what a caller must prove for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its `env/name`.
    pub key: EntryKey,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `(unix:KEY, VALUE)` pairs, all of which the caller must prove.
    pub selectors: Vec<(String, String)>,
    /// Audiences its JWTs may carry.
    pub audiences: Vec<String>,
}

impl Entry {
    fn from_proto(e: NodeEntry) -> Option<Self> {
        let identity = e.identity?;
        Some(Self {
            key: EntryKey {
                env: identity.env,
                name: identity.name,
            },
            spiffe_id: e.spiffe_id,
            selectors: e.selectors.into_iter().map(|s| (s.key, s.value)).collect(),
            audiences: e.audiences,
        })
    }

    /// Whether the process proves every selector (SPIRE semantics). An
    /// entry without selectors matches nothing: the broker never sends one,
    /// and if it did, it must not match every process on the host.
    pub fn matches(&self, process: &ProcessFacts) -> bool {
        !self.selectors.is_empty()
            && self
                .selectors
                .iter()
                .all(|(key, value)| process.proves(key, value))
    }
}

/// Where the entry set stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntriesState {
    /// No snapshot received yet.
    Syncing,
    /// Following the broker (or serving the last known set while
    /// reconnecting).
    Live,
    /// The broker refused the node; nothing is served.
    Refused(String),
}

/// The identities this node serves now.
#[derive(Debug, Clone)]
pub struct EntrySet {
    /// Where the set stands.
    pub state: EntriesState,
    /// Entries by key.
    pub entries: BTreeMap<EntryKey, Arc<Entry>>,
}

impl Default for EntrySet {
    fn default() -> Self {
        Self {
            state: EntriesState::Syncing,
            entries: BTreeMap::new(),
        }
    }
}

impl EntrySet {
    /// The entries whose selectors the process proves, in key order.
    pub fn matching(&self, process: &ProcessFacts) -> Vec<Arc<Entry>> {
        self.entries
            .values()
            .filter(|e| e.matches(process))
            .cloned()
            .collect()
    }

    fn apply(&mut self, update: NodeEntriesUpdate) {
        if update.snapshot {
            self.entries.clear();
        }
        for removed in update.removed {
            self.entries.remove(&EntryKey {
                env: removed.env,
                name: removed.name,
            });
        }
        for entry in update.upserts.into_iter().filter_map(Entry::from_proto) {
            self.entries.insert(entry.key.clone(), Arc::new(entry));
        }
        self.state = EntriesState::Live;
    }
}

/// Waits for usable node credentials and opens a session with them.
async fn node_session(
    client: &Client,
    node: &mut watch::Receiver<SourceState>,
) -> Result<WorkloadClient, String> {
    loop {
        let state = node.borrow_and_update().clone();
        if let Ok(creds) = usable(&state) {
            return client
                .authenticated(&creds.svid)
                .await
                .map_err(|e| e.to_string());
        }
        if node.changed().await.is_err() {
            return Err("the node's credential source stopped".into());
        }
    }
}

/// Follows the broker's entry stream for this node into `tx`, reconnecting
/// with jittered backoff, until the node's credential source stops.
pub(super) async fn follow(
    client: Client,
    mut node: watch::Receiver<SourceState>,
    tx: watch::Sender<Arc<EntrySet>>,
    policy: RefreshPolicy,
) {
    let mut failures = 0u32;
    loop {
        let refusal = match node_session(&client, &mut node).await {
            Ok(session) => match session.watch_node_entries().await {
                Ok(mut stream) => {
                    let mut set = (**tx.borrow()).clone();
                    loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                failures = 0;
                                set.apply(update);
                                tx.send_replace(Arc::new(set.clone()));
                            }
                            Ok(None) => break None,
                            Err(status) => break Some(status),
                        }
                    }
                }
                Err(e) => e.code().map(|code| tonic::Status::new(code, e.to_string())),
            },
            Err(reason) if node.has_changed().is_err() => {
                tracing::error!(%reason, "node credentials are gone; serving nothing");
                tx.send_replace(Arc::new(EntrySet {
                    state: EntriesState::Refused(reason),
                    entries: BTreeMap::new(),
                }));
                return;
            }
            Err(reason) => {
                tracing::warn!(%reason, "cannot reach the broker for node entries");
                None
            }
        };
        if let Some(status) = refusal {
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ) {
                let reason = status.message().to_owned();
                tracing::error!(%reason, "the broker refused this node; serving nothing");
                tx.send_replace(Arc::new(EntrySet {
                    state: EntriesState::Refused(reason),
                    entries: BTreeMap::new(),
                }));
            } else {
                tracing::warn!(error = %status.message(), "node entry stream broke; reconnecting");
            }
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(timing::backoff(failures, &policy)).await;
    }
}
