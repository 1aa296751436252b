//! Audit retention (`audit_retention = "90d"`): entries older than the
//! retention period are exported and then deleted, oldest first.
//!
//! A run cuts the log after the longest prefix (after the previous cut)
//! whose entries are all past retention and describe no credential that is
//! still unexpired — issuance records feed the CRL, revocation coverage
//! and the outstanding-credential counts, so they stay until what they
//! describe has expired, whatever the retention. The prefix is verified
//! while it is written to the export (a broken chain deletes nothing), the
//! cut is signed with the audit key as a *cut*, the export is synced to
//! disk, the cut recorded in the store, and only then are the rows
//! deleted, in small transactions so audit commits never wait long.
//! `audit verify` then checks the remaining log from the signed cut.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use super::checkpoint::{Checkpoint, CheckpointKind};
use super::entry::{ChainVerifier, ChainedEntry};
use super::export::ExportWriter;
use super::log::AuditSeal;
use crate::store::{AuditCut, Store, StoreError};

/// Most entries one export holds (a run that finds more writes several).
pub const MAX_ENTRIES_PER_EXPORT: i64 = 1_000_000;
/// Entries read per page.
const PAGE: i64 = 5_000;
/// Rows deleted per transaction.
const DELETE_CHUNK: i64 = 10_000;
/// Exports one [`catch_up`] writes at most.
const MAX_EXPORTS_PER_RUN: usize = 64;

/// What retention keeps and where exports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Entries younger than this stay.
    pub keep: Duration,
    /// Where exports are written (`audit_export_dir`).
    pub export_dir: PathBuf,
}

/// Why a retention run stopped without deleting.
#[derive(Debug, Error)]
pub enum RetentionError {
    /// The store failed.
    #[error("audit retention: {0}")]
    Store(#[from] StoreError),
    /// The export could not be written or synced; nothing was deleted.
    #[error("audit retention cannot write its export in {dir}: {source}; nothing was deleted")]
    Export {
        /// The export directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The chain is broken inside the range to export: evidence is never
    /// deleted.
    #[error(
        "audit retention found the chain broken at entry {seq} ({what}); nothing is deleted \
         until `credbroker audit verify` is looked into"
    )]
    Broken {
        /// The broken entry.
        seq: i64,
        /// What is wrong with it.
        what: String,
    },
    /// The stored cut is not one this broker signed.
    #[error(
        "audit retention found a retention cut at entry {0} not signed by this broker; nothing is deleted"
    )]
    ForgedCut(i64),
    /// The audit key could not sign the cut.
    #[error("audit retention cannot sign its cut; nothing was deleted")]
    Sign,
}

/// What one run exported and deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// First and last sequence numbers exported.
    pub first: i64,
    /// Last sequence number exported (the cut).
    pub last: i64,
    /// The export file.
    pub export: PathBuf,
    /// Rows deleted (including leftovers of an interrupted earlier run).
    pub deleted: u64,
}

/// Whether retention may remove `e` at `now_ms` with entries before
/// `cutoff_ms` past retention.
fn removable(e: &ChainedEntry, cutoff_ms: i64, now_ms: i64) -> bool {
    let unexpired_issuance = e.entry.decision == "issued"
        && e.entry
            .expires_at
            .is_some_and(|exp| exp.saturating_mul(1000) > now_ms);
    e.entry.at_ms < cutoff_ms && !unexpired_issuance
}

/// Deletes rows up to `through` (exported already), chunk by chunk.
async fn delete_through(store: &dyn Store, through: i64) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let n = store.delete_audit_through(through, DELETE_CHUNK).await?;
        deleted += n;
        if n < DELETE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// One export: cuts after at most [`MAX_ENTRIES_PER_EXPORT`] removable
/// entries, or does nothing (`None`) when none is removable.
pub async fn run_once(
    store: &dyn Store,
    seal: &AuditSeal,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> Result<Option<Purge>, RetentionError> {
    let cutoff_ms =
        now_ms.saturating_sub(i64::try_from(policy.keep.as_millis()).unwrap_or(i64::MAX));
    let previous = store.audit_cut().await?.map(|c| c.checkpoint);
    if let Some(cut) = &previous
        && (cut.kind != CheckpointKind::Cut || !cut.verify(&seal.signer))
    {
        return Err(RetentionError::ForgedCut(cut.seq));
    }
    let start = previous.as_ref().map_or(0, |c| c.seq);
    // Rows an interrupted run exported but did not delete.
    let leftovers = delete_through(store, start).await?;
    let io = |source| RetentionError::Export {
        dir: policy.export_dir.clone(),
        source,
    };
    let mut chain = match &previous {
        Some(c) => ChainVerifier::resume_after(seal.chain.clone(), c.seq, c.head),
        None => ChainVerifier::new(seal.chain.clone()),
    };
    let mut writer: Option<ExportWriter> = None;
    let mut after = start;
    'pages: loop {
        let page = store.audit_page(after, PAGE).await?;
        for e in &page {
            if !removable(e, cutoff_ms, now_ms)
                || chain.last_seq() - start >= MAX_ENTRIES_PER_EXPORT
            {
                break 'pages;
            }
            chain.feed(std::slice::from_ref(e));
            if let Some((seq, what)) = chain.broken().cloned() {
                if let Some(w) = writer.take() {
                    w.abandon();
                }
                return Err(RetentionError::Broken { seq, what });
            }
            if writer.is_none() {
                writer =
                    Some(ExportWriter::create(&policy.export_dir, previous.as_ref()).map_err(io)?);
            }
            if let Some(w) = writer.as_mut()
                && let Err(e) = w.entry(e)
            {
                if let Some(w) = writer.take() {
                    w.abandon();
                }
                return Err(io(e));
            }
        }
        match page.last() {
            Some(last) if (page.len() as i64) == PAGE => after = last.seq,
            _ => break,
        }
    }
    let (Some(writer), Some(head)) = (writer, chain.head()) else {
        return Ok(None);
    };
    let last = chain.last_seq();
    let Some(cut) = Checkpoint::sign_kind(&seal.signer, CheckpointKind::Cut, last, head, now_ms)
    else {
        writer.abandon();
        return Err(RetentionError::Sign);
    };
    let name = format!("audit-{:012}-{last:012}.jsonl", start + 1);
    let sealed = {
        let cut = cut.clone();
        let name = name.clone();
        tokio::task::spawn_blocking(move || writer.seal(&cut, &name))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
    };
    let export = sealed.map_err(io)?;
    store
        .record_audit_cut(&AuditCut {
            checkpoint: cut,
            export: name,
        })
        .await?;
    let deleted = leftovers + delete_through(store, last).await?;
    Ok(Some(Purge {
        first: start + 1,
        last,
        export,
        deleted,
    }))
}

/// Runs [`run_once`] until nothing more is removable (at most
/// [`MAX_EXPORTS_PER_RUN`] exports), returning what each did.
pub async fn catch_up(
    store: &dyn Store,
    seal: &AuditSeal,
    policy: &RetentionPolicy,
    now_ms: i64,
) -> (Vec<Purge>, Option<RetentionError>) {
    let mut done = Vec::new();
    for _ in 0..MAX_EXPORTS_PER_RUN {
        match run_once(store, seal, policy, now_ms).await {
            Ok(Some(purge)) => done.push(purge),
            Ok(None) => break,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}
