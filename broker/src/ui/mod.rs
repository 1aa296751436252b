//! The web inventory for operators, served on the broker's HTTP port under
//! `/ui`: identities (search and filters), one identity (settings, usage,
//! outstanding credentials, recent audit, anomalies), revocations, audit
//! search and keys, with revoke, disable and retire forms.
//!
//! Server-rendered HTML without script, one file per page; every value is
//! escaped by [`html`]. Sign-in is by a one-time link from `credbroker ui`
//! ([`login`]); each form is checked by [`actions`].

pub mod actions;
mod audit;
pub mod config;
pub mod form;
pub mod html;
mod identities;
mod identity;
mod keys;
mod layout;
pub mod login;
mod revocations;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::Redirect;
use axum::routing::{get, post};

pub use config::UiConfig;
pub use login::UiSessions;

use crate::broker::Broker;

/// Form bodies are small; this is far above any real one.
const MAX_FORM_BODY: usize = 16 * 1024;

/// RFC 3339 (UTC) or `never`.
fn when(t: Option<i64>) -> String {
    t.map_or_else(|| "never".to_owned(), crate::model::rfc3339)
}

/// The `/ui` routes.
pub fn router() -> Router<Arc<Broker>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/identities") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/identities") }))
        .route("/ui/style.css", get(layout::style))
        .route("/ui/login", get(login::login_page).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/identities", get(identities::page))
        .route("/ui/identity", get(identity::page))
        .route("/ui/revocations", get(revocations::page))
        .route("/ui/audit", get(audit::page))
        .route("/ui/keys", get(keys::page))
        .route("/ui/revoke/jti", post(actions::revoke_jti))
        .route("/ui/revoke/serial", post(actions::revoke_serial))
        .route("/ui/revoke/identity", post(actions::revoke_identity))
        .route("/ui/identity/disable", post(actions::disable))
        .route("/ui/identity/retire", post(actions::retire))
        .layer(DefaultBodyLimit::max(MAX_FORM_BODY))
}
