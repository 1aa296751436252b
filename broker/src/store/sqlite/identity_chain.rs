//! One identity's audit history as a chain through the log.
//!
//! Why not an `(identity, seq)` index: with a million identities renewing
//! credentials, every new entry landed on a random page of that index, and
//! SQLite's WAL writes whole pages, so each entry cost a 4 KiB page write
//! of its own. Measured on the log's schema (1,024-entry commits,
//! `synchronous = FULL`, a million identities): 17,000 entries/s with the
//! index, 59,000/s with this chain instead.
//!
//! Each entry records `identity_prev`, the seq of the same identity's
//! previous entry, and [`IdentityHeads`] keeps each identity's newest seq
//! (its head) in memory. A history query walks back from the head, one
//! primary-key lookup per entry ([`walk_from`]).
//!
//! The heads are right however many processes append to the file: every
//! append and every query first reads what was appended since this process
//! last looked ([`IdentityHeads::catch_up`]). Heads are persisted to
//! `audit_identity_heads` every [`PERSIST_EVERY`] with the seq they cover,
//! so opening the store reads only the log after that seq.
//!
//! An identity's head is keyed by the first 8 bytes of the SHA-256 of its
//! name (`env/name`): 16 bytes a head in memory instead of the name. Two
//! names sharing a key would only cut short each other's walks (a walk
//! stops at an entry of another identity, so it never shows one); among
//! a million names the chance is 1 in 37 million, and names are chosen by
//! operators, not callers. Only identities an operator created or an
//! authenticated caller holds are named in the log, so the map grows with
//! them, as the registry does.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqliteExecutor, SqlitePool};

use crate::audit::AuditEntry;
use crate::store::StoreError;
use crate::store::audit_rows;

/// How often the heads are written to `audit_identity_heads`; a process
/// that opens the store reads at most this much of the log's tail (plus
/// whatever was appended since the last persist of a process that stopped).
pub(super) const PERSIST_EVERY: Duration = Duration::from_secs(600);

/// Entries read at a time when catching up with the log.
const CATCH_UP_PAGE: i64 = 4_096;

/// Opening a store that read at least this many entries past the persisted
/// heads persists them at once, so the next open does not read them again.
/// (Fewer are read again quickly; persisting costs a copy of every head.)
const PERSIST_AFTER_READING: i64 = 1_000_000;

/// An identity's key: the first 8 bytes of the SHA-256 of `env/name`.
type Key = i64;

fn key_of(identity: &str) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_le_bytes(key)
}

/// Keys are already uniform hash output: the map uses them as they are
/// instead of hashing them again.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_i64` is used (the key); fold anything else in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_i64(&mut self, key: i64) {
        self.0 = key as u64;
    }
}

type HeadMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// Each identity's newest audit entry, as far as this process has read.
#[derive(Debug)]
pub(super) struct IdentityHeads {
    state: Mutex<Heads>,
}

#[derive(Debug)]
struct Heads {
    newest: HeadMap<i64>,
    /// Every entry up to this seq is reflected in `newest`.
    through: i64,
    /// `audit_identity_heads` reflects every entry up to this seq.
    persisted_through: i64,
    persisted_at: Instant,
    persisting: bool,
}

impl Heads {
    /// Takes `seq` as `key`'s head unless a newer one is known.
    fn advance(&mut self, key: Key, seq: i64) {
        let head = self.newest.entry(key).or_insert(seq);
        *head = (*head).max(seq);
    }
}

/// How the log's end given to [`IdentityHeads::catch_up`] was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EndSeen {
    /// Inside the append's write transaction: the log's true end.
    UnderWriteLock,
    /// By a reader, whose snapshot may predate entries this process has
    /// appended and published since.
    InSnapshot,
}

/// The links of a batch being appended, published once it commits.
#[derive(Debug)]
pub(super) struct PendingHeads {
    heads: Vec<(Key, i64)>,
    through: i64,
}

impl IdentityHeads {
    /// Loads the persisted heads and reads the log past them.
    pub(super) async fn load(pool: &SqlitePool) -> Result<Arc<Self>, StoreError> {
        let through: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads_through WHERE id = 1")
            .fetch_one(pool)
            .await?;
        let mut newest = HeadMap::default();
        let mut rows = sqlx::query("SELECT key, seq FROM audit_identity_heads").fetch(pool);
        while let Some(row) = tokio_stream::StreamExt::next(&mut rows).await {
            let row = row?;
            newest.insert(row.try_get("key")?, row.try_get("seq")?);
        }
        drop(rows);
        let heads = Arc::new(Self {
            state: Mutex::new(Heads {
                newest,
                through,
                persisted_through: through,
                persisted_at: Instant::now(),
                persisting: false,
            }),
        });
        let mut conn = pool.acquire().await?;
        let end = log_end(&mut *conn).await?;
        heads.catch_up(&mut conn, end, EndSeen::InSnapshot).await?;
        drop(conn);
        if heads.lock().through - through >= PERSIST_AFTER_READING {
            heads.persist(pool).await?;
        }
        Ok(heads)
    }

    fn lock(&self) -> MutexGuard<'_, Heads> {
        // A panic while holding the lock leaves plain data behind; the
        // catch-up is idempotent, so carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the entries after the last one seen, through `end` (the log's
    /// newest seq as the caller saw it), so their identities' heads are
    /// known.
    pub(super) async fn catch_up(
        &self,
        conn: &mut SqliteConnection,
        end: i64,
        seen: EndSeen,
    ) -> Result<(), StoreError> {
        let mut from = {
            let mut state = self.lock();
            if end < state.through {
                match seen {
                    // An older snapshot than what this process appended
                    // since: nothing in it is new.
                    EndSeen::InSnapshot => return Ok(()),
                    // The log is shorter than what was read of it: the file
                    // was replaced (a restore). Read it all again.
                    EndSeen::UnderWriteLock => {
                        state.newest.clear();
                        state.through = 0;
                        state.persisted_through = 0;
                    }
                }
            }
            state.through
        };
        // A page at a time: opening a store whose heads were never
        // persisted reads the whole log, and must not hold it all at once.
        while from < end {
            let rows = sqlx::query(
                "SELECT seq, identity FROM audit_log
                 WHERE seq > ? AND seq <= ? AND identity IS NOT NULL ORDER BY seq LIMIT ?",
            )
            .bind(from)
            .bind(end)
            .bind(CATCH_UP_PAGE)
            .fetch_all(&mut *conn)
            .await?;
            let mut seen = Vec::with_capacity(rows.len());
            for row in &rows {
                let identity: &str = row.try_get("identity")?;
                seen.push((key_of(identity), row.try_get::<i64, _>("seq")?));
            }
            let page_end = match seen.last() {
                Some(&(_, seq)) if rows.len() as i64 == CATCH_UP_PAGE => seq,
                _ => end,
            };
            let mut state = self.lock();
            for (key, seq) in seen {
                state.advance(key, seq);
            }
            state.through = state.through.max(page_end);
            from = page_end;
        }
        Ok(())
    }

    /// The links of `entries`, to be appended as seqs `first_seq`,
    /// `first_seq + 1`, …: each one's identity's previous entry (possibly
    /// earlier in the same batch), and the heads to publish once they
    /// commit. Call [`Self::catch_up`] to the log's end first.
    pub(super) fn link(
        &self,
        entries: &[AuditEntry],
        first_seq: i64,
    ) -> (Vec<Option<i64>>, PendingHeads) {
        let state = self.lock();
        let mut in_batch: HeadMap<i64> = HeadMap::default();
        let mut prevs = Vec::with_capacity(entries.len());
        for (seq, entry) in (first_seq..).zip(entries) {
            let prev = entry.identity.as_deref().map(key_of).and_then(|key| {
                let prev = in_batch
                    .get(&key)
                    .or_else(|| state.newest.get(&key))
                    .copied();
                in_batch.insert(key, seq);
                prev
            });
            prevs.push(prev);
        }
        let through = first_seq + entries.len() as i64 - 1;
        (
            prevs,
            PendingHeads {
                heads: in_batch.into_iter().collect(),
                through,
            },
        )
    }

    /// Publishes a committed batch's heads. Returns whether the heads are
    /// due to be persisted (and marks that under way).
    pub(super) fn publish(&self, pending: PendingHeads) -> bool {
        let mut state = self.lock();
        for (key, seq) in pending.heads {
            state.advance(key, seq);
        }
        state.through = state.through.max(pending.through);
        let due = !state.persisting && state.persisted_at.elapsed() >= PERSIST_EVERY;
        state.persisting |= due;
        due
    }

    /// `identity`'s newest entry this process knows of.
    pub(super) fn head(&self, identity: &str) -> Option<i64> {
        self.lock().newest.get(&key_of(identity)).copied()
    }

    /// Writes every head that moved since the last persist, then the seq
    /// they cover. Each statement is its own short transaction, so audit
    /// appends never wait behind the whole write.
    pub(super) async fn persist(&self, pool: &SqlitePool) -> Result<(), StoreError> {
        let (mut moved, through) = {
            let state = self.lock();
            let since = state.persisted_through;
            let moved: Vec<(Key, i64)> = state
                .newest
                .iter()
                .filter(|(_, seq)| **seq > since)
                .map(|(key, seq)| (*key, *seq))
                .collect();
            (moved, state.through)
        };
        // In key order, so consecutive statements fill neighbouring pages.
        moved.sort_unstable();
        let result = write_heads(pool, &moved, through).await;
        let mut state = self.lock();
        state.persisting = false;
        state.persisted_at = Instant::now();
        if result.is_ok() {
            state.persisted_through = state.persisted_through.max(through);
        }
        result
    }
}

async fn write_heads(
    pool: &SqlitePool,
    heads: &[(Key, i64)],
    through: i64,
) -> Result<(), StoreError> {
    for run in audit_rows::runs(heads) {
        let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO audit_identity_heads (key, seq) ");
        q.push_values(run, |mut row, (key, seq)| {
            row.push_bind(*key).push_bind(*seq);
        });
        q.push(
            " ON CONFLICT (key) DO UPDATE SET seq = excluded.seq
              WHERE excluded.seq > audit_identity_heads.seq",
        );
        q.build().execute(pool).await?;
    }
    sqlx::query("UPDATE audit_heads_through SET seq = ? WHERE id = 1 AND seq < ?")
        .bind(through)
        .bind(through)
        .execute(pool)
        .await?;
    Ok(())
}

/// The newest seq in the log, or of the retention cut when retention
/// deleted every entry (0 when there never was one).
pub(super) async fn log_end(conn: impl SqliteExecutor<'_>) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT max(coalesce((SELECT max(seq) FROM audit_log), 0),
                    coalesce((SELECT seq FROM audit_cut WHERE id = 1), 0))",
    )
    .fetch_one(conn)
    .await?)
}

/// Starts a query over `identity`'s entries: `WITH RECURSIVE chain(seq)`
/// walking back from `head`, then `SELECT <columns> FROM chain CROSS JOIN
/// audit_log AS a WHERE a.seq = chain.seq AND a.identity = <identity>`,
/// for the caller to add conditions (on `a`) to.
///
/// The walk follows `identity_prev` only to an older entry of the same
/// identity, so an altered link can neither loop nor wander into another
/// identity's history. `walk_limit` stops it after that many entries: only
/// right when every entry walked is one the caller returns.
pub(super) fn walk_from(
    columns: &str,
    head: i64,
    identity: &str,
    walk_limit: Option<i64>,
) -> QueryBuilder<Sqlite> {
    let mut q = QueryBuilder::<Sqlite>::new("WITH RECURSIVE chain(seq) AS (SELECT ");
    q.push_bind(head);
    q.push(
        " UNION ALL SELECT a.identity_prev FROM chain CROSS JOIN audit_log AS a
          WHERE a.seq = chain.seq AND a.identity_prev < a.seq AND a.identity = ",
    );
    q.push_bind(identity);
    if let Some(limit) = walk_limit {
        q.push(" LIMIT ").push_bind(limit);
    }
    q.push(") SELECT ")
        .push(columns)
        .push(" FROM chain CROSS JOIN audit_log AS a WHERE a.seq = chain.seq AND a.identity = ");
    q.push_bind(identity);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads_persisted_at(persisted_at: Instant) -> IdentityHeads {
        IdentityHeads {
            state: Mutex::new(Heads {
                newest: HeadMap::default(),
                through: 0,
                persisted_through: 0,
                persisted_at,
                persisting: false,
            }),
        }
    }

    fn batch(heads: &IdentityHeads, first_seq: i64) -> PendingHeads {
        let entry = AuditEntry {
            identity: Some("dev/api".into()),
            ..AuditEntry::default()
        };
        heads.link(&[entry], first_seq).1
    }

    /// Heads are persisted once every `PERSIST_EVERY`, one persist at a time.
    #[test]
    fn heads_fall_due_for_persisting_once_per_interval() {
        let fresh = heads_persisted_at(Instant::now());
        assert!(!fresh.publish(batch(&fresh, 1)), "persisted just now");
        let Some(long_ago) = Instant::now().checked_sub(PERSIST_EVERY) else {
            return; // a machine up for less than the interval
        };
        let stale = heads_persisted_at(long_ago);
        assert!(stale.publish(batch(&stale, 1)), "due after the interval");
        assert!(
            !stale.publish(batch(&stale, 2)),
            "not again while that persist is under way"
        );
        assert_eq!(stale.head("dev/api"), Some(2));
    }

    /// An entry links to its identity's previous one, in the batch or
    /// before it; other identities' entries start their own chains.
    #[test]
    fn a_batch_links_each_entry_to_its_identitys_previous_one() {
        let heads = heads_persisted_at(Instant::now());
        heads.publish(batch(&heads, 7));
        let of = |identity: &str| AuditEntry {
            identity: Some(identity.into()),
            ..AuditEntry::default()
        };
        let entries = [
            of("dev/api"),
            of("dev/web"),
            AuditEntry::default(),
            of("dev/api"),
        ];
        let (prevs, pending) = heads.link(&entries, 8);
        assert_eq!(prevs, [Some(7), None, None, Some(8)]);
        assert_eq!(heads.head("dev/api"), Some(7), "published only on commit");
        heads.publish(pending);
        assert_eq!(
            (heads.head("dev/api"), heads.head("dev/web")),
            (Some(11), Some(9))
        );
    }
}
