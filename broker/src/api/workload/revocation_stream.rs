//! `WatchRevocations`: the live list, then each new entry, for one
//! subscriber.

use std::sync::Arc;

use dashmap::DashMap;

use credbroker_proto::v1::{Revocation as ProtoRevocation, WatchRevocationsRequest};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{STREAM_BUFFER, WorkloadService};

use crate::api::revoke_api;
use crate::broker::Broker;
use crate::model::EnvName;

impl WorkloadService {
    /// `WatchRevocations`: checks the caller, its cursor and its stream
    /// allowance, then streams from the cursor.
    pub(super) fn open_revocation_stream(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<ReceiverStream<Result<ProtoRevocation, Status>>>, Status> {
        let (scope, caller) = self.authenticated_caller(&request)?;
        let request_peer = request.remote_addr();
        let after = request.into_inner().after_seq;
        if after < 0 {
            return Err(Status::invalid_argument("after_seq must not be negative"));
        }
        let latest = self.broker.revocations.latest_seq();
        if after > latest {
            // Accepted, it would wait for an entry numbered past one that
            // was never assigned: silence, forever.
            return Err(Status::out_of_range(format!(
                "after_seq {after} is beyond the latest revocation sequence {latest}; resume from {latest} or below"
            )));
        }
        let slot = self.streams.open(caller)?;
        let busy = self.connections.stream(request_peer);
        let subscriber = self.broker.metrics.revocation_subscriber();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stream = stream_revocations(
            Arc::clone(&self.broker),
            after,
            scope,
            tx,
            self.stop.clone(),
        );
        tokio::spawn(async move {
            stream.await;
            drop((slot, busy, subscriber));
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

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
