//! `GET /ui/audit`: the audit log searched by identity, JWT id, serial,
//! actor, environment and time, newest first.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::form::Fields;
use super::html::{Html, url};
use super::{layout, login};
use crate::audit::{AuditFilter, ChainedEntry};
use crate::broker::Broker;
use crate::model::{parse_duration, unix_now};

/// Most entries one search shows.
const MAX_LIMIT: i64 = 1000;

fn ms_rfc3339(ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

/// A table of audit entries (also on the identity page).
pub fn entries_table(entries: &[ChainedEntry]) -> Html {
    let mut h = Html::new();
    h.table(
        "audit",
        &[
            "seq",
            "time",
            "action",
            "decision",
            "actor",
            "identity",
            "peer",
            "credential",
            "reason / detail",
        ],
        entries,
        |h, c| {
            let e = &c.entry;
            let class = match e.action.as_str() {
                "anomaly" => Some("anomaly"),
                _ => None,
            };
            h.cell(&c.seq.to_string()).cell(&ms_rfc3339(e.at_ms));
            h.elem("td", &[("class", class)], &e.action);
            h.cell(&e.decision).cell(e.actor.as_deref().unwrap_or(""));
            match &e.identity {
                Some(key) => match key.split_once('/') {
                    Some((env, name)) => {
                        h.raw("<td>")
                            .link(&url("/ui/identity", &[("env", env), ("name", name)]), key)
                            .raw("</td>");
                    }
                    None => {
                        h.cell(key);
                    }
                },
                None => {
                    h.cell("");
                }
            }
            h.cell(e.peer.as_deref().unwrap_or(""));
            let credential = e
                .jti
                .as_deref()
                .map(|j| format!("jti {j}"))
                .or_else(|| e.serial.as_deref().map(|s| format!("serial {s}")))
                .unwrap_or_default();
            h.cell(&credential);
            h.cell(e.reason.as_deref().or(e.detail.as_deref()).unwrap_or(""));
        },
    );
    h
}

fn input(h: &mut Html, name: &'static str, label: &str, value: &str, placeholder: &str) {
    h.raw("<label>").text(label);
    h.open(
        "input",
        &[
            ("name", Some(name)),
            ("value", Some(value)),
            ("placeholder", Some(placeholder)),
        ],
    );
    h.raw("</label>");
}

/// The page.
pub async fn page(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let session = match login::require(&broker, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let f = Fields::query(query);
    let opt = |name: &str| Some(f.get(name).to_owned()).filter(|v| !v.is_empty());
    let since_ms = match f.get("since") {
        "" => None,
        s => match parse_duration(s) {
            Ok(d) => Some((unix_now() - d.as_secs() as i64) * 1000),
            Err(e) => {
                return layout::message(
                    StatusCode::BAD_REQUEST,
                    "Bad search",
                    &format!("since: {e}"),
                );
            }
        },
    };
    let limit = f
        .get("limit")
        .parse::<i64>()
        .unwrap_or(100)
        .clamp(1, MAX_LIMIT);
    let filter = AuditFilter {
        identity: opt("identity"),
        jti: opt("jti"),
        serial: opt("serial").map(|s| s.to_ascii_uppercase()),
        actor: opt("actor"),
        env: opt("env"),
        since_ms,
        until_ms: None,
        limit,
    };
    let entries = match broker.audit.flush().await {
        Ok(()) => broker.store.query_audit(&filter).await,
        Err(e) => return layout::message(StatusCode::SERVICE_UNAVAILABLE, "Audit", &e.to_string()),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(e) => return layout::message(StatusCode::SERVICE_UNAVAILABLE, "Audit", &e.to_string()),
    };
    let mut body = Html::new();
    body.open(
        "form",
        &[
            ("class", Some("filter")),
            ("method", Some("get")),
            ("action", Some("/ui/audit")),
        ],
    );
    input(
        &mut body,
        "identity",
        "identity",
        f.get("identity"),
        "env/name",
    );
    input(&mut body, "jti", "JWT id", f.get("jti"), "");
    input(&mut body, "serial", "serial", f.get("serial"), "hex");
    input(
        &mut body,
        "actor",
        "actor",
        f.get("actor"),
        "operator or SPIFFE ID",
    );
    input(&mut body, "env", "environment", f.get("env"), "");
    input(&mut body, "since", "within", f.get("since"), "7d");
    input(&mut body, "limit", "at most", &limit.to_string(), "100");
    body.raw("<button type=\"submit\">Search</button></form>");
    body.elem(
        "p",
        &[],
        &format!("{} entries, newest first", entries.len()),
    );
    body.append(entries_table(&entries));
    layout::page(&session, "Audit", None, body)
}
