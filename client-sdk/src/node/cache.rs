//! The node agent's credential cache: one X.509-SVID per served identity,
//! minted on first request, renewed at about half its life, shared by every
//! caller of that identity, dropped when the identity leaves the node's set;
//! and short-lived reuse of JWT-SVIDs. Both are bounded.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::entries::{Entry, EntryKey};
use crate::client::{Client, WorkloadClient};
use crate::error::ClientError;
use crate::request::JwtRequest;
use crate::source::{RefreshPolicy, SourceState, timing, usable};
use crate::svid::{JwtSvid, TrustBundle, X509Svid};

/// SVIDs held at most unless configured otherwise (SPIRE's default
/// `x509_svid_cache_max_size`).
pub const DEFAULT_MAX_SVIDS: usize = 1000;
/// JWT-SVIDs remembered at most.
const MAX_JWTS: usize = 4096;

/// A served identity's certificate with its locally generated key.
#[derive(Debug, Clone)]
pub struct WorkloadSvid {
    /// Which identity.
    pub key: EntryKey,
    /// Certificate and key.
    pub svid: X509Svid,
    /// CAs of its trust domain.
    pub bundle: TrustBundle,
}

/// What the cache holds for one identity.
#[derive(Debug, Clone)]
pub enum SvidState {
    /// Being minted for the first time.
    Pending,
    /// A valid SVID.
    Ready(Arc<WorkloadSvid>),
    /// None to give: the broker refused, or it expired during an outage.
    Failed {
        /// Why.
        reason: String,
        /// Whether the broker refused (fail closed) rather than being
        /// unreachable.
        refused: bool,
    },
}

struct Slot {
    state: watch::Receiver<SvidState>,
    task: tokio::task::JoinHandle<()>,
    last_used: Instant,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct HeldJwt {
    jwt: JwtSvid,
    reuse_until: SystemTime,
}

/// Mints and renews the credentials of the identities this node serves.
pub struct SvidCache {
    client: Client,
    node: watch::Receiver<SourceState>,
    policy: RefreshPolicy,
    max_svids: usize,
    slots: Mutex<HashMap<EntryKey, Slot>>,
    jwts: Mutex<HashMap<(EntryKey, Vec<String>), HeldJwt>>,
    session: Mutex<Option<(String, WorkloadClient)>>,
    /// Bumped whenever any SVID changes, so streams know to look.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for SvidCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidCache")
            .field("svids", &self.slots.lock().map(|s| s.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl SvidCache {
    /// A cache minting through `client` with the node's credentials.
    pub fn new(
        client: Client,
        node: watch::Receiver<SourceState>,
        policy: RefreshPolicy,
        max_svids: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            node,
            policy,
            max_svids: max_svids.max(1),
            slots: Mutex::new(HashMap::new()),
            jwts: Mutex::new(HashMap::new()),
            session: Mutex::new(None),
            generation: watch::channel(0).0,
        })
    }

    /// Changes whenever any held SVID does.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Number of SVIDs held.
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A session authenticated with the node's current SVID.
    pub(super) async fn session(&self) -> Result<WorkloadClient, ClientError> {
        let creds = usable(&self.node.borrow())
            .map_err(|e| ClientError::InvalidResponse(format!("node credentials: {e}")))?;
        if let Ok(slot) = self.session.lock()
            && let Some((serial, session)) = slot.as_ref()
            && *serial == creds.svid.serial
        {
            return Ok(session.clone());
        }
        let session = self.client.authenticated(&creds.svid).await?;
        if let Ok(mut slot) = self.session.lock() {
            *slot = Some((creds.svid.serial.clone(), session.clone()));
        }
        Ok(session)
    }

    /// The state of `entry`'s SVID, minting and then renewing it from now
    /// on if it is not held yet.
    pub fn svid(self: &Arc<Self>, entry: &Entry) -> SvidState {
        let Ok(mut slots) = self.slots.lock() else {
            return SvidState::Pending;
        };
        if let Some(slot) = slots.get_mut(&entry.key) {
            slot.last_used = Instant::now();
            return slot.state.borrow().clone();
        }
        if slots.len() >= self.max_svids {
            // Least recently used first; it is minted again when asked for.
            if let Some(oldest) = slots
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
            {
                tracing::debug!(identity = %oldest, "SVID cache full; dropping the least recently used");
                slots.remove(&oldest);
            }
        }
        let (tx, rx) = watch::channel(SvidState::Pending);
        let task = tokio::spawn(Arc::clone(self).keep_fresh(entry.key.clone(), tx));
        slots.insert(
            entry.key.clone(),
            Slot {
                state: rx,
                task,
                last_used: Instant::now(),
            },
        );
        SvidState::Pending
    }

    /// Drops everything held for identities not in `keep`.
    pub fn retain(&self, keep: &BTreeSet<EntryKey>) {
        let dropped = self
            .slots
            .lock()
            .map(|mut slots| {
                let before = slots.len();
                slots.retain(|k, _| keep.contains(k));
                before - slots.len()
            })
            .unwrap_or(0);
        if let Ok(mut jwts) = self.jwts.lock() {
            jwts.retain(|(k, _), _| keep.contains(k));
        }
        if dropped > 0 {
            self.bump();
        }
    }

    /// Mints `key`'s SVID and renews it at about half its life until the
    /// slot is dropped. While the broker is unreachable the last SVID stays
    /// served until it expires; a refusal withdraws it at once.
    async fn keep_fresh(self: Arc<Self>, key: EntryKey, tx: watch::Sender<SvidState>) {
        let mut failures = 0u32;
        let mut held: Option<Arc<WorkloadSvid>> = None;
        loop {
            let minted = match self.session().await {
                Ok(session) => session.mint_workload_svid(&key).await,
                Err(e) => Err(e),
            };
            let wait = match minted {
                Ok((svid, bundle)) => {
                    failures = 0;
                    let remaining = svid.remaining();
                    let fresh = Arc::new(WorkloadSvid {
                        key: key.clone(),
                        svid,
                        bundle,
                    });
                    tracing::debug!(identity = %key, serial = %fresh.svid.serial, "minted workload SVID");
                    held = Some(Arc::clone(&fresh));
                    tx.send_replace(SvidState::Ready(fresh));
                    timing::renew_after(remaining, &self.policy)
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let refused = matches!(
                        e.code(),
                        Some(tonic::Code::PermissionDenied | tonic::Code::InvalidArgument)
                    );
                    let still_valid = held.as_ref().filter(|h| !h.svid.remaining().is_zero());
                    match still_valid {
                        Some(h) if !refused => {
                            tracing::warn!(identity = %key, error = %e, "SVID renewal failed; serving the current one");
                            let delay = timing::backoff(failures, &self.policy)
                                .min(h.svid.remaining() / 4)
                                .max(Duration::from_millis(50));
                            timing::honour_hint(delay, &e)
                        }
                        _ => {
                            held = None;
                            tx.send_replace(SvidState::Failed {
                                reason: e.to_string(),
                                refused,
                            });
                            timing::honour_hint(timing::backoff(failures, &self.policy), &e)
                        }
                    }
                }
            };
            self.bump();
            tokio::time::sleep(wait).await;
        }
    }

    /// A JWT-SVID for `key` with exactly `audiences`, reused while it has
    /// more than half its life left.
    pub async fn jwt(&self, key: &EntryKey, audiences: &[String]) -> Result<JwtSvid, ClientError> {
        let mut audiences = audiences.to_vec();
        audiences.sort();
        audiences.dedup();
        let slot = (key.clone(), audiences.clone());
        if let Ok(jwts) = self.jwts.lock()
            && let Some(held) = jwts.get(&slot)
            && SystemTime::now() < held.reuse_until
        {
            return Ok(held.jwt.clone());
        }
        let request = JwtRequest {
            audiences,
            ..JwtRequest::default()
        };
        let jwt = self
            .session()
            .await?
            .mint_workload_jwt(key, &request)
            .await?;
        let now = SystemTime::now();
        let reuse_until = now + jwt.remaining() / 2;
        if let Ok(mut jwts) = self.jwts.lock() {
            if jwts.len() >= MAX_JWTS {
                jwts.retain(|_, h| h.reuse_until > now);
                if jwts.len() >= MAX_JWTS {
                    jwts.clear();
                }
            }
            jwts.insert(
                slot,
                HeldJwt {
                    jwt: jwt.clone(),
                    reuse_until,
                },
            );
        }
        Ok(jwt)
    }
}
