//! Retention exports: the entries retention removes from the store, as
//! JSON lines that verify on their own.
//!
//! ```text
//! {"after":null}                         or {"after":{"kind":"cut","seq":..}}: the signed cut it continues from
//! {"entry":{"seq":1,"prev_hash":"..","hash":"..","record":{"at_ms":..,"action":..}}}
//! …                                      one line per entry, in order, none missing
//! {"sealed_by":{"kind":"cut","seq":..,"head":"..","at_ms":..,"sig":".."}}
//! ```
//!
//! So an export proves it holds exactly the entries between two cuts the
//! broker signed: each entry's keyed hash, each link, the starting and
//! sealing cuts' signatures and the last entry's hash against the seal. One
//! export's `sealed_by` is the next one's `after`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, CheckpointKind, CheckpointLine, unhex};
use super::entry::{AuditEntry, ChainKey, ChainVerifier, ChainedEntry, hex};
use crate::keys::JwtSigningKey;

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExportLine {
    /// First line: the cut the export continues from (`null`: it starts at
    /// the log's first entry).
    After(Option<CheckpointLine>),
    /// One entry with its place in the chain.
    Entry(Box<ExportedEntry>),
    /// Last line: the cut sealing the export's last entry.
    SealedBy(CheckpointLine),
}

/// An entry as exported.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedEntry {
    /// Position in the log.
    pub seq: i64,
    /// Hex hash of the entry before it.
    pub prev_hash: String,
    /// Hex chain hash of this entry.
    pub hash: String,
    /// What happened.
    pub record: AuditEntry,
}

fn json(line: &ExportLine) -> String {
    // Plain structs of strings and integers always serialize.
    serde_json::to_string(line).unwrap_or_default()
}

/// Writes one export to a temporary file, made durable and renamed into
/// place only once sealed.
#[derive(Debug)]
pub struct ExportWriter {
    file: BufWriter<std::fs::File>,
    tmp: PathBuf,
    dir: PathBuf,
}

impl ExportWriter {
    /// Starts an export in `dir` (created 0700) continuing from `after`.
    pub fn create(dir: &Path, after: Option<&Checkpoint>) -> std::io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(".audit-export.partial");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut writer = Self {
            file: BufWriter::new(file),
            tmp,
            dir: dir.to_owned(),
        };
        writer.line(&ExportLine::After(after.map(Checkpoint::to_json)))?;
        Ok(writer)
    }

    fn line(&mut self, line: &ExportLine) -> std::io::Result<()> {
        writeln!(self.file, "{}", json(line))
    }

    /// Appends one entry.
    pub fn entry(&mut self, e: &ChainedEntry) -> std::io::Result<()> {
        self.line(&ExportLine::Entry(Box::new(ExportedEntry {
            seq: e.seq,
            prev_hash: hex(&e.prev_hash),
            hash: hex(&e.hash),
            record: e.entry.clone(),
        })))
    }

    /// Seals the export with `cut`, syncs it to disk and renames it to
    /// `name`; returns its path. Only after this may the entries go.
    pub fn seal(mut self, cut: &Checkpoint, name: &str) -> std::io::Result<PathBuf> {
        self.line(&ExportLine::SealedBy(cut.to_json()))?;
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = self.dir.join(name);
        std::fs::rename(&self.tmp, &path)?;
        // The rename itself must survive power loss before rows go.
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }

    /// Drops an unfinished export.
    pub fn abandon(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// The first problem found in an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportProblem {
    /// Sequence number concerned (0 when none).
    pub seq: i64,
    /// 1-based line of the file.
    pub line: i64,
    /// What is wrong.
    pub what: String,
}

/// What checking an export found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Entries checked before the end or the first problem.
    pub entries: i64,
    /// The cut the export starts after (0: the log's start) and its hash.
    pub after: (i64, Option<[u8; 32]>),
    /// The sealing cut's sequence number and hash, once checked.
    pub sealed: Option<(i64, [u8; 32])>,
    /// The first problem.
    pub broken: Option<ExportProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    Entries,
    Sealed,
}

/// Checks an export line by line with the broker's chain key and audit
/// signing key; memory stays constant whatever the file's size.
#[derive(Debug)]
pub struct ExportVerifier {
    key: ChainKey,
    signer: Arc<JwtSigningKey>,
    chain: Option<ChainVerifier>,
    state: State,
    line: i64,
    report: ExportReport,
}

/// A signed cut from its JSON form, or what is wrong with it.
fn signed_cut(
    line: CheckpointLine,
    signer: &JwtSigningKey,
    role: &str,
) -> Result<Checkpoint, String> {
    let cp = Checkpoint::from_json(line).map_err(|e| format!("{role}: {e}"))?;
    if cp.kind != CheckpointKind::Cut || !cp.verify(signer) {
        return Err(format!(
            "{role} (entry {}) is not a retention cut signed by this broker's audit key",
            cp.seq
        ));
    }
    Ok(cp)
}

impl ExportVerifier {
    /// A verifier using the broker's keys.
    pub fn new(key: ChainKey, signer: Arc<JwtSigningKey>) -> Self {
        Self {
            key,
            signer,
            chain: None,
            state: State::Start,
            line: 0,
            report: ExportReport::default(),
        }
    }

    fn fail(&mut self, seq: i64, what: String) {
        self.report.broken = Some(ExportProblem {
            seq,
            line: self.line,
            what,
        });
    }

    /// Checks the next line of the file.
    pub fn feed_line(&mut self, text: &str) {
        self.line += 1;
        if self.report.broken.is_some() || text.trim().is_empty() {
            return;
        }
        let parsed = match serde_json::from_str::<ExportLine>(text) {
            Ok(parsed) => parsed,
            Err(e) => return self.fail(0, format!("not an audit export line: {e}")),
        };
        match (self.state, parsed) {
            (State::Start, ExportLine::After(None)) => {
                self.chain = Some(ChainVerifier::new(self.key.clone()));
                self.state = State::Entries;
            }
            (State::Start, ExportLine::After(Some(line))) => {
                match signed_cut(line, &self.signer, "the starting cut") {
                    Ok(cp) => {
                        self.report.after = (cp.seq, Some(cp.head));
                        self.chain = Some(ChainVerifier::resume_after(
                            self.key.clone(),
                            cp.seq,
                            cp.head,
                        ));
                        self.state = State::Entries;
                    }
                    Err(what) => self.fail(0, what),
                }
            }
            (State::Start, _) => {
                self.fail(0, "an export starts with its \"after\" line".to_owned());
            }
            (State::Entries, ExportLine::Entry(e)) => self.entry(*e),
            (State::Entries, ExportLine::SealedBy(line)) => self.sealed_by(line),
            (State::Entries, ExportLine::After(_)) => {
                self.fail(0, "a second \"after\" line".to_owned());
            }
            (State::Sealed, _) => {
                self.fail(0, "lines after the sealing cut".to_owned());
            }
        }
    }

    fn entry(&mut self, e: ExportedEntry) {
        let (Some(prev_hash), Some(hash)) = (unhex(&e.prev_hash), unhex(&e.hash)) else {
            return self.fail(e.seq, "a hash is not 64 hex digits".to_owned());
        };
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        chain.feed(&[ChainedEntry {
            seq: e.seq,
            entry: e.record,
            prev_hash,
            hash,
        }]);
        match chain.broken().cloned() {
            Some((seq, what)) => self.fail(seq, what),
            None => self.report.entries += 1,
        }
    }

    fn sealed_by(&mut self, line: CheckpointLine) {
        let cp = match signed_cut(line, &self.signer, "the sealing cut") {
            Ok(cp) => cp,
            Err(what) => return self.fail(0, what),
        };
        let (last, head) = self
            .chain
            .as_ref()
            .map_or((0, None), |c| (c.last_seq(), c.head()));
        if cp.seq != last || head != Some(cp.head) {
            return self.fail(
                cp.seq,
                format!(
                    "the sealing cut seals entry {} but the export's entries end at entry {last} \
                     with another hash: entries were removed, added or altered",
                    cp.seq
                ),
            );
        }
        self.report.sealed = Some((cp.seq, cp.head));
        self.state = State::Sealed;
    }

    /// The result; an export that ends before its sealing cut is broken.
    pub fn finish(mut self) -> ExportReport {
        if self.report.broken.is_none() && self.state != State::Sealed {
            self.line += 1;
            self.fail(
                0,
                "the export ends without its sealing cut: it is incomplete (truncated)".to_owned(),
            );
        }
        self.report
    }
}
