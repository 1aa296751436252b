//! Why a connection to the broker failed, in words an operator can act on.
//!
//! tonic reports every connection failure as "transport error"; the cause
//! is further down the error's source chain (an I/O error, a rustls error,
//! an h2 error). This walks the chain and names the cause and the usual fix.
//! The agent and the admin CLI both use it.

use std::error::Error;

/// Every message in `err`'s source chain, outermost first.
fn chain(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

fn io_kind(err: &(dyn Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

/// What went wrong connecting to `url`, and what to do about it.
pub fn explain_connect_error(url: &str, err: &(dyn Error + 'static)) -> String {
    let messages = chain(err);
    let all = messages.join(": ");
    let has = |needle: &str| all.to_ascii_lowercase().contains(needle);
    let cause = if url.starts_with("http://") || has("h2 protocol error") {
        "the broker speaks gRPC over TLS only: use an https:// URL".to_owned()
    } else if has("unknownissuer") || has("unknown issuer") || has("badsignature") {
        "the broker's TLS certificate is not signed by the CA in the bundle \
         (wrong --bundle? it must be the broker's DATA_DIR/broker-ca.pem)"
            .to_owned()
    } else if has("notvalidforname") || has("not valid for name") {
        "the broker's TLS certificate is not valid for this host name \
         (connect by a name in the broker's tls_names, or add this one there)"
            .to_owned()
    } else if has("expired") && has("certificate") {
        "the broker's TLS certificate has expired (restart the broker to issue a new one)"
            .to_owned()
    } else if has("invalidcontenttype")
        || has("corrupt message")
        || has("invalid message")
        || has("received corrupt")
    {
        "the server at this address does not speak TLS (is this the broker's HTTP port? \
         gRPC listens on grpc_listen, 127.0.0.1:7443 by default)"
            .to_owned()
    } else if matches!(io_kind(err), Some(std::io::ErrorKind::ConnectionRefused))
        || has("connection refused")
    {
        "connection refused: nothing listens there (is the broker running, and is this its \
         gRPC address?)"
            .to_owned()
    } else if matches!(io_kind(err), Some(std::io::ErrorKind::TimedOut)) || has("timed out") {
        "timed out: the address does not answer (firewall, or a wrong host?)".to_owned()
    } else if has("dns error") || has("failed to lookup") {
        "the host name does not resolve".to_owned()
    } else {
        return format!("{all} (connecting to {url})");
    };
    // Keep the innermost detail for those who need it.
    let detail = messages.last().cloned().unwrap_or_default();
    format!("cannot connect to {url}: {cause} [{detail}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_ref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn names_each_cause() {
        let refused = Wrap(
            "transport error",
            Some(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert!(
            explain_connect_error("https://127.0.0.1:1", &refused)
                .contains("is the broker running")
        );
        let untrusted = Wrap(
            "transport error",
            Some(std::io::Error::other(
                "invalid peer certificate: UnknownIssuer",
            )),
        );
        assert!(explain_connect_error("https://x:7443", &untrusted).contains("--bundle"));
        let http = Wrap("transport error", None);
        assert!(explain_connect_error("http://x:7443", &http).contains("https://"));
        let plain = Wrap(
            "transport error",
            Some(std::io::Error::other(
                "received corrupt message of type InvalidContentType",
            )),
        );
        assert!(explain_connect_error("https://x:7080", &plain).contains("HTTP port"));
    }
}
