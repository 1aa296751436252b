//! One audit log entry and its place in the hash chain.

use serde::Serialize;

/// What happened, as stored. Field order is the canonical order hashed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    /// SHA-256 over `prev_hash`, `seq` and the canonical JSON of `entry`.
    pub hash: [u8; 32],
}

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

impl ChainedEntry {
    /// Links `entry` after `prev_hash` at position `seq`.
    pub fn link(seq: i64, entry: AuditEntry, prev_hash: [u8; 32]) -> Self {
        let hash = chain_hash(seq, &entry, &prev_hash);
        Self {
            seq,
            entry,
            prev_hash,
            hash,
        }
    }

    /// Whether `hash` matches the content.
    pub fn is_intact(&self) -> bool {
        chain_hash(self.seq, &self.entry, &self.prev_hash) == self.hash
    }
}

fn chain_hash(seq: i64, entry: &AuditEntry, prev_hash: &[u8; 32]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(prev_hash);
    ctx.update(&seq.to_be_bytes());
    // Serializing a plain struct of strings and integers cannot fail.
    ctx.update(&serde_json::to_vec(entry).unwrap_or_default());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
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
    /// The first problem found: sequence number and what is wrong.
    pub broken: Option<(i64, String)>,
}

/// Checks entries page by page; call [`ChainVerifier::feed`] with entries in
/// sequence order, then [`ChainVerifier::finish`].
#[derive(Debug, Default)]
pub struct ChainVerifier {
    report: VerifyReport,
    last_seq: i64,
}

impl ChainVerifier {
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
            } else if !e.is_intact() {
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
                );
                prev = e.hash;
                e
            })
            .collect()
    }

    fn verify(entries: &[ChainedEntry]) -> VerifyReport {
        let mut v = ChainVerifier::default();
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
        rehashed[2] = ChainedEntry::link(3, rehashed[2].entry.clone(), rehashed[2].prev_hash);
        assert_eq!(verify(&rehashed).broken.unwrap().0, 4);
    }
}
