//! The frame every page shares (navigation, who is signed in, sign-out),
//! the style sheet, and the headers that keep pages out of caches, frames
//! and referrers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::html::Html;
use super::login::Session;

/// Readable on a laptop screen, no script, no external resource.
pub const STYLE: &str = "\
*{box-sizing:border-box}body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9;font-size:15px}\
header{background:#1d2733;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}header .who{margin-left:auto;font-size:.9em}\
header form{display:inline;margin:0}header button{font-size:.85em}\
main{padding:1em 1.6em}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}\
table{border-collapse:collapse;width:100%;background:#fff;margin:.4em 0}\
th,td{border:1px solid #d5d9e0;padding:.3em .5em;text-align:left;vertical-align:top;overflow-wrap:anywhere}\
th{background:#eceff3}td.empty{color:#777;font-style:italic}\
dl{display:grid;grid-template-columns:12em 1fr;gap:.2em 1em;background:#fff;padding:.8em;border:1px solid #d5d9e0}\
dt{font-weight:600}dd{margin:0}\
.flash{background:#e3f4e3;border:1px solid #9c9;padding:.5em .8em}\
.error{background:#fbe3e3;border:1px solid #c99;padding:.5em .8em}\
.anomaly{color:#a40000;font-weight:600}\
form.filter{display:flex;flex-wrap:wrap;gap:.6em;align-items:end;margin:.6em 0}\
form.filter label{display:flex;flex-direction:column;font-size:.85em}\
form.act{display:flex;gap:.4em;align-items:center;flex-wrap:wrap;margin:.2em 0}form.act input[name=reason]{width:14em}\
.danger{background:#b00020;color:#fff;border:0;padding:.3em .8em;border-radius:3px}\
code{font-size:.9em}";

fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let set = [
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // The login link's token is in a URL: never send it onwards.
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    for (name, value) in set {
        h.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn document(status: StatusCode, title: &str, header_html: Html, body: Html) -> Response {
    let mut doc = Html::new();
    doc.raw("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<link rel=\"stylesheet\" href=\"/ui/style.css\"><title>")
        .text(title)
        .raw(" — credbroker</title></head><body>")
        .append(header_html)
        .raw("<main>")
        .elem("h1", &[], title)
        .append(body)
        .raw("</main></body></html>");
    headers(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            doc.into_string(),
        )
            .into_response(),
    )
}

/// A page for a signed-in operator: navigation, who they are, sign-out.
pub fn page(session: &Session, title: &str, flash: Option<&str>, body: Html) -> Response {
    let mut head = Html::new();
    head.raw("<header><span>credbroker</span>")
        .link("/ui/identities", "Identities")
        .link("/ui/revocations", "Revocations")
        .link("/ui/audit", "Audit")
        .link("/ui/keys", "Keys")
        .raw("<span class=\"who\">signed in as ")
        .elem(
            "strong",
            &[("id", Some("operator"))],
            &session.operator.name,
        )
        .text(&format!(" ({}) ", session.operator.role))
        .open(
            "form",
            &[("method", Some("post")), ("action", Some("/ui/logout"))],
        )
        .hidden("csrf", &session.csrf)
        .raw("<button type=\"submit\">Sign out</button></form></span></header>");
    let mut content = Html::new();
    if let Some(flash) = flash {
        content.elem(
            "p",
            &[("class", Some("flash")), ("id", Some("flash"))],
            flash,
        );
    }
    content.append(body);
    document(StatusCode::OK, title, head, content)
}

/// A page without navigation around `body` (the sign-in page).
pub fn bare(status: StatusCode, title: &str, body: Html) -> Response {
    let mut head = Html::new();
    head.raw("<header><span>credbroker</span></header>");
    document(status, title, head, body)
}

/// A page with one message and no navigation (signed out, refusals).
pub fn message(status: StatusCode, title: &str, text: &str) -> Response {
    let mut body = Html::new();
    let class = if status.is_success() {
        "flash"
    } else {
        "error"
    };
    body.elem(
        "p",
        &[("class", Some(class)), ("id", Some("message"))],
        text,
    );
    if status == StatusCode::OK {
        body.raw("<p><a href=\"/ui/identities\">Continue</a></p>");
    }
    let mut head = Html::new();
    head.raw("<header><span>credbroker</span></header>");
    document(status, title, head, body)
}

/// `GET /ui/style.css`.
pub async fn style() -> Response {
    headers(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response())
}
