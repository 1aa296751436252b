//! Selector matching (SPIRE semantics): platform evidence proves a set of
//! `ATTESTOR:KEY=VALUE` facts; an identity matches when it lives in the
//! attestor's environment, has selectors, and every one of them is in the
//! proven set. An identity without selectors is reachable by join token
//! only.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::attest::AttestorInfo;
use crate::model::{EnvName, Identity, Selector};

/// Whether `identity` is matched by `proven` selectors from an attestor
/// serving `env`.
pub fn matches(identity: &Identity, env: &EnvName, proven: &BTreeSet<Selector>) -> bool {
    identity.key.env == *env
        && !identity.selectors.is_empty()
        && identity.selectors.iter().all(|s| proven.contains(s))
}

/// The identities among `candidates` that `proven` matches, sorted by key.
pub fn matching<'a>(
    candidates: impl IntoIterator<Item = &'a Arc<Identity>>,
    env: &EnvName,
    proven: &BTreeSet<Selector>,
) -> Vec<Arc<Identity>> {
    let mut out: Vec<Arc<Identity>> = candidates
        .into_iter()
        .filter(|id| matches(id, env, proven))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// `a:k=v, b:k=v` for messages.
pub fn describe(selectors: &BTreeSet<Selector>) -> String {
    selectors
        .iter()
        .map(|s| format!("{}={}", s.key, s.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attestor prefix of a selector key (`prod-cluster` of `prod-cluster:ns`).
pub fn prefix(key: &str) -> Option<&str> {
    key.split_once(':').map(|(p, _)| p)
}

/// Which attestors could ever reach `identity`: `join_token` when it has no
/// selectors; otherwise the attestor every non-`unix` selector names, if it
/// serves the identity's environment.
pub fn reachable_by(identity: &Identity, attestors: &[AttestorInfo]) -> Vec<String> {
    if identity.selectors.is_empty() {
        return vec!["join_token".to_owned()];
    }
    let prefixes: BTreeSet<&str> = identity
        .selectors
        .iter()
        .filter_map(|s| prefix(&s.key))
        .filter(|p| *p != crate::attest::RESERVED_PREFIX)
        .collect();
    if prefixes.is_empty() {
        return vec![match &identity.parent {
            Some(node) => format!("node agent of {node}"),
            None => "node agent (unix selectors)".to_owned(),
        }];
    }
    attestors
        .iter()
        .filter(|a| prefixes.len() == 1 && prefixes.contains(a.name.as_str()))
        .filter(|a| a.env == identity.key.env)
        .map(|a| format!("{} ({})", a.name, a.kind.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::AttestorKind;
    use crate::model::{test_identity, test_selector};

    #[test]
    fn all_selectors_must_be_proven_in_the_right_environment() {
        let mut id = test_identity();
        let dev = EnvName::new("dev").unwrap();
        let prod = EnvName::new("prod").unwrap();
        let proven = BTreeSet::from([
            test_selector("c:ns", "pay"),
            test_selector("c:sa", "api"),
            test_selector("c:pod", "p"),
        ]);
        assert!(
            !matches(&id, &dev, &proven),
            "no selectors: join token only"
        );
        id.selectors = vec![test_selector("c:ns", "pay"), test_selector("c:sa", "api")];
        assert!(matches(&id, &dev, &proven));
        assert!(!matches(&id, &prod, &proven), "other environment");
        id.selectors.push(test_selector("c:node", "n1"));
        assert!(!matches(&id, &dev, &proven), "one selector unproven");
        let infos = [AttestorInfo {
            name: "c".into(),
            kind: AttestorKind::Kubernetes,
            env: dev.clone(),
        }];
        assert_eq!(reachable_by(&id, &infos), ["c (kubernetes)"]);
        id.selectors.clear();
        assert_eq!(reachable_by(&id, &infos), ["join_token"]);
        assert_eq!(describe(&proven), "c:ns=pay, c:pod=p, c:sa=api");
    }
}
