//! `credbroker audit verify --export FILE…`: sends each retention export to
//! the broker, which checks it with the chain and audit keys, and checks
//! that consecutive files continue one another.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{AuditExportChunk, VerifyAuditExportResponse};
use serde_json::json;
use tonic::transport::Channel;

use super::Output;
use super::admin::AdminError;
use super::output::{emit, json_text};

/// Bytes of lines per chunk: well under the Admin message cap (256 KiB).
const CHUNK_BYTES: usize = 128 * 1024;

/// Streams `path` to the broker chunk by chunk (never the whole file in
/// memory) and returns its verdict.
async fn verify_one(
    client: &mut AdminClient<Channel>,
    path: &Path,
) -> Result<VerifyAuditExportResponse, AdminError> {
    let file = std::fs::File::open(path).map_err(|source| AdminError::File {
        path: path.display().to_string(),
        source,
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut chunk = AuditExportChunk::default();
        let mut bytes = 0;
        for line in std::io::BufReader::new(file).lines() {
            let line = line?;
            bytes += line.len();
            chunk.lines.push(line);
            if bytes >= CHUNK_BYTES {
                bytes = 0;
                if tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(());
                }
            }
        }
        let _ = tx.blocking_send(chunk);
        Ok(())
    });
    let report = client
        .verify_audit_export(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    match reader.join() {
        Ok(Ok(())) => Ok(report),
        Ok(Err(e)) => Err(AdminError::File {
            path: path.display().to_string(),
            source: e,
        }),
        Err(_) => Err(AdminError::Output("the file reader failed".to_owned())),
    }
}

/// Verifies `files` in order; fails on the first broken file or gap.
pub async fn verify_exports(
    client: &mut AdminClient<Channel>,
    files: &[PathBuf],
    out: Output,
) -> Result<(), AdminError> {
    let mut previous: Option<(&Path, VerifyAuditExportResponse)> = None;
    let mut results = Vec::new();
    for path in files {
        let report = verify_one(client, path).await?;
        let gap = previous.as_ref().and_then(|(p, prev)| {
            (prev.sealed_seq != report.after_seq || prev.head != report.after_head).then(|| {
                format!(
                    "{} does not continue {}: it starts after entry {}, the one before ends at entry {}",
                    path.display(),
                    p.display(),
                    report.after_seq,
                    prev.sealed_seq
                )
            })
        });
        let text = if report.intact {
            format!(
                "audit export {} intact: entries {}..{} ({} entries), sealed by the signed cut at entry {}, head {}",
                path.display(),
                report.after_seq + 1,
                report.sealed_seq,
                report.entries,
                report.sealed_seq,
                report.head
            )
        } else {
            format!(
                "audit export {} BROKEN at line {}{}: {}",
                path.display(),
                report.line,
                if report.broken_at > 0 {
                    format!(" (entry {})", report.broken_at)
                } else {
                    String::new()
                },
                report.problem
            )
        };
        results.push(json!({
            "file": path.display().to_string(),
            "intact": report.intact,
            "entries": report.entries,
            "after_seq": report.after_seq,
            "sealed_seq": report.sealed_seq,
            "head": report.head,
            "broken_line": (!report.intact).then_some(report.line),
            "broken_at": (report.broken_at > 0).then_some(report.broken_at),
            "problem": (!report.intact).then(|| report.problem.clone()),
        }));
        if out == Output::Table {
            emit(&text)?;
        }
        if let Some(gap) = gap {
            if out == Output::Json {
                emit(&json_text(&json!(results)))?;
            }
            return Err(AdminError::Output(gap));
        }
        if !report.intact {
            if out == Output::Json {
                emit(&json_text(&json!(results)))?;
            }
            return Err(AdminError::Output(format!(
                "audit export {} is broken",
                path.display()
            )));
        }
        previous = Some((path, report));
    }
    if out == Output::Json {
        emit(&json_text(&json!(results)))?;
    }
    Ok(())
}
