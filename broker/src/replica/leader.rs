//! Leader election: one loop that takes or keeps the store's leader lock
//! and publishes whether this broker leads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::Broker;
use crate::store::StoreLock;

/// How often a follower tries to take the lock, and the leader checks it
/// still holds it. A leader killed outright loses the lock the moment its
/// connection drops, so another leads within this time.
pub const LEADER_CHECK: Duration = Duration::from_secs(1);

/// Whether this broker leads now.
#[derive(Debug)]
pub struct Leadership {
    leads: watch::Sender<bool>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self {
            leads: watch::Sender::new(false),
        }
    }
}

impl Leadership {
    /// Whether this broker leads now.
    pub fn leads(&self) -> bool {
        *self.leads.borrow()
    }

    /// Follows changes of leadership.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leads.subscribe()
    }

    fn set(&self, leads: bool) {
        self.leads
            .send_if_modified(|now| std::mem::replace(now, leads) != leads);
    }
}

/// Takes the leader lock when it is free and keeps checking it is held,
/// until `stop`.
pub async fn campaign(broker: Arc<Broker>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut held: Option<StoreLock> = None;
    loop {
        match held.as_mut() {
            None => match broker.store.try_lead().await {
                Ok(Some(lock)) => {
                    held = Some(lock);
                    broker.leadership.set(true);
                    broker.metrics.set_leader(true);
                    tracing::info!("this broker leads: it runs key rotation and purges");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the store to campaign for leader")
                }
            },
            Some(lock) => {
                if !lock.still_held().await {
                    held = None;
                    broker.leadership.set(false);
                    broker.metrics.set_leader(false);
                    tracing::warn!("lost the leader lock (store connection gone); following");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(LEADER_CHECK) => {}
            () = &mut stop => break,
        }
    }
    // Dropping the lock closes its connection: the next broker leads.
    broker.leadership.set(false);
}
