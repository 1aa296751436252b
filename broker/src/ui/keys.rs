//! `GET /ui/keys`: each environment's CAs and JWT keys with their state
//! and schedule (what `credbroker keys list` shows).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::html::Html;
use super::{layout, login, when};
use crate::broker::Broker;

fn nonzero(t: i64) -> Option<i64> {
    (t != 0).then_some(t)
}

/// The page.
pub async fn page(State(broker): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let session = match login::require(&broker, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let keys = match crate::api::keys_api::list(&broker, "") {
        Ok(k) => k.keys,
        Err(e) => return layout::message(StatusCode::SERVICE_UNAVAILABLE, "Keys", e.message()),
    };
    let mut body = Html::new();
    body.table(
        "keys",
        &[
            "env",
            "kind",
            "id",
            "state",
            "created",
            "activates",
            "leaves published sets",
            "expires",
            "retired because",
        ],
        &keys,
        |h, k| {
            h.cell(&k.env).cell(&k.kind);
            h.raw("<td><code>").text(&k.id).raw("</code></td>");
            h.cell(&k.state)
                .cell(&when(nonzero(k.created_at)))
                .cell(&when(nonzero(k.activates_at)))
                .cell(&when(nonzero(k.unpublish_at)))
                .cell(&when(nonzero(k.not_after)))
                .cell(&k.retire_reason);
        },
    );
    layout::page(&session, "Keys", None, body)
}
