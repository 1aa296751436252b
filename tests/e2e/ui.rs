//! The web inventory (`/ui`) in a real headless Chromium driven over
//! WebDriver: sign in with the one-time link from `credbroker ui`, find an
//! identity, revoke a credential, see it in the revocation list; a reused
//! or expired link is refused; an auditor sees no revoke button and a
//! forged POST of theirs is refused; a form without the session's CSRF
//! token is refused.

use std::path::PathBuf;
use std::time::Duration;

use credbroker_client::{Evidence, JwtRequest};
use credbroker_e2e::TestBroker;
use credbroker_e2e::webdriver::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `operator create` as the bootstrap admin; returns the operator directory.
fn operator(broker: &TestBroker, name: &str, role: &str) -> PathBuf {
    let dir = broker.scratch("operators").join(name);
    broker.cli_ok(&[
        "operator",
        "create",
        "--name",
        name,
        "--role",
        role,
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    dir
}

/// `credbroker ui` as the operator in `dir`: the link, alone on the last line.
fn login_link(broker: &TestBroker, dir: &std::path::Path) -> String {
    let out = broker.cli_ok(&["ui", "--operator", dir.to_str().unwrap()]);
    let link = out.lines().last().unwrap().trim().to_owned();
    assert!(
        link.starts_with(&format!(
            "http://127.0.0.1:{}/ui/login?token=",
            broker.http_port()
        )),
        "{out}"
    );
    link
}

/// A JWT for `env/name` (audience billing); returns its jti.
async fn issue_jwt(broker: &TestBroker, name: &str) -> String {
    let client = broker.client().await;
    let got = client
        .attest(
            &Evidence::JoinToken(broker.join_token("dev", name)),
            &[JwtRequest::audience("billing")],
        )
        .await
        .expect("attest");
    got.jwts[0].jti.clone()
}

/// One plain HTTP/1.1 request; returns status, head and body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: &str,
    body: &str,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Signs in over plain HTTP (GET the link, POST its token); returns the
/// cookie pair to send back.
async fn sign_in(broker: &TestBroker, link: &str) -> String {
    let path = &link[link.find("/ui/").unwrap()..];
    let (status, head, _) = http(broker.http_port(), "GET", path, "", "").await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("set-cookie"), "a GET signed in: {head}");
    let token = &link[link.find("token=").unwrap() + 6..];
    let body = format!("token={token}");
    let (status, head, _) = http(broker.http_port(), "POST", "/ui/login", "", &body).await;
    assert_eq!(status, 200, "{head}");
    let set_cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    set_cookie.split(';').next().unwrap().to_owned()
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    page[at..at + page[at..].find('"').unwrap()].to_owned()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn an_operator_signs_in_finds_an_identity_and_revokes_a_credential_in_chromium() {
    let broker = TestBroker::start().await;
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "payments/api",
        "--owner",
        "team-payments",
        "--purpose",
        "charges customer cards",
        "--audience",
        "billing",
    ]);
    broker.create_identity("dev", "reports/nightly", &["billing"], &[]);
    let jti = issue_jwt(&broker, "payments/api").await;
    let kept = issue_jwt(&broker, "payments/api").await;
    let olga = operator(&broker, "olga", "operator");
    let link = login_link(&broker, &olga);

    let browser = Browser::start().await;
    browser.goto(&link).await;
    // Opening the link spends nothing: it says who, and a button signs in.
    let page = browser.wait_for("id=\"login\"").await;
    assert!(page.contains("olga (operator)"), "{page}");
    let sign_in_button = browser.find("form#login button").await;
    browser.click(&sign_in_button).await;
    // The signed-in page moves on to the inventory by itself.
    let page = browser.wait_for("id=\"identities\"").await;
    assert!(page.contains("olga"), "{page}");
    assert!(page.contains("reports/nightly"), "{page}");

    // Search narrows the list to the identity; follow its link.
    let q = browser.find("form#search input[name=q]").await;
    browser.type_into(&q, "team-payments").await;
    let search = browser.find("form#search button").await;
    browser.click(&search).await;
    let page = browser.wait_for("1 identities").await;
    assert!(!page.contains("reports/nightly"), "{page}");
    let link_el = browser
        .find("table#identities a[href*='payments%2Fapi']")
        .await;
    browser.click(&link_el).await;
    let page = browser.wait_for("charges customer cards").await;
    assert!(page.contains(&jti) && page.contains(&kept), "{page}");
    if let Some(path) = std::env::var_os("CREDBROKER_UI_SCREENSHOT") {
        std::fs::write(path, browser.screenshot().await).unwrap();
    }

    // Revoke one JWT: a reason and the confirmation box.
    let form = format!("form[id='revoke-{jti}']");
    let reason = browser.find(&format!("{form} input[name=reason]")).await;
    browser.type_into(&reason, "leaked in a CI log").await;
    let confirm = browser.find(&format!("{form} input[name=confirm]")).await;
    browser.click(&confirm).await;
    let button = browser.find(&format!("{form} button")).await;
    browser.click(&button).await;
    let page = browser.wait_for("id=\"flash\"").await;
    assert!(page.contains("Revoked."), "{page}");
    // The revoked JWT is no longer outstanding; the other one is.
    assert!(!page.contains(&format!("revoke-{jti}")), "{page}");
    assert!(page.contains(&format!("revoke-{kept}")), "{page}");

    // The revocation list shows it, with the operator and the reason.
    let nav = browser.find("header a[href='/ui/revocations']").await;
    browser.click(&nav).await;
    let page = browser.wait_for("id=\"revocations\"").await;
    assert!(page.contains(&jti), "{page}");
    assert!(
        page.contains("leaked in a CI log") && page.contains("olga"),
        "{page}"
    );

    // The same link a second time: refused.
    browser.goto(&link).await;
    let page = browser.wait_for("Login link refused").await;
    assert!(page.contains("already used"), "{page}");
    browser.quit().await;

    // The revocation went through the Admin API's path: in force for
    // the CLI, audited with the operator's name.
    let list = broker.cli_ok(&["revoke", "--list", "--output", "json"]);
    assert!(list.contains(&jti), "{list}");
    let audit = broker.cli_ok(&["audit", "--actor", "olga", "--output", "json"]);
    assert!(
        audit.contains("\"revoke\"") && audit.contains("leaked in a CI log"),
        "{audit}"
    );
    assert!(audit.contains("ui.login"), "{audit}");
}

#[tokio::test]
async fn an_expired_login_link_is_refused_in_chromium() {
    let broker = TestBroker::start_with(&["dev"], "[ui]\nlogin_link_ttl = \"1s\"\n").await;
    let link = login_link(&broker, &operator(&broker, "eve", "operator"));
    // Past the one-second lifetime whatever the second it was made in.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let browser = Browser::start().await;
    browser.goto(&link).await;
    let page = browser.wait_for("Login link refused").await;
    assert!(page.contains("expired"), "{page}");
    // No session came of it.
    browser
        .goto(&format!(
            "http://127.0.0.1:{}/ui/identities",
            broker.http_port()
        ))
        .await;
    browser.wait_for("Not signed in").await;
    browser.quit().await;
}

#[tokio::test]
async fn an_auditor_sees_no_revoke_button_and_a_forged_post_is_refused() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "payments/api", &["billing"], &[]);
    let jti = issue_jwt(&broker, "payments/api").await;
    let port = broker.http_port();
    let page_path = "/ui/identity?env=dev&name=payments%2Fapi";

    let ada = sign_in(
        &broker,
        &login_link(&broker, &operator(&broker, "ada", "auditor")),
    )
    .await;
    let (status, _, page) = http(port, "GET", page_path, &ada, "").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(&jti),
        "the auditor sees the credential: {page}"
    );
    for form in ["/ui/revoke/", "/ui/identity/disable", "/ui/identity/retire"] {
        assert!(
            !page.contains(form),
            "an auditor's page offers {form}: {page}"
        );
    }
    // Every page reads for an auditor.
    for (path, expect) in [
        ("/ui/identities?env=dev&status=active", "dev/payments/api"),
        ("/ui/revocations", "id=\"revocations\""),
        ("/ui/audit?identity=dev%2Fpayments%2Fapi", "identity.create"),
        ("/ui/keys", "x509"),
    ] {
        let (status, _, body) = http(port, "GET", path, &ada, "").await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains(expect), "{path}: {body}");
    }
    // What callers wrote reaches pages as text, never as markup.
    broker.cli_ok(&[
        "identity",
        "create",
        "--env",
        "dev",
        "--name",
        "evil",
        "--owner",
        "<img src=x onerror=alert(1)>",
        "--purpose",
        "<script>alert(1)</script>",
    ]);
    let (_, _, page) = http(port, "GET", "/ui/identities?q=evil", &ada, "").await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains("<script>") && !page.contains("<img"),
        "{page}"
    );

    // The form an operator would post, with the auditor's own session and
    // CSRF token: refused by the server, nothing revoked.
    let body = format!(
        "csrf={}&env=dev&name=payments%2Fapi&value={}&reason=forged&confirm=yes",
        urlencode(&csrf_of(&page)),
        urlencode(&jti)
    );
    let (status, _, refusal) = http(port, "POST", "/ui/revoke/jti", &ada, &body).await;
    assert_eq!(status, 403, "{refusal}");
    assert!(refusal.contains("needs role operator"), "{refusal}");
    let (status, _, _) = http(port, "POST", "/ui/identity/retire", &ada, &body).await;
    assert_eq!(status, 403);

    // An operator's session without its CSRF token, or with another
    // session's: refused too.
    let otto = sign_in(
        &broker,
        &login_link(&broker, &operator(&broker, "otto", "operator")),
    )
    .await;
    for csrf in ["", "not-the-token"] {
        let body = format!(
            "csrf={csrf}&env=dev&name=payments%2Fapi&value={}&reason=x&confirm=yes",
            urlencode(&jti)
        );
        let (status, _, refusal) = http(port, "POST", "/ui/revoke/jti", &otto, &body).await;
        assert_eq!(status, 403, "{refusal}");
        assert!(refusal.contains("CSRF"), "{refusal}");
    }
    // Without a session at all.
    let (status, _, _) = http(port, "POST", "/ui/revoke/jti", "", &body).await;
    assert_eq!(status, 401);
    let list = broker.cli_ok(&["revoke", "--list", "--output", "json"]);
    assert!(!list.contains(&jti), "{list}");

    // With the operator's own token and no confirmation: refused; with it: done.
    let (_, _, otto_page) = http(port, "GET", page_path, &otto, "").await;
    let csrf = urlencode(&csrf_of(&otto_page));
    let unconfirmed = format!(
        "csrf={csrf}&env=dev&name=payments%2Fapi&value={}&reason=x",
        urlencode(&jti)
    );
    let (status, _, _) = http(port, "POST", "/ui/revoke/jti", &otto, &unconfirmed).await;
    assert_eq!(status, 400);
    let confirmed = format!("{unconfirmed}&confirm=yes");
    let (status, head, _) = http(port, "POST", "/ui/revoke/jti", &otto, &confirmed).await;
    assert_eq!(status, 303, "{head}");
    let list = broker.cli_ok(&["revoke", "--list", "--output", "json"]);
    assert!(list.contains(&jti), "{list}");

    // Revoking the auditor ends its session at the next request.
    broker.cli_ok(&["operator", "revoke", "--name", "ada", "--reason", "left"]);
    let (status, _, page) = http(port, "GET", page_path, &ada, "").await;
    assert_eq!(status, 401, "{page}");
}
