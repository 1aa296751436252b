//! The rotation states of one kind of key in one environment, derived from
//! the stored schedule and the time: which key signs, which are published.
//!
//! Every key passes through the same states. *Prepared*: published (in the
//! JWKS and the bundle) but not signing yet, so relying parties trust it
//! before they meet anything it signed. *Active*: the one key that signs.
//! *Previous*: superseded, still published until everything it signed has
//! expired. *Retired*: taken out of service by an operator. Deriving states
//! from times rather than storing them makes a restart pick the schedule up
//! exactly where it was.

use std::sync::Arc;

use crate::store::KeyRecord;

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Prepared,
    /// The signing key.
    Active,
    /// Superseded; published while what it signed may still be valid.
    Previous,
    /// Retired by an operator, or past its life.
    Retired,
}

impl KeyState {
    /// The lowercase word used in APIs and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }
}

/// One key with its schedule and state at the time the set was built.
#[derive(Debug)]
pub struct Slot<K> {
    /// Row id in the store.
    pub record_id: i64,
    /// The key's public id: a JWT key's `kid`, a CA's serial (hex).
    pub id: String,
    /// The key itself; `None` once it left the published sets (not loaded).
    pub key: Option<Arc<K>>,
    /// Created and published (unix seconds).
    pub created_at: i64,
    /// Starts signing (unix seconds).
    pub activates_at: i64,
    /// End of its life (unix seconds; `i64::MAX` for none).
    pub not_after: i64,
    /// Leaves the published sets (unix seconds; `i64::MAX` while undecided).
    pub unpublish_at: i64,
    /// Retired by an operator at (unix seconds), with the reason.
    pub retired: Option<(i64, String)>,
    /// State when the set was built.
    pub state: KeyState,
}

impl<K> Slot<K> {
    /// Whether it is in the published sets.
    pub fn published(&self) -> bool {
        self.key.is_some()
    }
}

/// The keys of one kind in one environment, ordered by activation.
#[derive(Debug)]
pub struct KeySet<K> {
    slots: Vec<Slot<K>>,
}

impl<K> Default for KeySet<K> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

/// When a key stopped signing, if it has: retired, or superseded by a later
/// key that has started signing.
fn stopped_at(records: &[&KeyRecord], i: usize, now: i64) -> Option<i64> {
    let r = records[i];
    if let Some(at) = r.retired_at {
        return Some(at);
    }
    records[i + 1..]
        .iter()
        .filter(|later| later.retired_at.is_none() && later.activates_at <= now)
        .map(|later| later.activates_at)
        .min()
}

/// When a key leaves the published sets: a retired key when the operator
/// said; a superseded one once everything it signed has expired (`keep`
/// after it stopped signing, and never past its own life).
pub fn unpublish_at(records: &[&KeyRecord], i: usize, now: i64, keep: i64) -> i64 {
    let r = records[i];
    if let Some(at) = r.unpublish_at {
        return at;
    }
    match stopped_at(records, i, now) {
        Some(stopped) => stopped.saturating_add(keep).min(r.not_after),
        None => r.not_after,
    }
}

impl<K> KeySet<K> {
    /// Derives every key's state at `now`. `load` turns a published record
    /// into its key (and its public id); `keep` is how long a superseded key
    /// stays published: the longest credential it can have signed plus
    /// leeway.
    pub fn build<E>(
        records: &[KeyRecord],
        now: i64,
        keep: i64,
        mut load: impl FnMut(&KeyRecord) -> Result<(Arc<K>, String), E>,
        mut id_of_unpublished: impl FnMut(&KeyRecord) -> String,
    ) -> Result<Self, E> {
        let mut sorted: Vec<&KeyRecord> = records.iter().collect();
        sorted.sort_by_key(|r| (r.activates_at, r.id));
        let active = sorted
            .iter()
            .rposition(|r| r.retired_at.is_none() && r.activates_at <= now && r.not_after > now);
        let mut slots = Vec::with_capacity(sorted.len());
        for (i, r) in sorted.iter().enumerate() {
            let unpublish = unpublish_at(&sorted, i, now, keep);
            let state = if Some(i) == active {
                KeyState::Active
            } else if r.retired_at.is_some() || r.not_after <= now {
                KeyState::Retired
            } else if r.activates_at > now {
                KeyState::Prepared
            } else {
                KeyState::Previous
            };
            let published = now < unpublish && now < r.not_after;
            let (key, id) = if published {
                let (key, id) = load(r)?;
                (Some(key), id)
            } else {
                (None, id_of_unpublished(r))
            };
            slots.push(Slot {
                record_id: r.id,
                id,
                key,
                created_at: r.created_at,
                activates_at: r.activates_at,
                not_after: r.not_after,
                unpublish_at: unpublish,
                retired: r
                    .retired_at
                    .map(|at| (at, r.retire_reason.clone().unwrap_or_default())),
                state: if published || state == KeyState::Active {
                    state
                } else {
                    KeyState::Retired
                },
            });
        }
        Ok(Self { slots })
    }

    /// The signing key, if there is one.
    pub fn active(&self) -> Option<(&Slot<K>, &Arc<K>)> {
        self.slots
            .iter()
            .find(|s| s.state == KeyState::Active)
            .and_then(|s| s.key.as_ref().map(|k| (s, k)))
    }

    /// Every published key, oldest activation first.
    pub fn published(&self) -> impl Iterator<Item = (&Slot<K>, &Arc<K>)> {
        self.slots
            .iter()
            .filter_map(|s| s.key.as_ref().map(|k| (s, k)))
    }

    /// Every key, published or not.
    pub fn all(&self) -> &[Slot<K>] {
        &self.slots
    }

    /// The published key with public id `id`.
    pub fn by_id(&self, id: &str) -> Option<&Arc<K>> {
        self.published().find(|(s, _)| s.id == id).map(|(_, k)| k)
    }

    /// What identifies the published set and the signer: changes exactly
    /// when relying parties must learn something new.
    pub fn fingerprint(&self) -> Vec<(i64, KeyState)> {
        self.published()
            .map(|(s, _)| (s.record_id, s.state))
            .collect()
    }

    /// The next time at or after `now` when a state changes by itself.
    pub fn next_change(&self, now: i64) -> Option<i64> {
        self.slots
            .iter()
            .flat_map(|s| [s.activates_at, s.unpublish_at, s.not_after])
            .filter(|&t| t > now && t != i64::MAX)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyKind;

    fn record(id: i64, created: i64, activates: i64, not_after: i64) -> KeyRecord {
        KeyRecord {
            id,
            env: "dev".into(),
            kind: KeyKind::JwtSigning,
            created_at: created,
            activates_at: activates,
            not_after,
            retired_at: None,
            unpublish_at: None,
            retire_reason: None,
            key_id: None,
            cert_der: None,
            sealed_key: vec![],
        }
    }

    fn states(records: &[KeyRecord], now: i64) -> Vec<(i64, KeyState, bool)> {
        KeySet::<()>::build::<()>(
            records,
            now,
            10,
            |r| Ok((Arc::new(()), r.id.to_string())),
            |r| r.id.to_string(),
        )
        .unwrap()
        .all()
        .iter()
        .map(|s| (s.record_id, s.state, s.published()))
        .collect()
    }

    #[test]
    fn a_key_is_prepared_then_active_then_previous_then_gone() {
        // Key 1 lives 0..120; key 2 prepared at 60, signs from 100.
        let keys = [record(1, 0, 0, 120), record(2, 60, 100, 220)];
        use KeyState::*;
        assert_eq!(states(&keys, 70), [(1, Active, true), (2, Prepared, true)]);
        assert_eq!(states(&keys, 100), [(1, Previous, true), (2, Active, true)]);
        // Kept 10 s after it stopped signing (at 100).
        assert_eq!(states(&keys, 109), [(1, Previous, true), (2, Active, true)]);
        assert_eq!(states(&keys, 110), [(1, Retired, false), (2, Active, true)]);
    }

    #[test]
    fn a_retired_key_stops_signing_at_once() {
        let mut keys = [record(1, 0, 0, 120), record(2, 50, 50, 170)];
        keys[1].retired_at = Some(60);
        keys[1].unpublish_at = Some(60);
        use KeyState::*;
        // Key 1 signs again only if nothing else can: here it is the last
        // unretired key with life left.
        assert_eq!(states(&keys, 61), [(1, Active, true), (2, Retired, false)]);
        let set = KeySet::<()>::build::<()>(
            &keys,
            61,
            10,
            |r| Ok((Arc::new(()), r.id.to_string())),
            |r| r.id.to_string(),
        )
        .unwrap();
        assert_eq!(set.active().unwrap().0.record_id, 1);
        assert_eq!(set.next_change(61), Some(120));
    }

    #[test]
    fn nothing_signs_past_its_life() {
        let keys = [record(1, 0, 0, 120)];
        assert_eq!(states(&keys, 120), [(1, KeyState::Retired, false)]);
    }
}
