//! The identity registry's two secondary indexes, so the lookups that run
//! per node stream and per platform attestation cost what they find rather
//! than the size of the registry (a million identities took a full scan
//! each: every node agent's snapshot and every Kubernetes attestation):
//!
//! * a node's children: the names of the identities parented to it;
//! * the identities platform evidence can match, by environment and their
//!   least selector. An identity matches only when *all* its selectors are
//!   proven, so its least one is among them: the union of the buckets of the
//!   proven selectors holds every identity that can match, and little else.
//!
//! Identities with a parent are not in the second index: their selectors
//! are all `unix:`, which only a node agent proves (no broker attestor may
//! be named `unix`), so platform evidence never matches them.
//!
//! The index holds names, not identities: a reader looks each one up in the
//! registry and checks it there, so an index that is a moment behind a
//! change can make a lookup miss that change, never answer with stale
//! settings. Node streams subscribe to changes before they read the index,
//! so they get such a change as the next update.

use std::collections::{BTreeSet, HashMap};
use std::sync::RwLock;

use crate::model::{EnvName, Identity, IdentityKey, IdentityName, Selector};

#[derive(Debug, Default)]
struct Indexes {
    /// Parent node → the names of the identities it serves (a child lives
    /// in its parent's environment).
    children: HashMap<IdentityKey, BTreeSet<IdentityName>>,
    /// (environment, least selector) → names of the unparented identities
    /// with selectors whose least selector it is.
    by_least_selector: HashMap<(EnvName, Selector), BTreeSet<IdentityName>>,
}

/// Where an identity sits in the second index, if anywhere.
fn selector_slot(identity: &Identity) -> Option<(EnvName, Selector)> {
    if identity.parent.is_some() {
        return None;
    }
    let least = identity.selectors.iter().min()?;
    Some((identity.key.env.clone(), least.clone()))
}

/// Removes `name` from `map[slot]`, dropping the slot once it is empty.
fn remove_from<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, BTreeSet<IdentityName>>,
    slot: &K,
    name: &IdentityName,
) {
    if let Some(names) = map.get_mut(slot) {
        names.remove(name);
        if names.is_empty() {
            map.remove(slot);
        }
    }
}

/// The registry's secondary indexes. Writers call [`RegistryIndex::replace`]
/// for every identity they add, change or drop.
#[derive(Debug, Default)]
pub(super) struct RegistryIndex(RwLock<Indexes>);

impl RegistryIndex {
    /// Moves an identity from where `old` put it to where `new` puts it
    /// (`None`: not there; the same key on both sides when both are set).
    pub(super) fn replace(&self, old: Option<&Identity>, new: Option<&Identity>) {
        let old_children = old.and_then(|o| o.parent.as_ref());
        let new_children = new.and_then(|n| n.parent.as_ref());
        let old_slot = old.and_then(selector_slot);
        let new_slot = new.and_then(selector_slot);
        if old_children == new_children && old_slot == new_slot {
            return;
        }
        let mut index = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let (Some(old), Some(parent)) = (old, old_children) {
            remove_from(&mut index.children, parent, &old.key.name);
        }
        if let (Some(old), Some(slot)) = (old, &old_slot) {
            remove_from(&mut index.by_least_selector, slot, &old.key.name);
        }
        if let (Some(new), Some(parent)) = (new, new_children) {
            index
                .children
                .entry(parent.clone())
                .or_default()
                .insert(new.key.name.clone());
        }
        if let (Some(new), Some(slot)) = (new, new_slot) {
            index
                .by_least_selector
                .entry(slot)
                .or_default()
                .insert(new.key.name.clone());
        }
    }

    /// The keys of the identities parented to `node`, sorted.
    pub(super) fn children(&self, node: &IdentityKey) -> Vec<IdentityKey> {
        let index = self.0.read().unwrap_or_else(|p| p.into_inner());
        index.children.get(node).map_or_else(Vec::new, |names| {
            names
                .iter()
                .map(|name| IdentityKey {
                    env: node.env.clone(),
                    name: name.clone(),
                })
                .collect()
        })
    }

    /// The keys of the unparented identities of `env` whose least selector
    /// is one of `proven`: every identity `proven` can match, and others
    /// to be checked.
    pub(super) fn platform_candidates<'a>(
        &self,
        env: &EnvName,
        proven: impl IntoIterator<Item = &'a Selector>,
    ) -> Vec<IdentityKey> {
        let index = self.0.read().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for selector in proven {
            // The lookup needs an owned key; a proven set is a handful.
            if let Some(names) = index
                .by_least_selector
                .get(&(env.clone(), selector.clone()))
            {
                out.extend(names.iter().map(|name| IdentityKey {
                    env: env.clone(),
                    name: name.clone(),
                }));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{test_identity, test_selector};

    fn key(s: &str) -> IdentityKey {
        IdentityKey::parse(s).unwrap()
    }

    fn with(name: &str, selectors: Vec<Selector>, parent: Option<&str>) -> Identity {
        let mut id = test_identity();
        id.key = key(name);
        id.selectors = selectors;
        id.parent = parent.map(key);
        id
    }

    #[test]
    fn children_follow_creation_reparenting_and_removal() {
        let index = RegistryIndex::default();
        let a = with(
            "dev/a",
            vec![test_selector("unix:uid", "1")],
            Some("dev/node-1"),
        );
        let b = with(
            "dev/b",
            vec![test_selector("unix:uid", "2")],
            Some("dev/node-1"),
        );
        index.replace(None, Some(&a));
        index.replace(None, Some(&b));
        assert_eq!(
            index.children(&key("dev/node-1")),
            vec![key("dev/a"), key("dev/b")]
        );
        let moved = with(
            "dev/b",
            vec![test_selector("unix:uid", "2")],
            Some("dev/node-2"),
        );
        index.replace(Some(&b), Some(&moved));
        assert_eq!(index.children(&key("dev/node-1")), vec![key("dev/a")]);
        assert_eq!(index.children(&key("dev/node-2")), vec![key("dev/b")]);
        index.replace(Some(&a), None);
        assert!(index.children(&key("dev/node-1")).is_empty());
        assert!(
            !index
                .0
                .read()
                .unwrap()
                .children
                .contains_key(&key("dev/node-1"))
        );
    }

    #[test]
    fn a_changed_selector_set_moves_the_identity_to_its_new_bucket() {
        let index = RegistryIndex::default();
        let before = with(
            "dev/api",
            vec![test_selector("k8s:sa", "api"), test_selector("k8s:ns", "a")],
            None,
        );
        index.replace(None, Some(&before));
        let env = EnvName::new("dev").unwrap();
        // Filed under its least selector only.
        assert_eq!(
            index.platform_candidates(&env, &[test_selector("k8s:ns", "a")]),
            vec![key("dev/api")]
        );
        assert!(
            index
                .platform_candidates(&env, &[test_selector("k8s:sa", "api")])
                .is_empty()
        );
        let after = with("dev/api", vec![test_selector("k8s:ns", "b")], None);
        index.replace(Some(&before), Some(&after));
        assert!(
            index
                .platform_candidates(&env, &[test_selector("k8s:ns", "a")])
                .is_empty()
        );
        assert_eq!(
            index.platform_candidates(&env, &[test_selector("k8s:ns", "b")]),
            vec![key("dev/api")]
        );
        let other_env = EnvName::new("prod").unwrap();
        assert!(
            index
                .platform_candidates(&other_env, &[test_selector("k8s:ns", "b")])
                .is_empty()
        );
    }

    #[test]
    fn parented_and_selectorless_identities_are_never_platform_candidates() {
        let index = RegistryIndex::default();
        let served = with(
            "dev/w",
            vec![test_selector("unix:uid", "7")],
            Some("dev/node"),
        );
        let token_only = with("dev/t", vec![], None);
        index.replace(None, Some(&served));
        index.replace(None, Some(&token_only));
        let env = EnvName::new("dev").unwrap();
        assert!(
            index
                .platform_candidates(&env, &[test_selector("unix:uid", "7")])
                .is_empty()
        );
        assert!(index.0.read().unwrap().by_least_selector.is_empty());
    }
}
