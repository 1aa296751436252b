//! The `/metrics` endpoint: the counters in [`super::Metrics`] plus gauges
//! read from the broker's state when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{ATTEST_METHODS, KINDS, Metrics, REASONS, rpc};
use crate::broker::Broker;
use crate::model::{IdentityStatus, unix_now};

/// An identity is stale when nothing was issued to it (or, never issued,
/// it was created) longer ago than this: `identity list --stale 30d`.
pub const STALE_AFTER_SECONDS: i64 = 30 * 24 * 60 * 60;

/// The Prometheus text format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn handler(State(broker): State<Arc<Broker>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&broker)).into_response()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped for the exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(broker: &Broker) -> String {
    let m = &broker.metrics;
    let mut out = String::with_capacity(16 * 1024);
    counters(&mut out, m);

    family(
        &mut out,
        "credbroker_rpc_duration_seconds",
        "histogram",
        "gRPC calls by method and status code, time until the response headers.",
    );
    for (method, codes) in m.rpc.iter().enumerate() {
        for (code, h) in codes.iter().enumerate() {
            if h.count() > 0 {
                let labels = format!(
                    "method=\"{}\",code=\"{}\"",
                    rpc::method_label(method),
                    rpc::CODES[code]
                );
                h.render(&mut out, "credbroker_rpc_duration_seconds", &labels);
            }
        }
    }
    family(
        &mut out,
        "credbroker_audit_commit_seconds",
        "histogram",
        "Time an issuing request waits for its audit records to be committed.",
    );
    m.audit_commit
        .render(&mut out, "credbroker_audit_commit_seconds", "");
    family(
        &mut out,
        "credbroker_store_operation_seconds",
        "histogram",
        "Store operation latency by operation.",
    );
    m.store_audit_append.render(
        &mut out,
        "credbroker_store_operation_seconds",
        "op=\"audit_append\"",
    );
    state_gauges(&mut out, broker);
    out
}

fn counters(out: &mut String, m: &Metrics) {
    family(
        out,
        "credbroker_credentials_issued_total",
        "counter",
        "Credentials handed out (after their audit record committed), by environment and kind.",
    );
    for (slot, kinds) in m.issued.iter().enumerate() {
        for (kind, c) in KINDS.iter().zip(kinds) {
            let env = escape(m.env_label(slot));
            let _ = writeln!(
                out,
                "credbroker_credentials_issued_total{{env=\"{env}\",kind=\"{kind}\"}} {}",
                c.get()
            );
        }
    }
    family(
        out,
        "credbroker_denials_total",
        "counter",
        "Refused requests (audited denials), by environment and reason class.",
    );
    for (slot, reasons) in m.denied.iter().enumerate() {
        for (reason, c) in REASONS.iter().zip(reasons) {
            let env = escape(m.env_label(slot));
            let _ = writeln!(
                out,
                "credbroker_denials_total{{env=\"{env}\",reason=\"{reason}\"}} {}",
                c.get()
            );
        }
    }
    family(
        out,
        "credbroker_attestations_total",
        "counter",
        "Attest calls, by evidence method and result.",
    );
    for (method, results) in ATTEST_METHODS.iter().zip(&m.attestations) {
        for (result, c) in ["success", "failure"].iter().zip(results) {
            let _ = writeln!(
                out,
                "credbroker_attestations_total{{method=\"{method}\",result=\"{result}\"}} {}",
                c.get()
            );
        }
    }
    family(
        out,
        "credbroker_anomalies_total",
        "counter",
        "Anomalies found at request time, by rule (see [anomalies]).",
    );
    for (kind, c) in crate::anomaly::Kind::ALL.iter().zip(&m.anomalies) {
        let _ = writeln!(
            out,
            "credbroker_anomalies_total{{kind=\"{}\"}} {}",
            kind.as_str(),
            c.get()
        );
    }
    family(
        out,
        "credbroker_revocation_subscribers",
        "gauge",
        "Open WatchRevocations streams.",
    );
    let _ = writeln!(
        out,
        "credbroker_revocation_subscribers {}",
        m.revocation_subscribers.load(Ordering::Relaxed)
    );
    family(
        out,
        "credbroker_leader",
        "gauge",
        "1 while this broker leads the brokers sharing its store (runs rotation and purges).",
    );
    let _ = writeln!(
        out,
        "credbroker_leader {}",
        m.leader.load(Ordering::Relaxed)
    );
    family(
        out,
        "credbroker_changes_applied_total",
        "counter",
        "Changes committed by other brokers sharing the store, applied from the change feed.",
    );
    let _ = writeln!(
        out,
        "credbroker_changes_applied_total {}",
        m.changes_applied.get()
    );
}

fn state_gauges(out: &mut String, broker: &Broker) {
    let now = unix_now();
    family(
        out,
        "credbroker_revocations_live",
        "gauge",
        "Revocations in force (dropped once everything they cover has expired).",
    );
    let _ = writeln!(
        out,
        "credbroker_revocations_live {}",
        broker.revocations.len()
    );
    family(
        out,
        "credbroker_audit_queue_depth",
        "gauge",
        "Audit log commands waiting for the writer.",
    );
    let _ = writeln!(
        out,
        "credbroker_audit_queue_depth {}",
        broker.audit.queue_depth()
    );

    let statuses = [
        IdentityStatus::Active,
        IdentityStatus::Disabled,
        IdentityStatus::Retired,
        IdentityStatus::Expired,
    ];
    let mut identities: BTreeMap<String, ([u64; 4], u64)> = broker
        .envs
        .iter()
        .map(|e| (e.name.to_string(), ([0; 4], 0)))
        .collect();
    broker
        .registry
        .census(now, |identity, status, last_issued| {
            let env = identity.key.env.as_str();
            if !identities.contains_key(env) {
                identities.insert(env.to_owned(), ([0; 4], 0));
            }
            let Some(entry) = identities.get_mut(env) else {
                return;
            };
            let s = statuses.iter().position(|s| *s == status).unwrap_or(0);
            entry.0[s] += 1;
            let last = if last_issued == 0 {
                identity.created_at
            } else {
                last_issued
            };
            if status == IdentityStatus::Active && last < now - STALE_AFTER_SECONDS {
                entry.1 += 1;
            }
        });
    family(
        out,
        "credbroker_identities",
        "gauge",
        "Registered identities, by environment and status.",
    );
    for (env, (counts, _)) in &identities {
        for (status, n) in statuses.iter().zip(counts) {
            let _ = writeln!(
                out,
                "credbroker_identities{{env=\"{}\",status=\"{}\"}} {n}",
                escape(env),
                status.as_str()
            );
        }
    }
    family(
        out,
        "credbroker_identities_stale",
        "gauge",
        "Active identities issued nothing for 30 days (never issued: created 30 days ago).",
    );
    for (env, (_, stale)) in &identities {
        let _ = writeln!(
            out,
            "credbroker_identities_stale{{env=\"{}\"}} {stale}",
            escape(env)
        );
    }
    family(
        out,
        "credbroker_key_expiry_seconds",
        "gauge",
        "Seconds until each environment's active CA (kind x509) or JWT key (kind jwt) expires.",
    );
    for (env, keys) in broker.keys.snapshot().iter() {
        let env = escape(env.as_str());
        if let Some((slot, _)) = keys.cas.active() {
            let _ = writeln!(
                out,
                "credbroker_key_expiry_seconds{{env=\"{env}\",kind=\"x509\"}} {}",
                slot.not_after - now
            );
        }
        if let Some((slot, _)) = keys.jwts.active() {
            let _ = writeln!(
                out,
                "credbroker_key_expiry_seconds{{env=\"{env}\",kind=\"jwt\"}} {}",
                slot.not_after - now
            );
        }
    }
}
