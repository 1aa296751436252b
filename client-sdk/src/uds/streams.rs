//! Open Workload API streams per caller (uid, as the kernel reports it),
//! at most [`MAX_STREAMS_PER_UID`] each: one local user cannot make the
//! agent hold thousands of streams (a task and a watch subscription each).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::{Request, Status};

use super::PeerCred;

/// Streams one uid may hold open at once.
pub const MAX_STREAMS_PER_UID: usize = 128;

/// Counts open streams per uid.
#[derive(Debug, Clone, Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<u32, usize>>>,
}

/// A response stream holding its caller's slot until dropped.
#[derive(Debug)]
pub struct Slotted<S> {
    inner: S,
    _slot: Slot,
}

#[derive(Debug)]
struct Slot {
    uid: u32,
    open: Arc<Mutex<HashMap<u32, usize>>>,
}

impl StreamSlots {
    /// `stream` counted against the caller of `request`, or
    /// RESOURCE_EXHAUSTED naming the limit.
    pub fn admit<T, S>(&self, request: &Request<T>, stream: S) -> Result<Slotted<S>, Status> {
        // Without kernel credentials (not a Unix socket) all share one key.
        let uid = request
            .extensions()
            .get::<PeerCred>()
            .map_or(u32::MAX, |p| p.uid);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(uid).or_insert(0);
        if *n >= MAX_STREAMS_PER_UID {
            return Err(Status::resource_exhausted(format!(
                "uid {uid} already holds {MAX_STREAMS_PER_UID} Workload API streams, the limit; close one first"
            )));
        }
        *n += 1;
        Ok(Slotted {
            inner: stream,
            _slot: Slot {
                uid,
                open: Arc::clone(&self.open),
            },
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

impl<S: Stream + Unpin> Stream for Slotted<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_capped_per_uid_and_released_on_drop() {
        let slots = StreamSlots::default();
        let mut request = Request::new(());
        request.extensions_mut().insert(PeerCred {
            pid: None,
            uid: 1001,
            gid: 1001,
        });
        let held: Vec<_> = (0..MAX_STREAMS_PER_UID)
            .map(|_| slots.admit(&request, tokio_stream::empty::<()>()).unwrap())
            .collect();
        let e = slots
            .admit(&request, tokio_stream::empty::<()>())
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("uid 1001"), "{e:?}");
        // Another uid is unaffected.
        let mut other = Request::new(());
        other.extensions_mut().insert(PeerCred {
            pid: None,
            uid: 1002,
            gid: 1002,
        });
        assert!(slots.admit(&other, tokio_stream::empty::<()>()).is_ok());
        drop(held);
        assert!(slots.admit(&request, tokio_stream::empty::<()>()).is_ok());
        assert!(slots.open.lock().unwrap().is_empty(), "nothing left behind");
    }
}
