//! The durable audit log writer: entries are queued without waiting and
//! committed in batches (group commit), each batch one transaction, chained
//! in order by a single writer task.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::entry::{AuditEntry, ChainedEntry, GENESIS};
use crate::store::{Store, StoreError};

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Wait before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_secs(1);

enum Command {
    Append(Box<AuditEntry>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::UnboundedSender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append(_) => "Append",
            Self::Flush(_) => "Flush",
        })
    }
}

impl AuditLog {
    /// Starts the writer, continuing the chain stored in `store`.
    pub async fn start(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let (seq, head) = store.audit_head().await?.unwrap_or((0, GENESIS));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(store, rx, seq, head));
        Ok(Self { tx })
    }

    /// Queues `entry`; it is committed within milliseconds.
    pub fn append(&self, entry: AuditEntry) {
        if self.tx.send(Command::Append(Box::new(entry))).is_err() {
            tracing::error!("audit writer has stopped; entry lost");
        }
    }

    /// Waits until every entry queued before this call is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn write_loop(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Command>,
    mut seq: i64,
    mut head: [u8; 32],
) {
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append(entry) => batch.push(*entry),
                Command::Flush(done) => waiters.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let mut chained = Vec::with_capacity(batch.len());
            let mut prev = head;
            for (i, entry) in batch.into_iter().enumerate() {
                let linked = ChainedEntry::link(seq + 1 + i as i64, entry, prev);
                prev = linked.hash;
                chained.push(linked);
            }
            // Nothing is dropped: a failing store is retried until it works.
            while let Err(e) = store.append_audit(&chained).await {
                tracing::error!(error = %e, pending = chained.len(), "cannot write audit log; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            seq += chained.len() as i64;
            head = prev;
        }
        for done in waiters {
            let _ = done.send(());
        }
    }
}
