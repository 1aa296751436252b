//! Request caps: every item count, string length and message size a caller
//! can make the broker spend is bounded here, checked before any work is
//! done, and refused with INVALID_ARGUMENT naming the limit. Refusals
//! quote at most [`MAX_QUOTE`] characters of what was sent, so an oversized
//! field is never echoed back (or into the audit log).

use credbroker_proto::v1::{CreateIdentityRequest, JwtRequest};
use tonic::Status;

/// Largest Workload request: a CSR is at most 8 KiB, platform evidence a
/// few KiB, and [`MAX_JWTS_PER_ATTEST`] JWT requests fit many times over.
pub const MAX_WORKLOAD_MESSAGE: usize = 64 * 1024;
/// Largest Admin request (an identity with every list at its cap).
pub const MAX_ADMIN_MESSAGE: usize = 256 * 1024;
/// JWTs one Attest may ask for.
pub const MAX_JWTS_PER_ATTEST: usize = 16;
/// Audiences one JWT request may name.
pub const MAX_AUDIENCES_PER_REQUEST: usize = 16;
/// Scopes one JWT request may name.
pub const MAX_SCOPES_PER_REQUEST: usize = 64;
/// Audiences an identity may allow.
pub const MAX_AUDIENCES_PER_IDENTITY: usize = 64;
/// Scopes an identity may allow.
pub const MAX_SCOPES_PER_IDENTITY: usize = 256;
/// Selectors an identity may require.
pub const MAX_SELECTORS_PER_IDENTITY: usize = 32;
/// Peer networks an identity may list.
pub const MAX_CIDRS_PER_IDENTITY: usize = 32;
/// Longest selector key (`ATTESTOR:KEY`).
pub const MAX_SELECTOR_KEY: usize = 128;
/// Longest string field checked here before its own validation (names,
/// audiences, scopes, CIDRs, parent, `jti`, owner); the field's validator
/// may allow less.
pub const MAX_FIELD: usize = 512;
/// Longest free text (purpose, reason).
pub const MAX_TEXT: usize = 1024;
/// Characters of a refused value quoted in an error.
pub const MAX_QUOTE: usize = 64;

/// `value` for an error message: Debug-quoted, cut to [`MAX_QUOTE`]
/// characters with its full size said, so the answer stays small.
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTE) {
        None => format!("{value:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &value[..end], value.len()),
    }
}

/// Refuses more than `max` items of `what`.
pub fn count(what: &str, n: usize, max: usize) -> Result<(), Status> {
    if n > max {
        return Err(Status::invalid_argument(format!(
            "too many {what}: {n} given, at most {max} allowed"
        )));
    }
    Ok(())
}

/// Refuses a `what` longer than `max` characters (counted in bytes first,
/// so a huge value costs nothing to refuse).
pub fn length(what: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max && value.chars().count() > max {
        return Err(Status::invalid_argument(format!(
            "{what} is {} bytes, longer than the limit of {max} characters: {}",
            value.len(),
            quote(value)
        )));
    }
    Ok(())
}

/// An operator's reason (revocations, key retirements): required, at most
/// [`MAX_TEXT`] characters, no control characters. Returns it trimmed.
pub fn reason(value: &str) -> Result<String, Status> {
    length("reason", value, MAX_TEXT)?;
    let reason = value.trim();
    if reason.is_empty() {
        return Err(Status::invalid_argument("a reason is required"));
    }
    if reason.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "reason must not contain control characters",
        ));
    }
    Ok(reason.to_owned())
}

/// Caps of one JWT request: audiences, scopes and their lengths.
pub fn jwt_request(r: &JwtRequest) -> Result<(), Status> {
    count(
        "audiences in a JWT request",
        r.audiences.len(),
        MAX_AUDIENCES_PER_REQUEST,
    )?;
    count(
        "scopes in a JWT request",
        r.scopes.len(),
        MAX_SCOPES_PER_REQUEST,
    )?;
    for a in &r.audiences {
        length("audience", a, MAX_FIELD)?;
    }
    for s in &r.scopes {
        length("scope", s, MAX_FIELD)?;
    }
    Ok(())
}

/// Caps of an Attest's JWT requests, checked before the CSR or the
/// evidence is looked at.
pub fn attest_jwts(jwts: &[JwtRequest]) -> Result<(), Status> {
    count(
        "JWT requests in one Attest",
        jwts.len(),
        MAX_JWTS_PER_ATTEST,
    )?;
    jwts.iter().try_for_each(jwt_request)
}

/// Caps of a new identity: list sizes and every string's length.
pub fn create_identity(r: &CreateIdentityRequest) -> Result<(), Status> {
    length("env", &r.env, MAX_FIELD)?;
    length("name", &r.name, MAX_FIELD)?;
    length("owner", &r.owner, MAX_FIELD)?;
    length("purpose", &r.purpose, MAX_TEXT)?;
    length("parent", &r.parent, MAX_FIELD)?;
    count("audiences", r.audiences.len(), MAX_AUDIENCES_PER_IDENTITY)?;
    count("scopes", r.scopes.len(), MAX_SCOPES_PER_IDENTITY)?;
    count("selectors", r.selectors.len(), MAX_SELECTORS_PER_IDENTITY)?;
    count("allowed CIDRs", r.allow_cidrs.len(), MAX_CIDRS_PER_IDENTITY)?;
    for a in &r.audiences {
        length("audience", a, MAX_FIELD)?;
    }
    for s in &r.scopes {
        length("scope", s, MAX_FIELD)?;
    }
    for s in &r.selectors {
        length("selector key", &s.key, MAX_SELECTOR_KEY)?;
        length("selector value", &s.value, MAX_FIELD)?;
    }
    for c in &r.allow_cidrs {
        length("allow_cidr", c, MAX_FIELD)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_values_and_says_their_size() {
        assert_eq!(quote("dev"), "\"dev\"");
        let long = "x".repeat(4_000_000);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("… (4000000 bytes)"), "{q}");
        // Multi-byte characters are cut on a boundary.
        assert!(quote(&"é".repeat(100)).contains("(200 bytes)"));
    }

    #[test]
    fn caps_name_the_limit() {
        let jwts = vec![JwtRequest::default(); MAX_JWTS_PER_ATTEST + 1];
        let e = attest_jwts(&jwts).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("at most 16"), "{}", e.message());
        let r = JwtRequest {
            audiences: vec!["a".repeat(10_000)],
            ..Default::default()
        };
        let e = jwt_request(&r).unwrap_err();
        assert!(e.message().contains("limit of 512"), "{}", e.message());
        assert!(e.message().len() < 200, "{}", e.message());
    }
}
