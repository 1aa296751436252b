//! One audit log entry and its place in the hash chain.

use serde::{Deserialize, Serialize};

/// What happened, as stored. Field order is the canonical order hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// `attest`, `fetch_jwt`, `renew_x509`, `identity.create`, …
    pub action: String,
    /// `issued`, `denied` or `done`.
    pub decision: String,
    /// `admin`, a SPIFFE ID, or `anonymous`.
    pub actor: Option<String>,
    /// Peer socket address.
    pub peer: Option<String>,
    /// `env/name`.
    pub identity: Option<String>,
    /// Environment.
    pub env: Option<String>,
    /// `x509-svid` or `jwt-svid` for issuances.
    pub credential: Option<String>,
    /// JWT id.
    pub jti: Option<String>,
    /// Certificate serial (hex).
    pub serial: Option<String>,
    /// Expiry of the issued credential (unix seconds).
    pub expires_at: Option<i64>,
    /// Why a request was denied.
    pub reason: Option<String>,
    /// Extra detail of admin changes.
    pub detail: Option<String>,
    /// Non-secret evidence id (join token hash prefix).
    pub evidence: Option<String>,
}

/// An entry with its sequence number and chain hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// The entry.
    pub entry: AuditEntry,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: [u8; 32],
    /// HMAC-SHA256 (keyed by [`ChainKey`]) over `prev_hash`, `seq` and the
    /// canonical JSON of `entry`.
    pub hash: [u8; 32],
}

/// The secret that keys the chain, derived from the KEK: without it, an
/// entry cannot be altered and the chain re-linked so that it verifies.
#[derive(Clone)]
pub struct ChainKey(ring::hmac::Key);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

impl ChainKey {
    /// Wraps an HMAC-SHA256 key (see `Kek::audit_chain_key`).
    pub fn new(key: ring::hmac::Key) -> Self {
        Self(key)
    }

    /// A fixed key for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7u8; 32]))
    }
}

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

impl ChainedEntry {
    /// Links `entry` after `prev_hash` at position `seq`.
    pub fn link(seq: i64, entry: AuditEntry, prev_hash: [u8; 32], key: &ChainKey) -> Self {
        let hash = chain_hash(key, seq, &entry, &prev_hash);
        Self {
            seq,
            entry,
            prev_hash,
            hash,
        }
    }

    /// The chain hash of `entry` at position `seq` after `prev_hash`.
    pub fn hash_of(seq: i64, entry: &AuditEntry, prev_hash: &[u8; 32], key: &ChainKey) -> [u8; 32] {
        chain_hash(key, seq, entry, prev_hash)
    }

    /// Whether `hash` matches the content.
    pub fn is_intact(&self, key: &ChainKey) -> bool {
        chain_hash(key, self.seq, &self.entry, &self.prev_hash) == self.hash
    }
}

fn chain_hash(key: &ChainKey, seq: i64, entry: &AuditEntry, prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::hmac::Context::with_key(&key.0);
    ctx.update(prev_hash);
    ctx.update(&seq.to_be_bytes());
    // Serializing a plain struct of strings and integers cannot fail.
    ctx.update(&serde_json::to_vec(entry).unwrap_or_default());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Lowercase hex of a hash.
pub fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Result of walking the chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked.
    pub entries: i64,
    /// Hash of the last entry checked.
    pub head: Option<[u8; 32]>,
    /// Sequence number of the last entry checked (or of the starting point).
    pub last_seq: i64,
    /// The first problem found: sequence number and what is wrong.
    pub broken: Option<(i64, String)>,
}

/// Checks entries page by page; call [`ChainVerifier::feed`] with entries in
/// sequence order, then [`ChainVerifier::finish`].
#[derive(Debug)]
pub struct ChainVerifier {
    key: ChainKey,
    report: VerifyReport,
    last_seq: i64,
    /// A sequence number whose hash a checkpoint sealed, and that hash as
    /// found in the log.
    watched: Option<(i64, Option<[u8; 32]>)>,
}

impl ChainVerifier {
    /// A verifier for a chain keyed with `key`.
    pub fn new(key: ChainKey) -> Self {
        Self {
            key,
            report: VerifyReport::default(),
            last_seq: 0,
            watched: None,
        }
    }

    /// A verifier for the part of a chain after entry `seq`, whose hash was
    /// `head` (a signed retention cut, or an export's starting point).
    pub fn resume_after(key: ChainKey, seq: i64, head: [u8; 32]) -> Self {
        let mut v = Self::new(key);
        v.last_seq = seq;
        v.report.last_seq = seq;
        v.report.head = (seq > 0).then_some(head);
        v
    }

    /// The first problem found so far.
    pub fn broken(&self) -> Option<&(i64, String)> {
        self.report.broken.as_ref()
    }

    /// Hash of the last entry accepted (or of the starting point).
    pub fn head(&self) -> Option<[u8; 32]> {
        self.report.head
    }

    /// Sequence number of the last entry accepted.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    /// Also remembers the hash of entry `seq` (see [`ChainVerifier::watched`]).
    pub fn watch(&mut self, seq: i64) {
        self.watched = Some((seq, None));
    }

    /// The hash the log holds at the watched sequence number, if it got
    /// there intact.
    pub fn watched(&self) -> Option<[u8; 32]> {
        self.watched.and_then(|(_, h)| h)
    }

    /// Checks the next entries; stops recording at the first problem.
    pub fn feed(&mut self, entries: &[ChainedEntry]) {
        for e in entries {
            if self.report.broken.is_some() {
                return;
            }
            let expected_prev = self.report.head.unwrap_or(GENESIS);
            let problem = if e.seq != self.last_seq + 1 {
                Some(format!(
                    "entry {} follows entry {}: entries are missing",
                    e.seq, self.last_seq
                ))
            } else if e.prev_hash != expected_prev {
                Some("does not link to the entry before it (an entry was altered, removed or inserted)".to_owned())
            } else if !e.is_intact(&self.key) {
                Some("content does not match its hash (the entry was altered)".to_owned())
            } else {
                None
            };
            if let Some(what) = problem {
                self.report.broken = Some((e.seq, what));
                return;
            }
            self.report.entries += 1;
            self.report.head = Some(e.hash);
            self.report.last_seq = e.seq;
            if let Some((seq, found)) = &mut self.watched
                && *seq == e.seq
            {
                *found = Some(e.hash);
            }
            self.last_seq = e.seq;
        }
    }

    /// The result.
    pub fn finish(self) -> VerifyReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<ChainedEntry> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let e = ChainedEntry::link(
                    seq,
                    AuditEntry {
                        at_ms: seq * 1000,
                        action: "fetch_jwt".into(),
                        decision: "issued".into(),
                        jti: Some(format!("j{seq}")),
                        ..Default::default()
                    },
                    prev,
                    &ChainKey::for_tests(),
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn verify(entries: &[ChainedEntry]) -> VerifyReport {
        let mut v = ChainVerifier::new(ChainKey::for_tests());
        v.feed(entries);
        v.finish()
    }

    #[test]
    fn intact_chain_verifies() {
        let entries = chain(5);
        let report = verify(&entries);
        assert_eq!(report.entries, 5);
        assert_eq!(report.head, Some(entries[4].hash));
        assert!(report.broken.is_none());
    }

    #[test]
    fn alteration_deletion_and_reordering_are_detected() {
        let mut altered = chain(5);
        altered[2].entry.decision = "denied".into();
        assert_eq!(verify(&altered).broken.unwrap().0, 3);

        let mut deleted = chain(5);
        deleted.remove(1);
        assert_eq!(verify(&deleted).broken.unwrap().0, 3);

        // Rehashing the altered entry itself is caught by the next link.
        let mut rehashed = chain(5);
        rehashed[2].entry.jti = Some("forged".into());
        rehashed[2] = ChainedEntry::link(
            3,
            rehashed[2].entry.clone(),
            rehashed[2].prev_hash,
            &ChainKey::for_tests(),
        );
        assert_eq!(verify(&rehashed).broken.unwrap().0, 4);
    }

    #[test]
    fn a_chain_rebuilt_without_the_key_does_not_verify() {
        // Someone with write access to the database but not the KEK
        // re-links every entry with a key of their own.
        let forged_key = ChainKey::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[9u8; 32]));
        let mut prev = GENESIS;
        let forged: Vec<ChainedEntry> = chain(3)
            .into_iter()
            .map(|e| {
                let e = ChainedEntry::link(e.seq, e.entry, prev, &forged_key);
                prev = e.hash;
                e
            })
            .collect();
        assert_eq!(verify(&forged).broken.unwrap().0, 1);
    }
}
