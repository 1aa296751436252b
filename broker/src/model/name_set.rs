//! A small sorted set of names (an identity's audiences or scopes).
//!
//! Every identity is held in memory, and most have one to four audiences
//! and scopes. A `BTreeSet` spends a whole node (eleven slots, about 280
//! bytes) on even one name; this set is the names themselves in one
//! sorted, deduplicated boxed slice, and answers `contains` by binary
//! search.

use std::fmt;

use serde::{Serialize, Serializer};

/// Sorted, without duplicates, immutable once built.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NameSet<T>(Box<[T]>);

impl<T> Default for NameSet<T> {
    fn default() -> Self {
        Self(Box::default())
    }
}

impl<T: Ord> NameSet<T> {
    /// Whether `name` is in the set.
    pub fn contains(&self, name: &T) -> bool {
        self.0.binary_search(name).is_ok()
    }
}

impl<T> NameSet<T> {
    /// The names, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Ord> FromIterator<T> for NameSet<T> {
    fn from_iter<I: IntoIterator<Item = T>>(names: I) -> Self {
        let mut names: Vec<T> = names.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        Self(names.into_boxed_slice())
    }
}

impl<'a, T> IntoIterator for &'a NameSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for NameSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

impl<T: Serialize> Serialize for NameSet<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_once_and_found_by_search() {
        let set: NameSet<String> = ["ledger", "billing", "ledger", "audit"]
            .map(String::from)
            .into_iter()
            .collect();
        assert_eq!(set.len(), 3, "duplicates dropped");
        let names: Vec<&str> = set.iter().map(String::as_str).collect();
        assert_eq!(names, ["audit", "billing", "ledger"]);
        for name in ["audit", "billing", "ledger"] {
            assert!(set.contains(&name.to_owned()), "{name}");
        }
        for name in ["", "aud", "zzz", "billings"] {
            assert!(!set.contains(&name.to_owned()), "{name}");
        }
        assert!(NameSet::<String>::default().is_empty());
        assert_eq!(
            serde_json::to_string(&set).unwrap(),
            r#"["audit","billing","ledger"]"#
        );
    }
}
