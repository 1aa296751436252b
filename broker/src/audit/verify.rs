//! `audit verify`: walks the stored chain from its start — the genesis, or
//! the newest signed retention cut — and checks it against the newest
//! signed checkpoint.

use super::checkpoint::{Checkpoint, CheckpointKind};
use super::entry::{ChainVerifier, VerifyReport};
use super::log::AuditSeal;
use crate::store::{Store, StoreError};

/// Entries read per page while verifying.
const VERIFY_PAGE: i64 = 5_000;

/// What `audit verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogVerification {
    /// The chain walk (entries after the cut).
    pub report: VerifyReport,
    /// Sequence number sealed by the newest checkpoint used (0: none).
    pub checkpoint_seq: i64,
    /// Entries up to this one were exported and deleted by retention
    /// (0: none).
    pub cut_seq: i64,
    /// Checkpoint lines that could not be read and were ignored.
    pub unreadable: usize,
}

/// Verifies the log in `store` with `seal`'s keys against the newest
/// checkpoint among `checkpoint_lines`.
pub async fn verify_log(
    store: &dyn Store,
    seal: &AuditSeal,
    checkpoint_lines: &[String],
) -> Result<LogVerification, StoreError> {
    let (checkpoint, unreadable) = Checkpoint::newest(checkpoint_lines.iter().map(String::as_str));
    let cut = store.audit_cut().await?.map(|c| c.checkpoint);
    let cut_seq = cut.as_ref().map_or(0, |c| c.seq);
    let mut out = LogVerification {
        checkpoint_seq: checkpoint.as_ref().map_or(0, |c| c.seq),
        cut_seq,
        unreadable,
        ..LogVerification::default()
    };
    // A cut is trusted only with the audit key's signature on it as a cut:
    // without it, deleted rows would pass for exported ones.
    if let Some(cut) = &cut
        && (cut.kind != CheckpointKind::Cut || !cut.verify(&seal.signer))
    {
        out.report.broken = Some((
            cut.seq,
            "the retention cut's signature is not the broker's (forged retention cut)".to_owned(),
        ));
        return Ok(out);
    }
    let mut verifier = match &cut {
        Some(c) => ChainVerifier::resume_after(seal.chain.clone(), c.seq, c.head),
        None => ChainVerifier::new(seal.chain.clone()),
    };
    if let Some(cp) = &checkpoint {
        verifier.watch(cp.seq);
    }
    let mut after = cut_seq;
    loop {
        let page = store.audit_page(after, VERIFY_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        verifier.feed(&page);
        if (page.len() as i64) < VERIFY_PAGE {
            break;
        }
    }
    let sealed_hash = verifier.watched();
    let mut report = verifier.finish();
    if report.broken.is_none()
        && let Some(cp) = &checkpoint
    {
        report.broken = checkpoint_problem(cp, seal, &report, sealed_hash, cut.as_ref());
    }
    out.report = report;
    Ok(out)
}

/// What is wrong with the log as the newest checkpoint `cp` sees it.
fn checkpoint_problem(
    cp: &Checkpoint,
    seal: &AuditSeal,
    report: &VerifyReport,
    sealed_hash: Option<[u8; 32]>,
    cut: Option<&Checkpoint>,
) -> Option<(i64, String)> {
    if !cp.verify(&seal.signer) {
        return Some((
            cp.seq,
            "the newest checkpoint's signature is not the broker's (forged checkpoint file)"
                .to_owned(),
        ));
    }
    if let Some(cut) = cut
        && cp.seq <= cut.seq
    {
        // Sealed before (or at) the cut: those entries are in an export now.
        return (cp.seq == cut.seq && cp.head != cut.head).then(|| {
            (
                cp.seq,
                "the retention cut differs from what the signed checkpoint sealed".to_owned(),
            )
        });
    }
    if report.last_seq < cp.seq {
        return Some((
            report.last_seq + 1,
            format!(
                "the log ends at entry {} but a signed checkpoint sealed {} entries: entries {}..{} were removed (truncated)",
                report.last_seq,
                cp.seq,
                report.last_seq + 1,
                cp.seq
            ),
        ));
    }
    (sealed_hash != Some(cp.head)).then(|| {
        (
            cp.seq,
            "entry differs from what the signed checkpoint sealed: the chain was rewritten"
                .to_owned(),
        )
    })
}
