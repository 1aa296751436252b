//! Signing in to the web inventory: one-time login links made by
//! `credbroker ui` (over the mTLS admin API), and the browser sessions
//! they open.
//!
//! Only SHA-256 hashes of link tokens and session ids are kept, so the
//! broker's memory holds nothing a browser could present. A link is
//! single use (redeeming removes it, expired or not), short-lived
//! (`[ui] login_link_ttl`) and bound to the operator who asked and its
//! role. A session lives `[ui] session_ttl` at most, carries its own CSRF
//! token, and is re-checked against the operator registry at every
//! request, so revoking the operator ends its sessions too. Both maps
//! are capped ([`MAX_LINKS`], [`MAX_SESSIONS`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::Status;

use super::html::Html;
use super::layout;
use crate::api::operators::OperatorPeer;
use crate::audit::AuditRecord;
use crate::broker::Broker;
use crate::model::unix_now;

/// The session cookie's name.
pub const COOKIE: &str = "credbroker_ui";
/// Most login links waiting to be used at once.
pub const MAX_LINKS: usize = 256;
/// Most open sessions; past it the one closest to expiry is closed.
pub const MAX_SESSIONS: usize = 1024;

/// Why a login link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefused {
    /// Never issued, or already used (they look the same by design:
    /// a used link is forgotten).
    #[error("this login link is unknown or was already used")]
    UnknownOrUsed,
    /// Issued, but past its lifetime.
    #[error("this login link has expired")]
    Expired,
}

#[derive(Debug)]
struct PendingLink {
    operator: OperatorPeer,
    expires_at: i64,
}

/// A signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who signed in, with the role they had then (re-checked per request).
    pub operator: OperatorPeer,
    /// The token every mutating form must carry.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Login links and sessions of this broker (in memory: a restart signs
/// everyone out).
#[derive(Debug)]
pub struct UiSessions {
    links: Mutex<HashMap<[u8; 32], PendingLink>>,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    rng: SystemRandom,
}

impl Default for UiSessions {
    fn default() -> Self {
        Self {
            links: Mutex::default(),
            sessions: Mutex::default(),
            rng: SystemRandom::new(),
        }
    }
}

/// A link made for `credbroker ui`.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// The URL to open.
    pub url: String,
    /// A non-secret name for the audit log (hash prefix).
    pub id: String,
    /// Unix seconds.
    pub expires_at: i64,
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hash_id(hash: &[u8; 32]) -> String {
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

impl UiSessions {
    fn random(&self) -> Result<String, Status> {
        let mut bytes = [0u8; 32];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| Status::unavailable("no randomness available"))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    fn issue_link(
        &self,
        operator: &OperatorPeer,
        ttl: i64,
        now: i64,
    ) -> Result<(String, String), Status> {
        let secret = self.random()?;
        let hash = digest(&secret);
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        links.retain(|_, l| l.expires_at > now);
        if links.len() >= MAX_LINKS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_LINKS} login links are waiting to be used; try again once some expire"
            )));
        }
        links.insert(
            hash,
            PendingLink {
                operator: operator.clone(),
                expires_at: now + ttl,
            },
        );
        Ok((secret, hash_id(&hash)))
    }

    /// The operator of link `secret` if it is still valid; spends nothing.
    fn peek(&self, secret: &str, now: i64) -> Result<OperatorPeer, LinkRefused> {
        let links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        match links.get(&digest(secret)) {
            None => Err(LinkRefused::UnknownOrUsed),
            Some(link) if now >= link.expires_at => Err(LinkRefused::Expired),
            Some(link) => Ok(link.operator.clone()),
        }
    }

    /// Takes the link `secret` out (whatever its state), and returns its
    /// operator if it was still valid.
    fn redeem(&self, secret: &str, now: i64) -> Result<OperatorPeer, LinkRefused> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = links
            .remove(&digest(secret))
            .ok_or(LinkRefused::UnknownOrUsed)?;
        if now >= link.expires_at {
            return Err(LinkRefused::Expired);
        }
        Ok(link.operator)
    }

    fn open_session(&self, operator: OperatorPeer, ttl: i64, now: i64) -> Result<String, Status> {
        let id = self.random()?;
        let session = Session {
            operator,
            csrf: self.random()?,
            expires_at: now + ttl,
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.expires_at > now);
        if sessions.len() >= MAX_SESSIONS {
            let soonest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k);
            if let Some(k) = soonest {
                sessions.remove(&k);
            }
        }
        sessions.insert(digest(&id), session);
        Ok(id)
    }

    fn session(&self, id: &str, now: i64) -> Option<Session> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let hash = digest(id);
        match sessions.get(&hash) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(&hash);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&digest(id));
    }
}

/// Makes a one-time login link for `operator` (the `CreateUiLogin` RPC).
pub fn create_link(broker: &Broker, operator: &OperatorPeer, now: i64) -> Result<NewLink, Status> {
    let ui = &broker.config.ui;
    let public_url = broker.config.public_url();
    if let Some(why) = super::config::unavailable(ui, broker.config.http_listen, &public_url) {
        return Err(Status::failed_precondition(why));
    }
    let ttl = ui.login_link_ttl.as_secs() as i64;
    let (secret, id) = broker.ui.issue_link(operator, ttl, now)?;
    Ok(NewLink {
        url: format!("{}/ui/login?token={secret}", broker.config.public_url()),
        id,
        expires_at: now + ttl,
    })
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Why a request has no session; answered 401 with a page saying how to
/// sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotSignedIn(String);

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        layout::message(StatusCode::UNAUTHORIZED, "Not signed in", &self.0)
    }
}

/// The request's session, re-checked against the operator registry (a
/// revoked or expired operator certificate ends it).
pub fn require(broker: &Broker, headers: &HeaderMap) -> Result<Session, NotSignedIn> {
    let now = unix_now();
    let signed_out =
        || NotSignedIn("Run `credbroker ui` and open the link it prints to sign in.".into());
    let id = cookie_value(headers).ok_or_else(signed_out)?;
    let mut session = broker.ui.session(&id, now).ok_or_else(signed_out)?;
    if let Some(serial) = session.operator.serial.clone() {
        match broker
            .callers
            .operators
            .authenticate(&session.operator.name, &serial, now)
        {
            Ok(current) => session.operator = current,
            Err(e) => {
                broker.ui.close(&id);
                return Err(NotSignedIn(format!("signed out: {}", e.message())));
            }
        }
    }
    Ok(session)
}

fn refused_link(audit: &mut AuditRecord, refused: LinkRefused) -> Response {
    audit.actor = Some("anonymous".into());
    audit.denied(&format!("unauthenticated: {refused}"));
    layout::message(
        StatusCode::FORBIDDEN,
        "Login link refused",
        &format!("{refused}. Run `credbroker ui` for a new one."),
    )
}

fn login_audit(broker: &Broker, token: &str) -> AuditRecord {
    // The HTTP listener does not pass peer addresses to handlers.
    let mut audit = AuditRecord::new(&broker.audit, "ui.login", None);
    audit.evidence = Some(format!("ui_link:{}", hash_id(&digest(token))));
    audit
}

/// `GET /ui/login?token=…`: says whom the link signs in as, with a button
/// that posts it. A GET spends nothing, so a chat or mail client that
/// fetches links to preview them cannot use one up.
pub async fn login_page(State(broker): State<Arc<Broker>>, RawQuery(query): RawQuery) -> Response {
    let fields = super::form::Fields::query(query);
    let token = fields.get("token");
    let operator = match broker.ui.peek(token, unix_now()) {
        Ok(op) => op,
        Err(refused) => return refused_link(&mut login_audit(&broker, token), refused),
    };
    let mut body = Html::new();
    body.elem(
        "p",
        &[],
        &format!(
            "This one-time link signs you in as {} ({}).",
            operator.name, operator.role
        ),
    )
    .open(
        "form",
        &[
            ("method", Some("post")),
            ("action", Some("/ui/login")),
            ("id", Some("login")),
        ],
    )
    .hidden("token", token)
    .raw("<button type=\"submit\">Sign in</button></form>");
    layout::bare(StatusCode::OK, "Sign in", body)
}

/// `POST /ui/login` (field `token`): redeems the link and opens a session.
pub async fn login(State(broker): State<Arc<Broker>>, body: axum::body::Bytes) -> Response {
    let fields = super::form::Fields::parse(&body);
    let token = fields.get("token");
    let mut audit = login_audit(&broker, token);
    let now = unix_now();
    let operator = match broker.ui.redeem(token, now) {
        Ok(op) => op,
        Err(refused) => return refused_link(&mut audit, refused),
    };
    audit.actor = Some(operator.name.clone());
    let ttl = broker.config.ui.session_ttl.as_secs() as i64;
    let id = match broker.ui.open_session(operator.clone(), ttl, now) {
        Ok(id) => id,
        Err(e) => {
            audit.denied(&crate::api::status::reason(&e));
            return layout::message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot sign in",
                e.message(),
            );
        }
    };
    audit.changed(&format!("signed in with role {}", operator.role));
    // Secure only where the browser reaches us over https (a TLS proxy in
    // front, named by public_url): a Secure cookie would never come back
    // over the plain HTTP port.
    let secure = if broker.config.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie =
        format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={ttl}{secure}");
    // A page that moves on by itself rather than a redirect: a SameSite=
    // Strict cookie set on a navigation that began elsewhere (a mail, a
    // chat) is sent only on the next same-site request, which this is.
    let mut response = layout::message(
        StatusCode::OK,
        "Signed in",
        &format!(
            "Signed in as {} ({}). Continue to the inventory.",
            operator.name, operator.role
        ),
    );
    if let Ok(v) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    if let Ok(v) = "0;url=/ui/identities".parse() {
        response.headers_mut().insert("refresh", v);
    }
    response
}

/// `POST /ui/logout`: closes the session (CSRF-checked like every form).
pub async fn logout(
    State(broker): State<Arc<Broker>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let session = match require(&broker, &headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let fields = super::form::Fields::parse(&body);
    if !super::actions::csrf_ok(&session, fields.get("csrf")) {
        return layout::message(
            StatusCode::FORBIDDEN,
            "Refused",
            "missing or wrong CSRF token",
        );
    }
    if let Some(id) = cookie_value(&headers) {
        broker.ui.close(&id);
    }
    let mut response = layout::message(StatusCode::OK, "Signed out", "You are signed out.");
    if let Ok(v) = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0").parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::roles::Role;

    fn alice() -> OperatorPeer {
        OperatorPeer {
            name: "alice".into(),
            role: Role::Auditor,
            serial: None,
        }
    }

    #[test]
    fn links_are_single_use_and_expire() {
        let ui = UiSessions::default();
        let (secret, _) = ui.issue_link(&alice(), 300, 1000).unwrap();
        // Looking (GET) spends nothing; redeeming (POST) does.
        assert_eq!(ui.peek(&secret, 1001).unwrap().name, "alice");
        assert_eq!(ui.redeem(&secret, 1001).unwrap().name, "alice");
        assert_eq!(ui.peek(&secret, 1002), Err(LinkRefused::UnknownOrUsed));
        assert_eq!(ui.redeem(&secret, 1002), Err(LinkRefused::UnknownOrUsed));
        let (late, _) = ui.issue_link(&alice(), 300, 1000).unwrap();
        assert_eq!(ui.redeem(&late, 1300), Err(LinkRefused::Expired));
        assert_eq!(ui.redeem("made-up", 1000), Err(LinkRefused::UnknownOrUsed));
    }

    #[test]
    fn sessions_expire_and_are_capped() {
        let ui = UiSessions::default();
        let id = ui.open_session(alice(), 60, 1000).unwrap();
        assert!(ui.session(&id, 1059).is_some());
        assert!(ui.session(&id, 1060).is_none());
        for i in 0..MAX_SESSIONS + 5 {
            ui.open_session(alice(), 60 + i as i64, 2000).unwrap();
        }
        assert_eq!(ui.sessions.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; credbroker_ui=xyz; c=d".parse().unwrap(),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("xyz"));
    }
}
