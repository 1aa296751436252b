//! `GET /ui/identity?env=E&name=N`: one identity — its settings, usage,
//! outstanding credentials, recent audit entries and anomalies — with the
//! forms the operator's role allows (revoke, disable, retire).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::actions::{self, Action};
use super::form::Fields;
use super::html::{Html, url};
use super::login::Session;
use super::{layout, login, when};
use crate::audit::AuditFilter;
use crate::broker::Broker;
use crate::model::{EnvName, IdentityKey, IdentityName, format_duration, unix_now};

/// Recent audit entries shown.
const RECENT_AUDIT: i64 = 20;

/// The messages a redirect after a form may show (by code, so a link
/// cannot make the page say anything else).
fn flash(code: &str) -> Option<&'static str> {
    match code {
        "revoked" => {
            Some("Revoked. The revocation is in force and was pushed to every subscriber.")
        }
        "disabled" => Some("Identity disabled: it gets no new credentials until enabled."),
        "retired" => Some("Identity retired for good."),
        _ => None,
    }
}

fn row(h: &mut Html, term: &str, value: &str) {
    h.elem("dt", &[], term).elem("dd", &[], value);
}

fn list_or_none(items: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The identity's key from the fields `env` and `name`, or what is wrong.
pub fn key_of(f: &Fields) -> Result<IdentityKey, String> {
    Ok(IdentityKey {
        env: EnvName::new(f.get("env")).map_err(|e| e.to_string())?,
        name: IdentityName::new(f.get("name")).map_err(|e| e.to_string())?,
    })
}

/// A form for `action` on `key` (and the credential `value` for `jti`
/// and `serial` revocations): a reason and a confirmation box, both
/// required here and checked again by the server.
fn action_form(
    h: &mut Html,
    session: &Session,
    key: &IdentityKey,
    action: Action,
    value: &str,
    id: &str,
) {
    h.open(
        "form",
        &[
            ("class", Some("act")),
            ("method", Some("post")),
            ("action", Some(action.path())),
            ("id", Some(id)),
        ],
    )
    .hidden("csrf", &session.csrf)
    .hidden("env", key.env.as_str())
    .hidden("name", key.name.as_str())
    .hidden("value", value)
    .open(
        "input",
        &[
            ("name", Some("reason")),
            ("placeholder", Some("reason (required)")),
            ("required", Some("")),
            ("size", Some("18")),
        ],
    )
    .raw("<label>")
    .open(
        "input",
        &[
            ("type", Some("checkbox")),
            ("name", Some("confirm")),
            ("value", Some("yes")),
            ("required", Some("")),
        ],
    )
    .text(&format!(" confirm {}", action.verb()))
    .raw("</label>")
    .elem(
        "button",
        &[("type", Some("submit")), ("class", Some("danger"))],
        action.button(),
    )
    .raw("</form>");
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
    let key = match key_of(&f) {
        Ok(k) => k,
        Err(e) => return layout::message(StatusCode::BAD_REQUEST, "Bad identity", &e),
    };
    let now = unix_now();
    let Some(view) = broker.registry.view(&key, now) else {
        return layout::message(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("identity {key} not found"),
        );
    };
    let id = &view.identity;
    let credentials = crate::api::outstanding::of_identity(&broker, &key)
        .await
        .unwrap_or_default();
    let audit = match broker.audit.flush().await {
        Ok(()) => broker
            .store
            .query_audit(&AuditFilter {
                identity: Some(key.to_string()),
                limit: RECENT_AUDIT,
                ..AuditFilter::default()
            })
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let findings = broker.anomalies.recent(&key);

    let mut body = Html::new();
    if !findings.is_empty() {
        body.elem(
            "p",
            &[
                ("class", Some("error anomaly")),
                ("id", Some("anomaly-flag")),
            ],
            &format!(
                "⚠ {} anomal{} detected: see below",
                findings.len(),
                if findings.len() == 1 { "y" } else { "ies" }
            ),
        );
    }
    body.raw("<dl id=\"settings\">");
    row(&mut body, "SPIFFE ID", &id.spiffe_id.to_string());
    row(&mut body, "status", view.status.as_str());
    row(&mut body, "owner", &id.owner);
    row(&mut body, "purpose", &id.purpose);
    row(
        &mut body,
        "selectors",
        &list_or_none(
            id.selectors
                .iter()
                .map(|s| format!("{}={}", s.key, s.value)),
        ),
    );
    row(
        &mut body,
        "audiences",
        &list_or_none(id.audiences.iter().map(ToString::to_string)),
    );
    row(
        &mut body,
        "scopes",
        &list_or_none(id.scopes.iter().map(ToString::to_string)),
    );
    row(&mut body, "JWT TTL", &format_duration(id.jwt_ttl));
    row(&mut body, "X.509 TTL", &format_duration(id.x509_ttl));
    row(
        &mut body,
        "parent",
        &id.parent
            .as_ref()
            .map_or("none".into(), ToString::to_string),
    );
    row(
        &mut body,
        "allowed networks",
        &list_or_none(id.allow_cidrs.iter().map(ToString::to_string)),
    );
    row(
        &mut body,
        "bound JWTs",
        if id.require_binding { "required" } else { "no" },
    );
    row(&mut body, "on anomaly", id.on_anomaly.as_str());
    row(&mut body, "expires", &when(id.expires_at));
    row(&mut body, "created", &when(Some(id.created_at)));
    row(&mut body, "last issued", &when(id.last_issued_at));
    row(&mut body, "last seen", &when(id.last_seen_at));
    body.raw("</dl>");

    let may = |a: Action| actions::allowed(&session, a);
    body.elem(
        "h2",
        &[],
        &format!("Outstanding credentials ({})", credentials.len()),
    );
    let can_revoke = may(Action::RevokeJti);
    let mut headers_row = vec!["kind", "id", "issued", "audit"];
    if can_revoke {
        headers_row.push("revoke");
    }
    body.table("credentials", &headers_row, &credentials, |h, c| {
        let (kind, value, action) = match (&c.jti, &c.serial) {
            (Some(j), _) => ("JWT", j.as_str(), Action::RevokeJti),
            (None, Some(s)) => ("X.509", s.as_str(), Action::RevokeSerial),
            (None, None) => ("?", "", Action::RevokeJti),
        };
        h.cell(kind)
            .raw("<td><code>")
            .text(value)
            .raw("</code></td>");
        h.cell(&when(Some(c.issued_at)));
        let filter = if action == Action::RevokeJti {
            "jti"
        } else {
            "serial"
        };
        h.raw("<td>")
            .link(&url("/ui/audit", &[(filter, value)]), "who used it")
            .raw("</td>");
        if can_revoke && !value.is_empty() {
            h.raw("<td>");
            action_form(h, &session, &key, action, value, &format!("revoke-{value}"));
            h.raw("</td>");
        }
    });

    if may(Action::RevokeIdentity) || may(Action::Disable) || may(Action::Retire) {
        body.elem("h2", &[], "Actions");
        for (action, form_id) in [
            (Action::RevokeIdentity, "revoke-identity"),
            (Action::Disable, "disable"),
            (Action::Retire, "retire"),
        ] {
            if may(action) {
                action_form(&mut body, &session, &key, action, "", form_id);
            }
        }
    }

    body.elem("h2", &[], &format!("Anomalies ({})", findings.len()));
    body.table(
        "anomalies",
        &["when", "kind", "details"],
        &findings,
        |h, a| {
            h.cell(&when(Some(a.at)));
            h.elem("td", &[("class", Some("anomaly"))], a.kind.as_str());
            h.cell(&a.detail);
        },
    );

    body.elem("h2", &[], "Recent audit");
    body.raw("<p>")
        .link(
            &url("/ui/audit", &[("identity", &key.to_string())]),
            "search all of its audit entries",
        )
        .raw("</p>");
    body.append(super::audit::entries_table(&audit));
    let flash = flash(f.get("done"));
    layout::page(&session, &key.to_string(), flash, body)
}
