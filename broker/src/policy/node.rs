//! Node rules: which identities a node agent serves, and what their
//! selectors may say.
//!
//! A node is an ordinary identity; other identities make it a node by naming
//! it as their `parent`. Such a workload identity is never attested by the
//! broker directly: the node's agent proves its selectors from the calling
//! process's kernel credentials (`unix:uid`, …) and asks the broker for its
//! credentials, which the broker grants only to the parent node.

use super::PolicyError;
use crate::model::{Identity, IdentityKey, Selector};

/// The selector prefix of node-agent workload attestation.
pub const UNIX_PREFIX: &str = "unix";

/// The `unix:` selector keys a node agent can prove, and what each means.
pub const UNIX_SELECTORS: &[(&str, &str)] = &[
    ("uid", "numeric user id of the calling process"),
    ("gid", "numeric primary group id of the calling process"),
    ("user", "user name of the calling process's uid"),
    ("path", "absolute path of the calling process's executable"),
    (
        "sha256",
        "SHA-256 (hex) of the calling process's executable",
    ),
];

fn invalid(msg: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(msg.into())
}

/// Whether `selector` is one a node agent proves (`unix:…`).
pub fn is_unix(selector: &Selector) -> bool {
    selector
        .key
        .split_once(':')
        .is_some_and(|(prefix, _)| prefix == UNIX_PREFIX)
}

/// Checks one `unix:` selector's key and value.
fn check_unix_selector(selector: &Selector) -> Result<(), PolicyError> {
    let key = selector
        .key
        .strip_prefix("unix:")
        .ok_or_else(|| invalid(format!("{} is not a unix: selector", selector.key)))?;
    let value = selector.value.as_str();
    let ok = match key {
        "uid" | "gid" => value.parse::<u32>().is_ok(),
        "user" => !value.is_empty() && !value.contains(['/', ':']),
        "path" => value.starts_with('/'),
        "sha256" => value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()),
        _ => {
            let known: Vec<&str> = UNIX_SELECTORS.iter().map(|(k, _)| *k).collect();
            return Err(invalid(format!(
                "unknown selector unix:{key}; a node agent proves unix:{}",
                known.join(", unix:")
            )));
        }
    };
    if ok {
        Ok(())
    } else {
        let expected = match key {
            "uid" | "gid" => "a number",
            "path" => "an absolute path",
            "sha256" => "64 hex digits",
            _ => "a user name",
        };
        Err(invalid(format!(
            "selector unix:{key}={value:?} must be {expected}"
        )))
    }
}

/// Checks the node rules of a new identity: `unix:` selectors need a
/// parent, and an identity with a parent has at least one selector, all of
/// them `unix:` (no other attestor can vouch for a process on the node, and
/// an empty set would match every process there). `parent` is the parent as
/// registered, when it exists.
pub fn check_node_rules(identity: &Identity, parent: Option<&Identity>) -> Result<(), PolicyError> {
    let Some(parent_key) = &identity.parent else {
        if let Some(s) = identity.selectors.iter().find(|s| is_unix(s)) {
            return Err(invalid(format!(
                "selector {}={} is proven by a node agent: give the node with --parent ENV/NODE",
                s.key, s.value
            )));
        }
        return Ok(());
    };
    if parent_key.env != identity.key.env {
        return Err(invalid(format!(
            "parent {parent_key} is in another environment than {}",
            identity.key
        )));
    }
    if *parent_key == identity.key {
        return Err(invalid("an identity cannot be its own parent"));
    }
    let parent = parent.ok_or_else(|| invalid(format!("parent {parent_key} does not exist")))?;
    if parent.parent.is_some() {
        return Err(invalid(format!(
            "parent {parent_key} is itself served by a node; nodes cannot be nested"
        )));
    }
    if identity.selectors.is_empty() {
        return Err(invalid(
            "an identity with a parent needs at least one unix: selector (e.g. unix:uid=1000)",
        ));
    }
    for selector in &identity.selectors {
        if !is_unix(selector) {
            return Err(invalid(format!(
                "selector {} cannot be proven by a node agent; identities with a parent take unix: selectors only",
                selector.key
            )));
        }
        check_unix_selector(selector)?;
    }
    Ok(())
}

/// Whether `identity` is served by `node` now: parented to it. (Status is
/// checked separately, so a disabled entry leaves the node's set.)
pub fn is_served_by(identity: &Identity, node: &IdentityKey) -> bool {
    identity.parent.as_ref() == Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{test_identity, test_selector};

    fn node() -> Identity {
        let mut n = test_identity();
        n.key.name = crate::model::IdentityName::new("host-1").unwrap();
        n
    }

    fn workload(selectors: Vec<Selector>) -> Identity {
        let mut w = test_identity();
        w.parent = Some(node().key);
        w.selectors = selectors;
        w
    }

    #[test]
    fn parented_identities_take_valid_unix_selectors_only() {
        let n = node();
        assert!(
            check_node_rules(&workload(vec![test_selector("unix:uid", "1000")]), Some(&n)).is_ok()
        );
        assert!(
            check_node_rules(
                &workload(vec![
                    test_selector("unix:path", "/usr/bin/app"),
                    test_selector("unix:sha256", &"a".repeat(64)),
                    test_selector("unix:user", "app"),
                    test_selector("unix:gid", "10"),
                ]),
                Some(&n)
            )
            .is_ok()
        );
        let cases = [
            (vec![], "at least one unix: selector"),
            (vec![test_selector("k8s:ns", "x")], "unix: selectors only"),
            (vec![test_selector("unix:uid", "abc")], "must be a number"),
            (vec![test_selector("unix:path", "bin/app")], "absolute path"),
            (vec![test_selector("unix:sha256", "abc")], "64 hex digits"),
            (
                vec![test_selector("unix:pid", "1")],
                "unknown selector unix:pid",
            ),
        ];
        for (selectors, needle) in cases {
            let err = check_node_rules(&workload(selectors), Some(&n)).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn parent_must_exist_share_the_environment_and_not_be_a_workload() {
        let w = workload(vec![test_selector("unix:uid", "1")]);
        assert!(
            check_node_rules(&w, None)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        let mut nested = node();
        nested.parent = Some(test_identity().key);
        assert!(
            check_node_rules(&w, Some(&nested))
                .unwrap_err()
                .to_string()
                .contains("cannot be nested")
        );
        let mut other_env = w.clone();
        other_env.key.env = crate::model::EnvName::new("prod").unwrap();
        assert!(
            check_node_rules(&other_env, Some(&node()))
                .unwrap_err()
                .to_string()
                .contains("another environment")
        );
    }

    #[test]
    fn unix_selectors_need_a_parent() {
        let mut id = test_identity();
        id.selectors = vec![test_selector("unix:uid", "1000")];
        let err = check_node_rules(&id, None).unwrap_err();
        assert!(err.to_string().contains("--parent"), "{err}");
    }
}
