//! Rendering admin results as a table for people or JSON for scripts.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use credbroker_proto::v1::{
    AuditEvent, CreateJoinTokenResponse, Identity, Revocation, VerifyAuditResponse,
};
use serde_json::{Value, json};

use super::Output;
use super::admin::AdminError;

pub(super) fn time(secs: i64) -> Value {
    if secs == 0 {
        Value::Null
    } else {
        Value::String(
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs as u64))
                .to_string(),
        )
    }
}

pub(super) fn time_text(secs: i64) -> String {
    match time(secs) {
        Value::String(s) => s,
        _ => "-".to_owned(),
    }
}

/// The JSON form of an identity (times as RFC 3339, `null` when unset).
pub fn identity_json(id: &Identity) -> Value {
    json!({
        "env": id.env,
        "name": id.name,
        "spiffe_id": id.spiffe_id,
        "status": id.status,
        "owner": id.owner,
        "purpose": id.purpose,
        "selectors": id.selectors.iter().map(|s| format!("{}={}", s.key, s.value)).collect::<Vec<_>>(),
        "parent": (!id.parent.is_empty()).then_some(&id.parent),
        "audiences": id.audiences,
        "scopes": id.scopes,
        "jwt_ttl_seconds": id.jwt_ttl_seconds,
        "x509_ttl_seconds": id.x509_ttl_seconds,
        "expires_at": time(id.expires_at),
        "enabled": id.enabled,
        "retired_at": time(id.retired_at),
        "created_at": time(id.created_at),
        "updated_at": time(id.updated_at),
        "last_issued_at": time(id.last_issued_at),
        "last_seen_at": time(id.last_seen_at),
        "outstanding_credentials": id.outstanding_credentials,
        "allow_cidrs": id.allow_cidrs,
        "require_binding": id.require_binding,
        "on_anomaly": id.on_anomaly,
        "reachable_by": id.reachable_by,
    })
}

pub(super) fn emit(text: &str) -> Result<(), AdminError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").map_err(|e| AdminError::Output(e.to_string()))
}

pub(super) fn json_text(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// Prints one identity.
pub fn print_identity(id: &Identity, out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&identity_json(id)));
    }
    let join = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let selectors: Vec<String> = id
        .selectors
        .iter()
        .map(|s| format!("{}={}", s.key, s.value))
        .collect();
    let rows = [
        ("identity", format!("{}/{}", id.env, id.name)),
        ("spiffe id", id.spiffe_id.clone()),
        ("status", id.status.clone()),
        ("owner", id.owner.clone()),
        ("purpose", id.purpose.clone()),
        ("selectors", join(&selectors)),
        (
            "parent",
            if id.parent.is_empty() {
                "-".to_owned()
            } else {
                id.parent.clone()
            },
        ),
        ("attested by", join(&id.reachable_by)),
        ("allow cidrs", join(&id.allow_cidrs)),
        (
            "jwt binding",
            if id.require_binding {
                "required (cnf: presented over mTLS by its certificate)"
            } else {
                "none (bearer)"
            }
            .to_owned(),
        ),
        ("on anomaly", id.on_anomaly.clone()),
        ("audiences", join(&id.audiences)),
        ("scopes", join(&id.scopes)),
        (
            "jwt ttl",
            crate::model::format_duration(Duration::from_secs(id.jwt_ttl_seconds.into())),
        ),
        (
            "x509 ttl",
            crate::model::format_duration(Duration::from_secs(id.x509_ttl_seconds.into())),
        ),
        ("expires at", time_text(id.expires_at)),
        ("created", time_text(id.created_at)),
        ("updated", time_text(id.updated_at)),
        ("last issued", time_text(id.last_issued_at)),
        ("last seen", time_text(id.last_seen_at)),
        ("outstanding", id.outstanding_credentials.to_string()),
    ];
    let text: Vec<String> = rows.iter().map(|(k, v)| format!("{k:<12} {v}")).collect();
    emit(&text.join("\n"))
}

/// Prints a list of identities.
pub fn print_identities(ids: &[Identity], out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&Value::Array(
            ids.iter().map(identity_json).collect(),
        )));
    }
    let header = [
        "ENV",
        "NAME",
        "STATUS",
        "OWNER",
        "PURPOSE",
        "LAST ISSUED",
        "LAST SEEN",
        "OUT",
        "EXPIRES",
    ];
    let rows: Vec<[String; 9]> = ids
        .iter()
        .map(|id| {
            [
                id.env.clone(),
                id.name.clone(),
                id.status.clone(),
                id.owner.clone(),
                id.purpose.clone(),
                time_text(id.last_issued_at),
                time_text(id.last_seen_at),
                id.outstanding_credentials.to_string(),
                time_text(id.expires_at),
            ]
        })
        .collect();
    emit(&table(&header, &rows))
}

/// Aligned columns.
pub(super) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut text = vec![line(&header.map(str::to_owned))];
    text.extend(rows.iter().map(|r| line(r)));
    text.join("\n")
}

fn time_ms(ms: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
        .to_string()
}

fn or_none(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_owned())
    }
}

/// Prints audit entries.
pub fn print_audit(events: &[AuditEvent], out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        let list: Vec<Value> = events
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq,
                    "at": time_ms(e.at_ms),
                    "action": e.action,
                    "decision": e.decision,
                    "actor": or_none(&e.actor),
                    "peer": or_none(&e.peer),
                    "identity": or_none(&e.identity),
                    "env": or_none(&e.env),
                    "credential": or_none(&e.credential),
                    "jti": or_none(&e.jti),
                    "serial": or_none(&e.serial),
                    "expires_at": time(e.expires_at),
                    "reason": or_none(&e.reason),
                    "detail": or_none(&e.detail),
                    "evidence": or_none(&e.evidence),
                    "hash": e.hash,
                    "prev_hash": e.prev_hash,
                })
            })
            .collect();
        return emit(&json_text(&Value::Array(list)));
    }
    let header = [
        "SEQ",
        "TIME",
        "ACTION",
        "DECISION",
        "IDENTITY",
        "ACTOR",
        "PEER",
        "CREDENTIAL",
        "REASON / DETAIL",
    ];
    let rows: Vec<[String; 9]> = events
        .iter()
        .map(|e| {
            let credential = match (e.jti.is_empty(), e.serial.is_empty()) {
                (false, _) => format!("jti {}", e.jti),
                (_, false) => format!("serial {}", e.serial),
                _ => "-".to_owned(),
            };
            let why = if e.reason.is_empty() {
                &e.detail
            } else {
                &e.reason
            };
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            [
                e.seq.to_string(),
                time_ms(e.at_ms),
                e.action.clone(),
                e.decision.clone(),
                dash(&e.identity),
                dash(&e.actor),
                dash(&e.peer),
                credential,
                dash(why),
            ]
        })
        .collect();
    emit(&table(&header, &rows))
}

/// Prints the result of `audit verify`.
pub fn print_verification(report: &VerifyAuditResponse, out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&json!({
            "intact": report.intact,
            "entries": report.entries,
            "head": or_none(&report.head),
            "broken_at": (!report.intact).then_some(report.broken_at),
            "problem": or_none(&report.problem),
            "checkpoint_seq": (report.checkpoint_seq != 0).then_some(report.checkpoint_seq),
            "retention_cut_seq": (report.cut_seq != 0).then_some(report.cut_seq),
        })));
    }
    if report.intact {
        let sealed = if report.checkpoint_seq == 0 {
            "no checkpoint yet".to_owned()
        } else {
            format!(
                "matches the signed checkpoint at entry {}",
                report.checkpoint_seq
            )
        };
        let cut = if report.cut_seq == 0 {
            String::new()
        } else {
            format!(
                " (entries 1..{} were exported and deleted by retention; checked from its signed cut)",
                report.cut_seq
            )
        };
        emit(&format!(
            "audit log intact: {} entries{cut}, head {}; {sealed}",
            report.entries,
            if report.head.is_empty() {
                "-"
            } else {
                &report.head
            }
        ))
    } else {
        emit(&format!(
            "audit log BROKEN at entry {}: {} ({} entries verified before it)",
            report.broken_at, report.problem, report.entries
        ))
    }
}

/// Prints a new join token: in table mode the bare token on stdout (so
/// `TOKEN=$(credbroker token create …)` works) and the details on stderr.
pub fn print_token(token: &CreateJoinTokenResponse, out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        return emit(&json_text(&json!({
            "token": token.token,
            "token_id": token.token_id,
            "expires_at": time(token.expires_at),
            "uses": token.uses,
        })));
    }
    eprintln!(
        "join token {} expires {} ({} use{}); it is shown only once",
        token.token_id,
        time_text(token.expires_at),
        token.uses,
        if token.uses == 1 { "" } else { "s" }
    );
    emit(&token.token)
}

/// Prints revocations.
pub fn print_revocations(revs: &[Revocation], out: Output) -> Result<(), AdminError> {
    if out == Output::Json {
        let list: Vec<Value> = revs
            .iter()
            .map(|r| {
                json!({
                    "seq": r.seq,
                    "kind": r.kind,
                    "value": r.value,
                    "reason": r.reason,
                    "operator": r.operator,
                    "revoked_at": time(r.revoked_at),
                    "covers_until": time(r.covers_until),
                })
            })
            .collect();
        return emit(&json_text(&Value::Array(list)));
    }
    let header = [
        "SEQ",
        "KIND",
        "VALUE",
        "REVOKED AT",
        "UNTIL",
        "BY",
        "REASON",
    ];
    let rows: Vec<[String; 7]> = revs
        .iter()
        .map(|r| {
            [
                r.seq.to_string(),
                r.kind.clone(),
                r.value.clone(),
                time_text(r.revoked_at),
                time_text(r.covers_until),
                r.operator.clone(),
                r.reason.clone(),
            ]
        })
        .collect();
    emit(&table(&header, &rows))
}
