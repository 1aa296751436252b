//! Signed checkpoints of the audit chain, kept outside the database.
//!
//! A hash chain alone shows an altered or removed entry in the middle, but
//! not a removed *tail*: the shorter chain is still intact. So the writer
//! seals `(seq, head hash)` every few seconds and at every clean shutdown,
//! signs it with the broker's audit key (ES256, sealed under the KEK like
//! every private key), and appends it as one JSON line to an append-only
//! file (default `DATA_DIR/audit.checkpoints`) and to the log stream.
//! `credbroker audit verify` checks the newest checkpoint against the log:
//! a log that ends before it was truncated, a different hash at its
//! sequence number means the chain was rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::entry::hex;
use crate::keys::JwtSigningKey;

/// What a checkpoint states. Each kind signs its own message, so a
/// periodic seal can never be passed off as a retention cut.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// The log held entries up to `seq` (periodic and shutdown seals).
    #[default]
    Seal,
    /// Retention exported every entry up to `seq` and may delete them: the
    /// log that remains starts right after it.
    Cut,
}

/// A signed statement: the log held `seq` entries ending in `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// What is stated.
    pub kind: CheckpointKind,
    /// Sequence number of the newest entry sealed.
    pub seq: i64,
    /// Its chain hash.
    pub head: [u8; 32],
    /// When it was sealed (unix ms).
    pub at_ms: i64,
    /// ES256 signature (raw r‖s) over [`Checkpoint::message`].
    pub signature: Vec<u8>,
}

/// The JSON form of a checkpoint (a line of the checkpoint file, and the
/// first and last lines of a retention export).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointLine {
    #[serde(default, skip_serializing_if = "is_seal")]
    kind: CheckpointKind,
    seq: i64,
    head: String,
    at_ms: i64,
    sig: String,
}

fn is_seal(kind: &CheckpointKind) -> bool {
    *kind == CheckpointKind::Seal
}

/// The 32 bytes written as 64 hex digits in `text`.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Checkpoint {
    fn message(kind: CheckpointKind, seq: i64, head: &[u8; 32], at_ms: i64) -> Vec<u8> {
        let what = match kind {
            CheckpointKind::Seal => "checkpoint",
            CheckpointKind::Cut => "retention-cut",
        };
        format!("credbroker-audit-{what}/v1 {seq} {} {at_ms}", hex(head)).into_bytes()
    }

    /// Seals `seq` and `head` now.
    pub fn sign(key: &JwtSigningKey, seq: i64, head: [u8; 32], at_ms: i64) -> Option<Self> {
        Self::sign_kind(key, CheckpointKind::Seal, seq, head, at_ms)
    }

    /// Signs a statement of `kind` about `seq` and `head`.
    pub fn sign_kind(
        key: &JwtSigningKey,
        kind: CheckpointKind,
        seq: i64,
        head: [u8; 32],
        at_ms: i64,
    ) -> Option<Self> {
        let signature = key.sign(&Self::message(kind, seq, &head, at_ms)).ok()?;
        Some(Self {
            kind,
            seq,
            head,
            at_ms,
            signature,
        })
    }

    /// Whether `key` made this checkpoint.
    pub fn verify(&self, key: &JwtSigningKey) -> bool {
        key.verify(
            &Self::message(self.kind, self.seq, &self.head, self.at_ms),
            &self.signature,
        )
    }

    /// The JSON form.
    pub fn to_json(&self) -> CheckpointLine {
        CheckpointLine {
            kind: self.kind,
            seq: self.seq,
            head: hex(&self.head),
            at_ms: self.at_ms,
            sig: URL_SAFE_NO_PAD.encode(&self.signature),
        }
    }

    /// The file form: one JSON object.
    pub fn to_line(&self) -> String {
        serde_json::to_string(&self.to_json()).unwrap_or_default()
    }

    /// Parses one line of a checkpoint file.
    pub fn parse(line: &str) -> Result<Self, String> {
        let line: CheckpointLine =
            serde_json::from_str(line.trim()).map_err(|e| format!("not a checkpoint: {e}"))?;
        Self::from_json(line)
    }

    /// Reads the JSON form.
    pub fn from_json(line: CheckpointLine) -> Result<Self, String> {
        Ok(Self {
            kind: line.kind,
            seq: line.seq,
            head: unhex(&line.head).ok_or("head is not 64 hex digits")?,
            at_ms: line.at_ms,
            signature: URL_SAFE_NO_PAD
                .decode(&line.sig)
                .map_err(|_| "signature is not base64url")?,
        })
    }

    /// The newest checkpoint among `lines` (the highest sequence number),
    /// and how many lines could not be read.
    pub fn newest<'a>(lines: impl IntoIterator<Item = &'a str>) -> (Option<Self>, usize) {
        let mut bad = 0;
        let mut newest: Option<Self> = None;
        for line in lines.into_iter().filter(|l| !l.trim().is_empty()) {
            match Self::parse(line) {
                Ok(cp) if newest.as_ref().is_none_or(|n| cp.seq >= n.seq) => newest = Some(cp),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
        (newest, bad)
    }
}

/// The append-only checkpoint file.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// The file at `path` (created on first append, mode 0600).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `checkpoint` and syncs it to disk.
    pub fn append(&self, checkpoint: &Checkpoint) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        writeln!(file, "{}", checkpoint.to_line())?;
        file.sync_data()
    }

    /// Every line of the file; empty when it does not exist yet.
    pub fn lines(&self) -> std::io::Result<Vec<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_forgeries_fail() {
        let (key, _) = JwtSigningKey::generate().unwrap();
        let (other, _) = JwtSigningKey::generate().unwrap();
        let cp = Checkpoint::sign(&key, 42, [3u8; 32], 1_000).unwrap();
        let parsed = Checkpoint::parse(&cp.to_line()).unwrap();
        assert_eq!(parsed, cp);
        assert!(parsed.verify(&key));
        assert!(!parsed.verify(&other), "signed by another key");
        let mut moved = parsed.clone();
        moved.seq = 41;
        assert!(!moved.verify(&key), "sequence changed after signing");
        let mut relabelled = parsed.clone();
        relabelled.kind = CheckpointKind::Cut;
        assert!(!relabelled.verify(&key), "a seal passed off as a cut");
        let cut = Checkpoint::sign_kind(&key, CheckpointKind::Cut, 42, [3u8; 32], 1_000).unwrap();
        assert_eq!(Checkpoint::parse(&cut.to_line()).unwrap(), cut);
        assert!(cut.to_line().contains("\"kind\":\"cut\""));
        let older = Checkpoint::sign(&key, 7, [1u8; 32], 500).unwrap();
        let text = format!("{}\ngarbage\n{}\n", cp.to_line(), older.to_line());
        let (newest, bad) = Checkpoint::newest(text.lines());
        assert_eq!(newest.unwrap().seq, 42);
        assert_eq!(bad, 1);
    }
}
