//! The durable audit log writer: entries are committed in batches (group
//! commit), each batch one transaction, chained in order by a single writer
//! task.
//!
//! Issuances wait for their batch: [`AuditLog::commit`] returns only once
//! the entries are in the store, so no credential leaves the broker before
//! its record is durable, and it gives up after [`COMMIT_TIMEOUT`] so a
//! wedged store turns into UNAVAILABLE instead of a hang. Denials and admin
//! changes are queued without waiting. The queue is bounded: when the store
//! cannot keep up, callers are refused instead of memory growing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{Checkpoint, CheckpointFile};
use super::entry::{AuditEntry, ChainKey, GENESIS};
use crate::keys::JwtSigningKey;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How often the writer seals a checkpoint of new entries.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Commands (each one or more entries) waiting for the writer at most.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Longest an issuance waits for its record to be committed.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before retrying a failed commit.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// Why the audit log could not take or commit an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The queue is full: the store is not keeping up.
    #[error(
        "the audit log is full ({QUEUE_CAPACITY} batches waiting); the store is not keeping up"
    )]
    Full,
    /// The commit did not finish in time.
    #[error("the audit log did not commit within {}s", COMMIT_TIMEOUT.as_secs())]
    Timeout,
    /// The writer task is gone (shutting down).
    #[error("the audit log writer has stopped")]
    Stopped,
}

enum Command {
    Append(Box<AuditEntry>),
    Commit(Vec<AuditEntry>, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
    Checkpoint(oneshot::Sender<()>),
}

/// What keys and seals the chain.
#[derive(Debug, Clone)]
pub struct AuditSeal {
    /// Keys the chain (derived from the KEK).
    pub chain: ChainKey,
    /// Signs checkpoints.
    pub signer: Arc<JwtSigningKey>,
    /// Where checkpoints are appended.
    pub checkpoints: CheckpointFile,
}

/// Handle to the audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    seal: AuditSeal,
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append(_) => "Append",
            Self::Commit(..) => "Commit",
            Self::Flush(_) => "Flush",
            Self::Checkpoint(_) => "Checkpoint",
        })
    }
}

impl AuditLog {
    /// Starts the writer, continuing the chain stored in `store`. A log
    /// that ends before the newest checkpoint is reported (it was
    /// truncated); the broker still starts so that `audit verify` can say
    /// exactly what is missing.
    pub async fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        seal: AuditSeal,
    ) -> Result<Self, StoreError> {
        // After retention deleted every entry up to its cut, the chain
        // continues from the cut.
        let cut = store
            .audit_cut()
            .await?
            .map(|c| (c.checkpoint.seq, c.checkpoint.head));
        let (seq, head) = match (store.audit_head().await?, cut) {
            (Some(head), Some(cut)) if cut.0 > head.0 => cut,
            (Some(head), _) => head,
            (None, cut) => cut.unwrap_or((0, GENESIS)),
        };
        if let Ok(lines) = seal.checkpoints.lines()
            && let (Some(cp), _) = Checkpoint::newest(lines.iter().map(String::as_str))
            && cp.seq > seq
        {
            tracing::error!(
                target: super::TARGET,
                checkpoint_seq = cp.seq,
                log_ends_at = seq,
                file = %seal.checkpoints.path().display(),
                "the audit log is TRUNCATED: entries {}..{} sealed by a checkpoint are gone; run `credbroker audit verify`",
                seq + 1,
                cp.seq
            );
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            store,
            seal: seal.clone(),
            metrics: Arc::clone(&metrics),
        };
        tokio::spawn(write_loop(writer, rx, seq, head));
        Ok(Self { tx, seal, metrics })
    }

    /// Commands waiting for the writer now.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// What keys and seals the chain.
    pub fn seal(&self) -> &AuditSeal {
        &self.seal
    }

    /// Commits what is queued and seals a checkpoint of it (at shutdown).
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        self.flush().await?;
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Checkpoint(done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        match tokio::time::timeout(COMMIT_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout),
        }
    }

    /// Queues `entry` without waiting; it is committed within
    /// milliseconds. When the queue is full the entry goes to the log
    /// stream only, with an error saying so.
    pub fn append(&self, entry: AuditEntry) {
        if let Err(e) = self.tx.try_send(Command::Append(Box::new(entry))) {
            let (why, entry) = match e {
                mpsc::error::TrySendError::Full(Command::Append(entry)) => ("full", entry),
                mpsc::error::TrySendError::Closed(Command::Append(entry)) => ("stopped", entry),
                _ => return,
            };
            tracing::error!(
                target: super::TARGET,
                why,
                action = %entry.action,
                decision = %entry.decision,
                identity = entry.identity.as_deref(),
                reason = entry.reason.as_deref(),
                "audit log cannot take this entry; it is recorded in the log stream only"
            );
        }
    }

    /// Commits `entries` and waits until they are durable, at most
    /// [`COMMIT_TIMEOUT`]. Only after `Ok` may what they record be handed
    /// out.
    pub async fn commit(&self, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let (done, wait) = oneshot::channel();
        self.tx
            .try_send(Command::Commit(entries, done))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => AuditError::Full,
                mpsc::error::TrySendError::Closed(_) => AuditError::Stopped,
            })?;
        let result = match tokio::time::timeout(COMMIT_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout),
        };
        self.metrics.audit_commit.observe(started.elapsed());
        result
    }

    /// Waits until every entry queued before this call is committed, at
    /// most [`COMMIT_TIMEOUT`].
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        let queued = tokio::time::timeout(COMMIT_TIMEOUT, self.tx.send(Command::Flush(done)));
        match queued.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(AuditError::Stopped),
            Err(_) => return Err(AuditError::Timeout),
        }
        match tokio::time::timeout(COMMIT_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Stopped),
            Err(_) => Err(AuditError::Timeout),
        }
    }
}

/// Seals `seq`/`head` into the checkpoint file and the log stream.
fn seal_checkpoint(seal: &AuditSeal, seq: i64, head: [u8; 32]) -> bool {
    let at_ms = crate::model::unix_now_ms();
    let Some(cp) = Checkpoint::sign(&seal.signer, seq, head, at_ms) else {
        tracing::error!("cannot sign an audit checkpoint");
        return false;
    };
    tracing::info!(target: super::TARGET, checkpoint = %cp.to_line(), "audit checkpoint");
    match seal.checkpoints.append(&cp) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, file = %seal.checkpoints.path().display(), "cannot write the audit checkpoint file");
            false
        }
    }
}

/// What the writer task writes with.
struct Writer {
    store: Arc<dyn Store>,
    seal: AuditSeal,
    metrics: Arc<Metrics>,
}

async fn write_loop(
    writer: Writer,
    mut rx: mpsc::Receiver<Command>,
    mut seq: i64,
    mut head: [u8; 32],
) {
    let Writer {
        store,
        seal,
        metrics,
    } = writer;
    let mut sealed = seq;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => break,
            },
            _ = tick.tick() => {
                if seq > sealed && seal_checkpoint(&seal, seq, head) {
                    sealed = seq;
                }
                continue;
            }
        };
        let mut batch = Vec::new();
        // Where in `batch` the issuances are, logged once committed.
        let mut issued = Vec::new();
        let mut waiters = Vec::new();
        let mut checkpoint_waiters = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append(entry) => batch.push(*entry),
                Command::Commit(entries, done) => {
                    let start = batch.len();
                    batch.extend(entries);
                    issued.push(start..batch.len());
                    waiters.push(done);
                }
                Command::Flush(done) => waiters.push(done),
                Command::Checkpoint(done) => checkpoint_waiters.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            // The store links the batch after its newest entry: with
            // several brokers on one database, each batch follows whatever
            // any of them committed before it. Nothing is dropped: a
            // failing store is retried until it works. Waiters give up on
            // their own after COMMIT_TIMEOUT, and the bounded queue refuses
            // new work meanwhile.
            let mut failures = 0u32;
            loop {
                let started = std::time::Instant::now();
                let result = store.append_audit(&batch, &seal.chain).await;
                metrics.store_audit_append.observe(started.elapsed());
                match result {
                    Ok((last, hash)) => {
                        seq = last;
                        head = hash;
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(25) {
                            tracing::error!(error = %e, pending = batch.len(), failures, "cannot write audit log; retrying");
                        }
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
            if failures > 0 {
                tracing::warn!(failures, "audit log writes recovered");
            }
        }
        for done in waiters {
            let _ = done.send(());
        }
        // After the waiters, who need not wait for it; in one write.
        credbroker_client::logging::batched(|| {
            for entry in issued.into_iter().flat_map(|range| &batch[range]) {
                super::log_issued(entry);
            }
        });
        if !checkpoint_waiters.is_empty() {
            if seq > sealed && seal_checkpoint(&seal, seq, head) {
                sealed = seq;
            }
            for done in checkpoint_waiters {
                let _ = done.send(());
            }
        }
    }
    if seq > sealed {
        seal_checkpoint(&seal, seq, head);
    }
}
