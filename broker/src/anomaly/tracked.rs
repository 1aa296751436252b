//! A bounded map for per-key rule state: at most `cap` keys. When full,
//! entries idle for longer than the rule's window are swept (at most once
//! a second); if none is, a new key is not tracked (and so not judged)
//! until room returns, rather than growing without bound.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Mutex;

use dashmap::DashMap;

/// Per-key state with a last-touched time.
#[derive(Debug)]
pub struct Tracked<K: Eq + Hash, V> {
    map: DashMap<K, (i64, V)>,
    cap: usize,
    last_sweep: Mutex<i64>,
}

impl<K: Eq + Hash, V> Tracked<K, V> {
    /// An empty map for at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            map: DashMap::new(),
            cap,
            last_sweep: Mutex::new(i64::MIN),
        }
    }

    /// Runs `f` on `key`'s state (made by `new` if absent) at `now`;
    /// `None` when the map is full of recently used keys.
    /// The key is borrowed (`&str` for `String` keys), so a key already
    /// tracked costs no allocation.
    pub fn with<Q, R>(
        &self,
        key: &Q,
        now: i64,
        idle: i64,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(mut e) = self.map.get_mut(key) {
            e.0 = now;
            return Some(f(&mut e.1));
        }
        if self.map.len() >= self.cap {
            self.sweep(now, idle);
            if self.map.len() >= self.cap {
                return None;
            }
        }
        let mut e = self
            .map
            .entry(key.to_owned())
            .or_insert_with(|| (now, new()));
        e.0 = now;
        Some(f(&mut e.1))
    }

    fn sweep(&self, now: i64, idle: i64) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if *last >= now {
                return;
            }
            *last = now;
        }
        self.map.retain(|_, (at, _)| now - *at <= idle);
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_cap() {
        let t: Tracked<u32, u32> = Tracked::new(3);
        for k in 0..10 {
            t.with(&k, 100, 60, || 0, |v| *v += 1);
        }
        assert_eq!(t.len(), 3);
        // Past the idle time the old keys make room.
        assert_eq!(t.with(&99, 200, 60, || 7, |v| *v), Some(7));
        assert_eq!(t.len(), 1);
    }
}
