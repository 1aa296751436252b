//! `WatchRevocations`: the live list, then each new entry, for one
//! subscriber.

use std::sync::Arc;

use dashmap::DashMap;

use credbroker_proto::v1::Revocation as ProtoRevocation;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::api::revoke_api;
use crate::broker::Broker;
use crate::model::EnvName;

/// Sends every live revocation after `after`, then new ones as they come,
/// until the client goes away or the broker stops. A subscriber that falls
/// behind the event buffer is caught up from the list, so it misses nothing.
pub(super) async fn stream_revocations(
    broker: Arc<Broker>,
    after: i64,
    scope: Option<EnvName>,
    tx: mpsc::Sender<Result<ProtoRevocation, Status>>,
    mut stop: watch::Receiver<bool>,
) {
    let visible = |rev: &crate::revocation::Revocation| revoke_api::visible_in(rev, scope.as_ref());
    // Subscribe before reading the backlog so nothing falls in between.
    let mut events = broker.revocations.subscribe();
    let mut last = after;
    let catch_up = |last: &mut i64| {
        let backlog = broker.revocations.after(*last);
        if let Some(r) = backlog.last() {
            *last = r.seq;
        }
        backlog
    };
    for rev in catch_up(&mut last) {
        let Some(rev) = visible(&rev) else { continue };
        if tx.send(Ok(rev)).await.is_err() {
            return;
        }
    }
    loop {
        let rev = tokio::select! {
            event = events.recv() => event,
            _ = stop.wait_for(|s| *s) => return,
            () = tx.closed() => return,
        };
        let batch = match rev {
            Ok(rev) if rev.seq > last => {
                last = rev.seq;
                vec![rev]
            }
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => catch_up(&mut last),
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for rev in batch {
            let Some(rev) = visible(&rev) else { continue };
            if tx.send(Ok(rev)).await.is_err() {
                return;
            }
        }
    }
}

/// Open WatchRevocations streams per caller, at most `max` each: a caller
/// cannot pin the broker's memory with thousands of idle subscriptions.
#[derive(Debug)]
pub(super) struct StreamSlots {
    max: usize,
    open: Arc<DashMap<String, usize>>,
}

/// One open stream; gives its slot back when dropped.
#[derive(Debug)]
pub(super) struct StreamSlot {
    caller: String,
    open: Arc<DashMap<String, usize>>,
}

impl StreamSlots {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::new(DashMap::new()),
        }
    }

    /// A slot for `caller`, or RESOURCE_EXHAUSTED naming the limit.
    pub(super) fn open(&self, caller: String) -> Result<StreamSlot, Status> {
        let mut n = self.open.entry(caller.clone()).or_insert(0);
        if *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{caller} already has {} WatchRevocations streams open, the limit \
                 (connections.revocation_streams_per_caller); close one first",
                self.max
            )));
        }
        *n += 1;
        drop(n);
        Ok(StreamSlot {
            caller,
            open: Arc::clone(&self.open),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        // Forget callers with no stream left, so the map stays as small as
        // the set of current subscribers.
        self.open.remove_if_mut(&self.caller, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}
