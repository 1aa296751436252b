//! The inventory's mutating forms: revoke (a JWT, a certificate, an
//! identity), disable, retire. Each POST is checked here, whatever the
//! page showed: a live session, its CSRF token, the operator's role for
//! the matching Admin RPC (an auditor's forged POST is refused with 403),
//! a reason and the confirmation box. The change itself runs through the
//! same code as the Admin RPC and is audited with the operator's name.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use credbroker_proto::v1::{IdentityRef, RevokeRequest, revoke_request};

use super::form::Fields;
use super::html::url;
use super::identity::key_of;
use super::layout;
use super::login::{self, Session};
use crate::api::identity_change::{self, IdentityChange};
use crate::api::revoke_api;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::policy::roles::required_role;

/// What a form asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Revoke one JWT.
    RevokeJti,
    /// Revoke one certificate.
    RevokeSerial,
    /// Revoke everything the identity holds (and disable it).
    RevokeIdentity,
    /// Disable the identity.
    Disable,
    /// Retire the identity for good.
    Retire,
}

impl Action {
    /// The Admin RPC whose role decides.
    pub fn rpc(self) -> &'static str {
        match self {
            Self::RevokeJti | Self::RevokeSerial | Self::RevokeIdentity => "Revoke",
            Self::Disable => IdentityChange::Disable.rpc(),
            Self::Retire => IdentityChange::Retire.rpc(),
        }
    }

    /// Where its form posts.
    pub fn path(self) -> &'static str {
        match self {
            Self::RevokeJti => "/ui/revoke/jti",
            Self::RevokeSerial => "/ui/revoke/serial",
            Self::RevokeIdentity => "/ui/revoke/identity",
            Self::Disable => "/ui/identity/disable",
            Self::Retire => "/ui/identity/retire",
        }
    }

    /// What the confirmation box confirms.
    pub fn verb(self) -> &'static str {
        match self {
            Self::RevokeJti => "revoking this JWT",
            Self::RevokeSerial => "revoking this certificate",
            Self::RevokeIdentity => "revoking everything this identity holds (it is disabled too)",
            Self::Disable => "disabling this identity",
            Self::Retire => "retiring this identity for good",
        }
    }

    /// The button's label.
    pub fn button(self) -> &'static str {
        match self {
            Self::RevokeJti | Self::RevokeSerial => "Revoke",
            Self::RevokeIdentity => "Revoke all",
            Self::Disable => "Disable",
            Self::Retire => "Retire",
        }
    }

    fn done(self) -> &'static str {
        match self {
            Self::RevokeJti | Self::RevokeSerial | Self::RevokeIdentity => "revoked",
            Self::Disable => "disabled",
            Self::Retire => "retired",
        }
    }
}

/// Whether the session's operator may do `action`.
pub fn allowed(session: &Session, action: Action) -> bool {
    session.operator.role >= required_role(action.rpc())
}

/// Compares a form's CSRF token with the session's in constant time.
pub fn csrf_ok(session: &Session, presented: &str) -> bool {
    let (a, b) = (session.csrf.as_bytes(), presented.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refused(status: StatusCode, why: &str) -> Response {
    layout::message(status, "Refused", why)
}

async fn act(broker: Arc<Broker>, headers: HeaderMap, body: &[u8], action: Action) -> Response {
    let session = match login::require(&broker, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let f = Fields::parse(body);
    let op = &session.operator;
    let mut audit = AuditRecord::new(&broker.audit, audit_action(action), None);
    audit.actor = Some(op.name.clone());
    if !csrf_ok(&session, f.get("csrf")) {
        audit.denied("permission_denied: web form without this session's CSRF token");
        return refused(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token: reload the page and try again",
        );
    }
    if !allowed(&session, action) {
        let needed = required_role(action.rpc());
        let why = format!(
            "{} needs role {needed}; operator {} has role {}",
            action.rpc(),
            op.name,
            op.role
        );
        audit.denied(&format!("permission_denied: {why}"));
        return refused(StatusCode::FORBIDDEN, &why);
    }
    let key = match key_of(&f) {
        Ok(k) => k,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e),
    };
    let reason = f.get("reason");
    if reason.is_empty() || f.get("confirm") != "yes" {
        audit.identity = Some(key.to_string());
        audit.denied("invalid_argument: a reason and the confirmation box are required");
        return refused(
            StatusCode::BAD_REQUEST,
            "give a reason and tick the confirmation box",
        );
    }
    let value = f.get("value").to_owned();
    let result = match action {
        Action::Disable | Action::Retire => {
            let change = if action == Action::Disable {
                IdentityChange::Disable
            } else {
                IdentityChange::Retire
            };
            identity_change::apply(&broker, &key, change, reason, &mut audit)
                .await
                .map(|_| ())
        }
        Action::RevokeJti | Action::RevokeSerial | Action::RevokeIdentity => {
            let target = match action {
                Action::RevokeJti => revoke_request::Target::Jti(value),
                Action::RevokeSerial => revoke_request::Target::Serial(value),
                _ => revoke_request::Target::Identity(IdentityRef {
                    env: key.env.to_string(),
                    name: key.name.to_string(),
                }),
            };
            let req = RevokeRequest {
                target: Some(target),
                reason: reason.to_owned(),
            };
            let result = revoke_api::revoke(&broker, req, &mut audit)
                .await
                .map(|_| ());
            if let Err(e) = &result {
                audit.denied(&crate::api::status::reason(e));
            }
            result
        }
    };
    match result {
        // Post/redirect/get: a reload does not repeat the action.
        Ok(()) => (
            StatusCode::SEE_OTHER,
            [(
                header::LOCATION,
                url(
                    "/ui/identity",
                    &[
                        ("env", key.env.as_str()),
                        ("name", key.name.as_str()),
                        ("done", action.done()),
                    ],
                ),
            )],
        )
            .into_response(),
        Err(e) => refused(StatusCode::BAD_REQUEST, e.message()),
    }
}

fn audit_action(action: Action) -> &'static str {
    match action {
        Action::RevokeJti | Action::RevokeSerial | Action::RevokeIdentity => "revoke",
        Action::Disable => IdentityChange::Disable.action(),
        Action::Retire => IdentityChange::Retire.action(),
    }
}

macro_rules! handler {
    ($name:ident, $action:expr) => {
        /// POST handler of one form.
        pub async fn $name(
            State(broker): State<Arc<Broker>>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> Response {
            act(broker, headers, &body, $action).await
        }
    };
}

handler!(revoke_jti, Action::RevokeJti);
handler!(revoke_serial, Action::RevokeSerial);
handler!(revoke_identity, Action::RevokeIdentity);
handler!(disable, Action::Disable);
handler!(retire, Action::Retire);
