//! `GET /ui/revocations`: the revocations in force.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::html::Html;
use super::{layout, login, when};
use crate::broker::Broker;
use crate::model::unix_now;

/// The page.
pub async fn page(State(broker): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let session = match login::require(&broker, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    broker.revocations.prune(unix_now());
    let mut live = broker.revocations.after(0);
    live.reverse();
    let mut body = Html::new();
    body.elem(
        "p",
        &[],
        &format!("{} revocations in force, newest first", live.len()),
    );
    body.table(
        "revocations",
        &[
            "seq",
            "kind",
            "target",
            "reason",
            "by",
            "revoked",
            "covers until",
        ],
        &live,
        |h, r| {
            h.cell(&r.seq.to_string()).cell(r.target.kind());
            h.raw("<td><code>")
                .text(&r.target.value())
                .raw("</code></td>");
            h.cell(&r.reason)
                .cell(&r.operator)
                .cell(&when(Some(r.revoked_at)))
                .cell(&when(Some(r.covers_until)));
        },
    );
    layout::page(&session, "Revocations", None, body)
}
