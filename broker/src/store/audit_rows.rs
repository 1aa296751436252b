//! Audit entries to rows, once for every backend: linking a batch into the
//! chain and writing it with a few multi-row INSERTs.
//!
//! A batch of `n` entries goes out as one INSERT per set bit of `n` (37 is
//! 32 + 4 + 1 rows), largest first. Every statement therefore has one of
//! ten shapes (1, 2, 4 … [`MAX_ROWS`] rows), so each connection prepares at
//! most ten and its statement cache keeps them, instead of parsing a new statement for
//! every batch size; and no batch pays a round trip per entry.

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::audit::{AuditEntry, ChainKey, ChainedEntry};

/// Most rows in one INSERT: 512 × 18 columns = 9,216 bound values, under
/// both SQLite's (32,766) and PostgreSQL's (65,535) limits.
const MAX_ROWS: usize = 512;

/// An entry placed in the chain.
#[derive(Debug)]
pub(super) struct Linked<'a> {
    seq: i64,
    entry: &'a AuditEntry,
    prev_hash: [u8; 32],
    hash: [u8; 32],
    /// The seq of the same identity's previous entry, where the backend
    /// links them ([`LogColumns::WithIdentityPrev`]).
    identity_prev: Option<i64>,
}

impl Linked<'_> {
    /// Records the seq of the same identity's previous entry.
    pub(super) fn set_identity_prev(&mut self, prev: Option<i64>) {
        self.identity_prev = prev;
    }
}

/// The audit log's columns in a backend: SQLite links each identity's
/// entries (`identity_prev`); PostgreSQL indexes them instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogColumns {
    /// The entry's own columns.
    Entry,
    /// Those and `identity_prev`.
    WithIdentityPrev,
}

/// Places `entries` after `seq`/`head`; returns them with the new end of
/// the chain.
pub(super) fn link<'a>(
    entries: &'a [AuditEntry],
    mut seq: i64,
    mut head: [u8; 32],
    chain: &ChainKey,
) -> (Vec<Linked<'a>>, i64, [u8; 32]) {
    let mut linked = Vec::with_capacity(entries.len());
    for entry in entries {
        seq += 1;
        let hash = ChainedEntry::hash_of(seq, entry, &head, chain);
        linked.push(Linked {
            seq,
            entry,
            prev_hash: head,
            hash,
            identity_prev: None,
        });
        head = hash;
    }
    (linked, seq, head)
}

/// `rows` cut into runs whose lengths are powers of two (at most
/// [`MAX_ROWS`]), largest first: any multi-row statement built per run has
/// one of ten shapes, which the connection's statement cache keeps.
pub(super) fn runs<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = rest.len().min(MAX_ROWS);
        let run = 1usize << (usize::BITS - 1 - len.leading_zeros());
        let (head, tail) = rest.split_at(run);
        rest = tail;
        Some(head)
    })
}

/// One INSERT of `rows`, for any backend whose placeholders the builder
/// knows (`?` or `$n`), after the statements in `before` (which take no
/// arguments; `""` for none).
pub(super) fn insert<DB>(before: &str, rows: &[Linked<'_>], columns: LogColumns) -> QueryBuilder<DB>
where
    DB: Database,
    DB::Arguments: Default,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
{
    let linked_column = columns == LogColumns::WithIdentityPrev;
    let mut q = QueryBuilder::<DB>::new(before);
    q.push(
        "INSERT INTO audit_log (seq, at_ms, action, decision, actor, peer, identity, env,
             credential, jti, serial, expires_at, reason, detail, evidence, prev_hash, hash",
    );
    q.push(if linked_column {
        ", identity_prev) "
    } else {
        ") "
    });
    q.push_values(rows, |mut row, linked| {
        let e = linked.entry;
        row.push_bind(linked.seq)
            .push_bind(e.at_ms)
            .push_bind(e.action.as_str())
            .push_bind(e.decision.as_str())
            .push_bind(e.actor.as_deref())
            .push_bind(e.peer.as_deref())
            .push_bind(e.identity.as_deref())
            .push_bind(e.env.as_deref())
            .push_bind(e.credential.as_deref())
            .push_bind(e.jti.as_deref())
            .push_bind(e.serial.as_deref())
            .push_bind(e.expires_at)
            .push_bind(e.reason.as_deref())
            .push_bind(e.detail.as_deref())
            .push_bind(e.evidence.as_deref())
            .push_bind(linked.prev_hash.as_slice())
            .push_bind(linked.hash.as_slice());
        if linked_column {
            row.push_bind(linked.identity_prev);
        }
    });
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_in_power_of_two_runs_in_order() {
        let key = ChainKey::for_tests();
        for n in [0usize, 1, 2, 3, 37, 511, 512, 513, 1024, 1500] {
            let entries = vec![AuditEntry::default(); n];
            let (linked, seq, _) = link(&entries, 10, [0; 32], &key);
            assert_eq!(seq, 10 + n as i64);
            let lens: Vec<usize> = runs(&linked).map(<[_]>::len).collect();
            assert_eq!(lens.iter().sum::<usize>(), n, "{n}: every entry once");
            assert!(
                lens.iter().all(|l| l.is_power_of_two() && *l <= MAX_ROWS),
                "{n}: {lens:?}"
            );
            assert!(lens.windows(2).all(|w| w[0] >= w[1]), "{n}: {lens:?}");
            let seqs: Vec<i64> = runs(&linked).flatten().map(|l| l.seq).collect();
            assert_eq!(seqs, (11..=10 + n as i64).collect::<Vec<_>>(), "{n}");
        }
    }
}
