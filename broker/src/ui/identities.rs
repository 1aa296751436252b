//! `GET /ui/identities`: every identity, searchable and filtered by
//! environment, owner, status and staleness.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::form::Fields;
use super::html::{Html, url};
use super::{layout, login, when};
use crate::broker::Broker;
use crate::model::{EnvName, parse_duration, unix_now};
use crate::policy::IdentityView;

const STATUSES: [&str; 4] = ["active", "disabled", "retired", "expired"];

fn matches(v: &IdentityView, q: &str, status: &str, stale_cutoff: Option<i64>) -> bool {
    let id = &v.identity;
    let q = q.to_lowercase();
    let text_ok = q.is_empty()
        || [
            id.key.to_string(),
            id.owner.clone(),
            id.purpose.clone(),
            id.spiffe_id.to_string(),
        ]
        .iter()
        .any(|f| f.to_lowercase().contains(&q));
    let status_ok = status.is_empty() || v.status.as_str() == status;
    // Stale as `identity list --stale`: nothing issued within the window
    // (never issued counts once the identity itself is that old).
    let stale_ok =
        stale_cutoff.is_none_or(|cutoff| id.last_issued_at.unwrap_or(id.created_at) < cutoff);
    text_ok && status_ok && stale_ok
}

fn select(h: &mut Html, name: &'static str, label: &str, options: &[String], chosen: &str) {
    h.raw("<label>").text(label);
    h.open("select", &[("name", Some(name))]);
    h.elem("option", &[("value", Some(""))], "any");
    for o in options {
        let selected = (o == chosen).then_some("");
        h.elem("option", &[("value", Some(o)), ("selected", selected)], o);
    }
    h.raw("</select></label>");
}

/// The list page.
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
    let (q, env, owner, status, stale) = (
        f.get("q"),
        f.get("env"),
        f.get("owner"),
        f.get("status"),
        f.get("stale"),
    );
    let now = unix_now();
    let env_name = match env {
        "" => None,
        e => match EnvName::new(e) {
            Ok(n) => Some(n),
            Err(e) => {
                return layout::message(StatusCode::BAD_REQUEST, "Bad filter", &e.to_string());
            }
        },
    };
    let stale_cutoff = match stale {
        "" => None,
        s => match parse_duration(s) {
            Ok(d) => Some(now - d.as_secs() as i64),
            Err(e) => {
                return layout::message(
                    StatusCode::BAD_REQUEST,
                    "Bad filter",
                    &format!("stale: {e}"),
                );
            }
        },
    };
    let owner_filter = (!owner.is_empty()).then_some(owner);
    let views: Vec<IdentityView> = broker
        .registry
        .list(env_name.as_ref(), owner_filter, now)
        .into_iter()
        .filter(|v| matches(v, q, status, stale_cutoff))
        .collect();
    let counts = crate::api::outstanding::count(&broker)
        .await
        .unwrap_or_default();

    let mut body = Html::new();
    body.open(
        "form",
        &[
            ("class", Some("filter")),
            ("method", Some("get")),
            ("action", Some("/ui/identities")),
            ("id", Some("search")),
        ],
    );
    body.raw("<label>search")
        .open(
            "input",
            &[
                ("name", Some("q")),
                ("value", Some(q)),
                ("placeholder", Some("name, owner, purpose")),
            ],
        )
        .raw("</label>");
    let envs: Vec<String> = broker.envs.iter().map(|e| e.name.to_string()).collect();
    select(&mut body, "env", "environment", &envs, env);
    body.raw("<label>owner")
        .open("input", &[("name", Some("owner")), ("value", Some(owner))])
        .raw("</label>");
    let statuses: Vec<String> = STATUSES.iter().map(|s| (*s).to_owned()).collect();
    select(&mut body, "status", "status", &statuses, status);
    body.raw("<label>stale for")
        .open(
            "input",
            &[
                ("name", Some("stale")),
                ("value", Some(stale)),
                ("placeholder", Some("30d")),
                ("size", Some("6")),
            ],
        )
        .raw("</label><button type=\"submit\">Search</button></form>");
    body.elem("p", &[], &format!("{} identities", views.len()));
    body.table(
        "identities",
        &[
            "identity",
            "owner",
            "purpose",
            "status",
            "last issued",
            "last seen",
            "outstanding",
            "anomalies",
        ],
        &views,
        |h, v| {
            let id = &v.identity;
            let key = id.key.to_string();
            h.raw("<td>")
                .link(
                    &url(
                        "/ui/identity",
                        &[("env", id.key.env.as_str()), ("name", id.key.name.as_str())],
                    ),
                    &key,
                )
                .raw("</td>");
            h.cell(&id.owner)
                .cell(&id.purpose)
                .cell(v.status.as_str())
                .cell(&when(id.last_issued_at))
                .cell(&when(id.last_seen_at))
                .cell(&counts.get(&key).copied().unwrap_or(0).to_string());
            let findings = broker.anomalies.recent(&id.key).len();
            if findings > 0 {
                h.elem(
                    "td",
                    &[("class", Some("anomaly"))],
                    &format!("⚠ {findings}"),
                );
            } else {
                h.cell("");
            }
        },
    );
    layout::page(&session, "Identities", None, body)
}
