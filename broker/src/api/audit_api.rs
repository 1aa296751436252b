//! The audit half of the Admin service: queries and chain verification.

use credbroker_proto::v1::{
    AuditEvent, AuditExportChunk, QueryAuditRequest, QueryAuditResponse, VerifyAuditExportResponse,
    VerifyAuditResponse,
};
use tonic::Status;

use super::status;
use crate::audit::export::ExportVerifier;
use crate::audit::verify::verify_log;
use crate::audit::{AuditFilter, ChainedEntry, hex};
use crate::broker::Broker;

/// Default and largest number of entries one query returns.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn to_proto(c: ChainedEntry) -> AuditEvent {
    let e = c.entry;
    AuditEvent {
        seq: c.seq,
        at_ms: e.at_ms,
        action: e.action,
        decision: e.decision,
        actor: e.actor.unwrap_or_default(),
        peer: e.peer.unwrap_or_default(),
        identity: e.identity.unwrap_or_default(),
        env: e.env.unwrap_or_default(),
        credential: e.credential.unwrap_or_default(),
        jti: e.jti.unwrap_or_default(),
        serial: e.serial.unwrap_or_default(),
        expires_at: e.expires_at.unwrap_or(0),
        reason: e.reason.unwrap_or_default(),
        detail: e.detail.unwrap_or_default(),
        evidence: e.evidence.unwrap_or_default(),
        hash: hex(&c.hash),
        prev_hash: hex(&c.prev_hash),
    }
}

/// Answers a query; entries committed before the call are included.
pub(super) async fn query(
    broker: &Broker,
    req: QueryAuditRequest,
) -> Result<QueryAuditResponse, Status> {
    let limit = match req.limit {
        0 => DEFAULT_LIMIT,
        n if n > MAX_LIMIT => {
            return Err(Status::invalid_argument(format!(
                "limit {n} exceeds the maximum of {MAX_LIMIT}"
            )));
        }
        n => n,
    };
    if req.since_ms != 0 && req.until_ms != 0 && req.since_ms >= req.until_ms {
        return Err(Status::invalid_argument("--since must be before --until"));
    }
    let filter = AuditFilter {
        identity: non_empty(req.identity),
        jti: non_empty(req.jti),
        serial: non_empty(req.serial.to_ascii_uppercase()),
        actor: non_empty(req.actor),
        env: non_empty(req.env),
        since_ms: (req.since_ms != 0).then_some(req.since_ms),
        until_ms: (req.until_ms != 0).then_some(req.until_ms),
        limit: i64::from(limit),
    };
    // Read your writes: whatever was audited before this query is visible.
    broker.audit.flush().await.map_err(status::audit)?;
    let entries = broker
        .store
        .query_audit(&filter)
        .await
        .map_err(status::store)?;
    Ok(QueryAuditResponse {
        events: entries.into_iter().map(to_proto).collect(),
    })
}

/// Walks the chain from its start (the genesis or the newest retention
/// cut) and checks it against the newest signed checkpoint in
/// `checkpoint_lines` (or the broker's own checkpoint file when empty).
pub(super) async fn verify(
    broker: &Broker,
    checkpoint_lines: Vec<String>,
) -> Result<VerifyAuditResponse, Status> {
    broker.audit.flush().await.map_err(status::audit)?;
    let seal = broker.audit.seal();
    let lines = if checkpoint_lines.is_empty() {
        seal.checkpoints.lines().map_err(|e| {
            Status::unavailable(format!(
                "cannot read {}: {e}",
                seal.checkpoints.path().display()
            ))
        })?
    } else {
        checkpoint_lines
    };
    let found = verify_log(broker.store.as_ref(), seal, &lines)
        .await
        .map_err(status::store)?;
    if found.unreadable > 0 {
        tracing::warn!(
            unreadable = found.unreadable,
            "checkpoint lines that could not be read were ignored"
        );
    }
    let report = found.report;
    let (broken_at, problem) = report.broken.clone().unwrap_or((0, String::new()));
    Ok(VerifyAuditResponse {
        entries: report.entries,
        head: report.head.map(|h| hex(&h)).unwrap_or_default(),
        intact: report.broken.is_none(),
        broken_at,
        problem,
        checkpoint_seq: found.checkpoint_seq,
        cut_seq: found.cut_seq,
    })
}

/// Checks a retention export sent as consecutive chunks of its lines, with
/// the broker's chain and audit keys; memory stays constant whatever the
/// file's size (each chunk is bounded by the Admin message cap).
pub(super) async fn verify_export(
    broker: &Broker,
    mut chunks: tonic::Streaming<AuditExportChunk>,
) -> Result<VerifyAuditExportResponse, Status> {
    let seal = broker.audit.seal();
    let mut verifier = ExportVerifier::new(seal.chain.clone(), seal.signer.clone());
    while let Some(chunk) = chunks.message().await? {
        for line in &chunk.lines {
            verifier.feed_line(line);
        }
    }
    let report = verifier.finish();
    let (broken_at, line, problem) = report
        .broken
        .clone()
        .map_or((0, 0, String::new()), |p| (p.seq, p.line, p.what));
    let (sealed_seq, head) = report
        .sealed
        .map_or((0, String::new()), |(s, h)| (s, hex(&h)));
    Ok(VerifyAuditExportResponse {
        intact: report.broken.is_none(),
        entries: report.entries,
        after_seq: report.after.0,
        after_head: report.after.1.map(|h| hex(&h)).unwrap_or_default(),
        sealed_seq,
        head,
        broken_at,
        line,
        problem,
    })
}
