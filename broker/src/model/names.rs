//! Validated names. Each type can only hold a value that is safe to put into
//! a SPIFFE ID, a JWT claim or a certificate, so code that receives one never
//! re-checks it.

use std::fmt;

use thiserror::Error;

/// Why a name, audience or scope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The value was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// What was being named ("environment", "identity name", …).
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// What was being named.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// The value held a character outside the allowed set.
    #[error("{what} {value:?} contains {found:?}; allowed: {allowed}")]
    BadCharacter {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The first offending character.
        found: char,
        /// A human description of the allowed set.
        allowed: &'static str,
    },
    /// A structural rule was broken (path segments, leading dash, …).
    #[error("{what} {value:?} is malformed: {why}")]
    Malformed {
        /// What was being named.
        what: &'static str,
        /// The refused value.
        value: String,
        /// The broken rule.
        why: &'static str,
    },
}

fn check_chars(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.chars().count() > max {
        return Err(NameError::TooLong { what, max });
    }
    if let Some(found) = value.chars().find(|c| !ok(*c)) {
        return Err(NameError::BadCharacter {
            what,
            value: value.to_owned(),
            found,
            allowed,
        });
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Held as a shared `Arc<str>`: every identity is in memory, and its
        /// key, SPIFFE ID and map entry share one copy of each name.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(&value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }
    };
}

string_newtype!(
    /// An environment name such as `dev` or `prod`: a DNS label
    /// (lowercase letters, digits, `-`; 1–63 characters; no leading or trailing `-`).
    EnvName
);

impl EnvName {
    /// Validates an environment name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        const WHAT: &str = "environment";
        check_chars(WHAT, value, 63, "a-z 0-9 -", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })?;
        if value.starts_with('-') || value.ends_with('-') {
            return Err(NameError::Malformed {
                what: WHAT,
                value: value.to_owned(),
                why: "must not start or end with '-'",
            });
        }
        Ok(Self(value.into()))
    }
}

string_newtype!(
    /// A workload name, the path of its SPIFFE ID: `/`-separated segments of
    /// `A-Z a-z 0-9 . _ -`, no empty, `.` or `..` segment, at most 255 characters.
    IdentityName
);

impl IdentityName {
    /// Validates an identity name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        const WHAT: &str = "identity name";
        check_chars(
            WHAT,
            value,
            255,
            "A-Z a-z 0-9 . _ - and / between segments",
            |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'),
        )?;
        if value
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..")
        {
            return Err(NameError::Malformed {
                what: WHAT,
                value: value.to_owned(),
                why: "segments between '/' must be non-empty and not '.' or '..'",
            });
        }
        Ok(Self(value.into()))
    }
}

string_newtype!(
    /// A SPIFFE trust domain: lowercase letters, digits, `.`, `-`, `_`.
    TrustDomain
);

impl TrustDomain {
    /// Validates a trust domain name.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check_chars("trust domain", value, 255, "a-z 0-9 . - _", |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
        })?;
        Ok(Self(value.into()))
    }
}

string_newtype!(
    /// A JWT audience: printable ASCII without spaces, at most 255 characters.
    Audience
);

impl Audience {
    /// Validates an audience.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check_chars(
            "audience",
            value,
            255,
            "printable ASCII without spaces",
            |c| c.is_ascii_graphic(),
        )?;
        Ok(Self(value.into()))
    }
}

string_newtype!(
    /// An OAuth scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
    Scope
);

impl Scope {
    /// Validates a scope.
    pub fn new(value: &str) -> Result<Self, NameError> {
        check_chars(
            "scope",
            value,
            128,
            "printable ASCII except space, '\"' and '\\'",
            |c| c.is_ascii_graphic() && c != '"' && c != '\\',
        )?;
        Ok(Self(value.into()))
    }
}

/// A SPIFFE ID, `spiffe://{trust_domain}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: IdentityName,
}

impl SpiffeId {
    /// Builds the SPIFFE ID of `path` in `trust_domain`.
    pub fn new(trust_domain: TrustDomain, path: IdentityName) -> Self {
        Self { trust_domain, path }
    }

    /// Parses `spiffe://td/path`.
    pub fn parse(uri: &str) -> Result<Self, NameError> {
        const WHAT: &str = "SPIFFE ID";
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| NameError::Malformed {
                what: WHAT,
                value: uri.to_owned(),
                why: "must start with spiffe://",
            })?;
        let (td, path) = rest.split_once('/').ok_or_else(|| NameError::Malformed {
            what: WHAT,
            value: uri.to_owned(),
            why: "must have a path",
        })?;
        Ok(Self {
            trust_domain: TrustDomain::new(td)?,
            path: IdentityName::new(path)?,
        })
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path without its leading `/`: the identity name.
    pub fn path(&self) -> &IdentityName {
        &self.path
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(EnvName::new("prod").is_ok());
        assert!(EnvName::new("eu-west-1").is_ok());
        assert!(EnvName::new("").is_err());
        assert!(EnvName::new("Prod").is_err());
        assert!(EnvName::new("-x").is_err());
        assert!(EnvName::new(&"a".repeat(64)).is_err());
    }

    #[test]
    fn identity_names() {
        assert!(IdentityName::new("payments/api").is_ok());
        assert!(IdentityName::new("billing-worker_2.v1").is_ok());
        for bad in [
            "", "/lead", "trail/", "a//b", "a/../b", "a/./b", "sp ace", "é",
        ] {
            assert!(IdentityName::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn audiences_and_scopes() {
        assert!(Audience::new("https://api.example.org").is_ok());
        assert!(Audience::new("two words").is_err());
        assert!(Scope::new("payments:read").is_ok());
        assert!(Scope::new("a\"b").is_err());
        assert!(Scope::new("").is_err());
    }

    #[test]
    fn spiffe_id_round_trip() {
        let id = SpiffeId::parse("spiffe://prod.example.org/payments/api").unwrap();
        assert_eq!(id.trust_domain().as_str(), "prod.example.org");
        assert_eq!(id.path().as_str(), "payments/api");
        assert_eq!(id.to_string(), "spiffe://prod.example.org/payments/api");
        assert!(SpiffeId::parse("https://x/y").is_err());
        assert!(SpiffeId::parse("spiffe://td").is_err());
        assert!(SpiffeId::parse("spiffe://TD/x").is_err());
    }
}
