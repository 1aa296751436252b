//! Retention against a real SQLite store and real keys: what is deleted,
//! what stays, and that the remaining log and the export both verify — and
//! stop verifying when tampered with.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;

use super::checkpoint::{Checkpoint, CheckpointFile};
use super::export::{ExportReport, ExportVerifier};
use super::retention::{Purge, RetentionError, RetentionPolicy, run_once};
use super::verify::{LogVerification, verify_log};
use super::{AuditEntry, AuditLog, AuditSeal, ChainKey};
use crate::keys::JwtSigningKey;
use crate::metrics::Metrics;
use crate::store::{SqliteStore, Store};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// "Now" in these tests (unix ms).
const NOW: i64 = 1_800_000_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    seal: AuditSeal,
    log: AuditLog,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url).await.unwrap());
        let (signer, _) = JwtSigningKey::generate().unwrap();
        let seal = AuditSeal {
            chain: ChainKey::for_tests(),
            signer: Arc::new(signer),
            checkpoints: CheckpointFile::new(dir.path().join("audit.checkpoints")),
        };
        let metrics = Arc::new(Metrics::new(&["dev"]));
        let log = AuditLog::start(Arc::clone(&store), metrics, seal.clone())
            .await
            .unwrap();
        Self {
            dir,
            store,
            seal,
            log,
        }
    }

    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy {
            keep: Duration::from_secs(90 * 24 * 60 * 60),
            export_dir: self.dir.path().join("audit-export"),
        }
    }

    /// Entries 1..=21: 1..=10 old (an expired issuance among them), 11 an
    /// old issuance still unexpired at NOW, 12..=16 old, 17..=21 recent;
    /// then a checkpoint seals them all.
    async fn fill(&self) {
        let old = NOW - 100 * DAY_MS;
        let mut entries: Vec<AuditEntry> = (1..=10).map(|i| done(old + i)).collect();
        entries[4] = issued(old + 5, (old + 5) / 1000 + 300);
        entries.push(issued(old + 11, NOW / 1000 + 3600));
        entries.extend((12..=16).map(|i| done(old + i)));
        entries.extend((17..=21).map(|i| done(NOW - DAY_MS + i)));
        self.log.commit(entries).await.unwrap();
        self.log.checkpoint().await.unwrap();
    }

    async fn run(&self, now: i64) -> Result<Option<Purge>, RetentionError> {
        run_once(self.store.as_ref(), &self.seal, &self.policy(), now).await
    }

    async fn verify(&self) -> LogVerification {
        let lines = self.seal.checkpoints.lines().unwrap();
        verify_log(self.store.as_ref(), &self.seal, &lines)
            .await
            .unwrap()
    }

    async fn sql(&self, statement: &str) {
        let url = format!("sqlite://{}", self.dir.path().join("t.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }

    async fn seqs(&self) -> Vec<i64> {
        let page = self.store.audit_page(0, 1000).await.unwrap();
        page.iter().map(|e| e.seq).collect()
    }

    fn verify_export(&self, lines: &[String]) -> ExportReport {
        let mut v = ExportVerifier::new(self.seal.chain.clone(), Arc::clone(&self.seal.signer));
        for line in lines {
            v.feed_line(line);
        }
        v.finish()
    }
}

fn done(at_ms: i64) -> AuditEntry {
    AuditEntry {
        at_ms,
        action: "identity.create".into(),
        decision: "done".into(),
        actor: Some("admin".into()),
        detail: Some(format!("entry at {at_ms}")),
        ..AuditEntry::default()
    }
}

fn issued(at_ms: i64, expires_at: i64) -> AuditEntry {
    AuditEntry {
        at_ms,
        action: "fetch_jwt".into(),
        decision: "issued".into(),
        identity: Some("dev/api".into()),
        env: Some("dev".into()),
        credential: Some("jwt-svid".into()),
        jti: Some(format!("jti-{at_ms}")),
        expires_at: Some(expires_at),
        ..AuditEntry::default()
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_intact(v: &LogVerification) {
    assert!(v.report.broken.is_none(), "{:?}", v.report.broken);
}

#[tokio::test]
async fn retention_exports_and_deletes_old_entries_but_keeps_unexpired_issuance() {
    let f = Fixture::new().await;
    f.fill().await;
    let purge = f
        .run(NOW)
        .await
        .unwrap()
        .expect("entries 1..10 are past retention");
    assert_eq!((purge.first, purge.last, purge.deleted), (1, 10, 10));
    // Entry 11 records a credential that is still valid: it and everything
    // after it stay, though 11..16 are past retention.
    assert_eq!(f.seqs().await, (11..=21).collect::<Vec<_>>());
    assert!(f.run(NOW).await.unwrap().is_none(), "nothing more may go");
    let v = f.verify().await;
    assert_intact(&v);
    assert_eq!(
        (v.cut_seq, v.report.entries, v.report.last_seq),
        (10, 11, 21)
    );

    let first = f.verify_export(&lines(&purge.export));
    assert!(first.broken.is_none(), "{:?}", first.broken);
    assert_eq!((first.entries, first.after.0), (10, 0));
    let mode = std::fs::metadata(&purge.export).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    // Two hours on the issuance has expired: 11..16 go, into an export
    // that continues the first one.
    let later = NOW + 2 * 60 * 60 * 1000;
    let second = f.run(later).await.unwrap().unwrap();
    assert_eq!((second.first, second.last), (11, 16));
    assert_eq!(f.seqs().await, (17..=21).collect::<Vec<_>>());
    let report = f.verify_export(&lines(&second.export));
    assert!(report.broken.is_none(), "{:?}", report.broken);
    assert_eq!(Some(report.after), first.sealed.map(|(s, h)| (s, Some(h))));
    assert_intact(&f.verify().await);

    // The writer, restarted, continues the chain after the cut.
    f.log.checkpoint().await.unwrap();
    let metrics = Arc::new(Metrics::new(&["dev"]));
    let log = AuditLog::start(Arc::clone(&f.store), metrics, f.seal.clone())
        .await
        .unwrap();
    log.commit(vec![done(later)]).await.unwrap();
    log.checkpoint().await.unwrap();
    assert_intact(&f.verify().await);
}

#[tokio::test]
async fn a_tampered_remaining_entry_fails_verification() {
    let f = Fixture::new().await;
    f.fill().await;
    f.run(NOW).await.unwrap().unwrap();
    f.sql("UPDATE audit_log SET detail = 'forged' WHERE seq = 13")
        .await;
    let v = f.verify().await;
    assert_eq!(v.report.broken.unwrap().0, 13);
}

#[tokio::test]
async fn rows_deleted_beyond_the_cut_fail_verification() {
    let f = Fixture::new().await;
    f.fill().await;
    f.run(NOW).await.unwrap().unwrap();
    f.sql("DELETE FROM audit_log WHERE seq <= 12").await;
    let v = f.verify().await;
    let (seq, what) = v.report.broken.unwrap();
    assert_eq!(seq, 13, "{what}");
    assert!(what.contains("missing"), "{what}");
}

#[tokio::test]
async fn rows_deleted_without_any_cut_fail_verification() {
    let f = Fixture::new().await;
    f.fill().await;
    f.sql("DELETE FROM audit_log WHERE seq <= 10").await;
    let (seq, what) = f.verify().await.report.broken.unwrap();
    assert_eq!(seq, 11, "{what}");
}

#[tokio::test]
async fn a_periodic_checkpoint_cannot_pass_for_a_retention_cut() {
    let f = Fixture::new().await;
    f.fill().await;
    // A real, broker-signed periodic seal of entry 21, stored as a cut, with
    // every row deleted: without the cut's own signature this would hide
    // 21 deleted entries.
    let lines = f.seal.checkpoints.lines().unwrap();
    let (seal, _) = Checkpoint::newest(lines.iter().map(String::as_str));
    let seal = seal.unwrap();
    f.sql(&format!(
        "INSERT INTO audit_cut (id, seq, head, at_ms, signature, export)
         VALUES (1, {}, x'{}', {}, x'{}', 'forged')",
        seal.seq,
        super::hex(&seal.head),
        seal.at_ms,
        seal.signature
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
    .await;
    f.sql("DELETE FROM audit_log").await;
    let (_, what) = f.verify().await.report.broken.unwrap();
    assert!(what.contains("forged retention cut"), "{what}");
    assert!(matches!(
        f.run(NOW).await,
        Err(RetentionError::ForgedCut(21))
    ));
}

#[tokio::test]
async fn retention_deletes_nothing_from_a_broken_chain() {
    let f = Fixture::new().await;
    f.fill().await;
    f.sql("UPDATE audit_log SET detail = 'forged' WHERE seq = 4")
        .await;
    let result = f.run(NOW).await;
    assert!(
        matches!(result, Err(RetentionError::Broken { seq: 4, .. })),
        "{result:?}"
    );
    assert_eq!(f.seqs().await.len(), 21);
    let dir: PathBuf = f.policy().export_dir;
    let exports = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(exports, 0, "no export is left behind");
}

#[tokio::test]
async fn a_tampered_export_fails_verification() {
    let f = Fixture::new().await;
    f.fill().await;
    let purge = f.run(NOW).await.unwrap().unwrap();
    let good = lines(&purge.export);
    assert_eq!(good.len(), 12, "after, 10 entries, sealed_by");
    let check = |lines: Vec<String>, expect: &str| {
        let report = f.verify_export(&lines);
        let problem = report
            .broken
            .unwrap_or_else(|| panic!("{expect}: verified"));
        assert!(problem.what.contains(expect), "{expect}: {problem:?}");
    };
    let mut altered = good.clone();
    altered[3] = altered[3].replace("entry at", "entry AT");
    check(altered, "altered");
    let mut removed = good.clone();
    removed.remove(5);
    check(removed, "missing");
    let mut short = good.clone();
    short.remove(10);
    check(short, "sealing cut seals entry 10");
    check(good[..11].to_vec(), "incomplete");
    let mut moved = good.clone();
    moved[11] = moved[11].replace("\"seq\":10", "\"seq\":9");
    check(moved, "not a retention cut signed");
    // The second export, stripped of its starting cut, claims to start
    // the log.
    let second = f.run(NOW + 2 * 60 * 60 * 1000).await.unwrap().unwrap();
    let mut unanchored = lines(&second.export);
    unanchored[0] = "{\"after\":null}".to_owned();
    check(unanchored, "missing");
}
