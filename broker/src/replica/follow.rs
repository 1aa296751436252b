//! Following the change feed: one loop that applies what other brokers
//! sharing the store commit to this broker's caches.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::keys::KeyError;
use crate::model::{IdentityKey, unix_now};
use crate::store::{Change, ChangeKind, ChangeSignal, StoreError};

/// Why changes could not be applied (they are retried).
#[derive(Debug, thiserror::Error)]
enum FollowError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys another broker stored could not be loaded.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
}

/// How often the feed is read even without a notification: a lost
/// notification (a dropped listener connection) delays a change by at
/// most this.
pub const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// Changes read per page.
const PAGE: i64 = 1000;
/// Pause after the notification connection failed, before trying again.
const RELISTEN_AFTER: Duration = Duration::from_millis(500);

/// Applies every change after `cursor` (read before the caches were
/// loaded, so nothing falls in between), then each new one as it is
/// committed, until `stop`. Returns at once on a store that serves one
/// broker.
pub async fn follow(broker: Arc<Broker>, mut cursor: i64, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut signal = match broker.store.change_signal().await {
        Ok(None) => return,
        Ok(Some(signal)) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for changes; reading the feed every second");
            None
        }
    };
    loop {
        match catch_up(&broker, cursor).await {
            Ok(next) => cursor = next,
            Err(e) => tracing::warn!(error = %e, "cannot read the change feed; retrying"),
        }
        if signal.is_none() {
            signal = broker.store.change_signal().await.ok().flatten();
        }
        tokio::select! {
            woken = wait(&mut signal) => {
                if let Err(e) = woken {
                    tracing::warn!(error = %e, "change notifications interrupted; reading the feed");
                    signal = None;
                    tokio::time::sleep(RELISTEN_AFTER).await;
                }
            }
            () = tokio::time::sleep(FOLLOW_POLL) => {}
            () = &mut stop => return,
        }
    }
}

async fn wait(signal: &mut Option<Box<dyn ChangeSignal>>) -> Result<(), StoreError> {
    match signal {
        Some(signal) => signal.wait().await,
        None => std::future::pending().await,
    }
}

/// Applies every change after `cursor`; returns the new cursor.
async fn catch_up(broker: &Broker, mut cursor: i64) -> Result<i64, FollowError> {
    loop {
        let changes = broker.store.changes_after(cursor, PAGE).await?;
        let Some(last) = changes.last() else {
            return Ok(cursor);
        };
        let next = last.seq;
        apply(broker, &changes).await?;
        cursor = next;
        if (changes.len() as i64) < PAGE {
            return Ok(cursor);
        }
    }
}

/// Applies a page of changes, each cache once: revocations first (they
/// refuse credentials), then identities, operators and keys.
async fn apply(broker: &Broker, changes: &[Change]) -> Result<(), FollowError> {
    let store = broker.store.as_ref();
    let mut identities = BTreeSet::new();
    let (mut revocations, mut operators, mut keys) = (false, false, false);
    for change in changes {
        match change.kind {
            ChangeKind::Identity => {
                identities.insert(change.key.as_str());
            }
            ChangeKind::Revocation => revocations = true,
            ChangeKind::Operator => operators = true,
            ChangeKind::Keys => keys = true,
        }
    }
    if revocations {
        for rev in broker.revocations.catch_up(store).await? {
            broker.metrics.changes_applied.inc();
            tracing::info!(seq = rev.seq, target = %rev.target, operator = %rev.operator, "revocation from another broker enforced");
        }
    }
    for key in identities {
        let Ok(key) = IdentityKey::parse(key) else {
            tracing::warn!(key, "change feed names no valid identity; skipped");
            continue;
        };
        let stored = store.get_identity(&key).await?;
        broker.registry.apply_stored(&key, stored).await;
        broker.metrics.changes_applied.inc();
    }
    if operators {
        broker.callers.operators.load(store.list_operators().await?);
        broker.metrics.changes_applied.inc();
    }
    if keys {
        // Not leading here: the leader creates keys; this re-reads them.
        broker.keys.tick(unix_now(), false).await?;
        broker.metrics.changes_applied.inc();
    }
    Ok(())
}
