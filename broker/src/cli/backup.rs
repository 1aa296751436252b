//! `credbroker backup --out FILE`: a consistent copy of the SQLite store
//! while the broker runs.
//!
//! SQLite's `VACUUM INTO` writes a snapshot from one read transaction, so
//! it is consistent without stopping the broker (a file copy of a WAL
//! database is not: the newest commits may still sit in `-wal`). The copy
//! holds the keys only sealed under the KEK, so the KEK must be kept too —
//! apart from the copy, or the copy would be as good as the keys.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// What the backup holds, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Schema version (`PRAGMA user_version`).
    pub schema_version: i64,
    /// Identities in it.
    pub identities: i64,
    /// Audit entries in it.
    pub audit_entries: i64,
}

/// Writes a consistent copy of `DATA_DIR/credbroker.db` to `out`, which
/// must not exist. A failed backup leaves no file behind.
pub async fn backup(data_dir: &Path, out: &Path) -> Result<BackupSummary, String> {
    let db = data_dir.join("credbroker.db");
    if !db.is_file() {
        return Err(format!(
            "no database at {} (is --data-dir the broker's data directory?)",
            db.display()
        ));
    }
    // Created here, empty and private, so the copy of sealed keys and the
    // audit log is never readable by others, even for a moment.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(out)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => format!(
                    "{} already exists; a backup never overwrites: choose a new file",
                    out.display()
                ),
                _ => format!("cannot create {}: {e}", out.display()),
            })?;
    }
    let result = copy(&db, out).await;
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

async fn copy(db: &Path, out: &Path) -> Result<BackupSummary, String> {
    let out_text = out
        .to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", out.display()))?;
    let fail = |what: &str, e: sqlx::Error| format!("{what}: {e}");
    let mut conn = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))
        .map_err(|e| fail("opening the database", e))?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| fail(&format!("opening {}", db.display()), e))?;
    sqlx::query("VACUUM INTO ?")
        .bind(out_text)
        .execute(&mut conn)
        .await
        .map_err(|e| fail("copying the database", e))?;
    conn.close()
        .await
        .map_err(|e| fail("closing the database", e))?;
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", out.display()))?;
    // Read the copy back: what is reported is what was written.
    let mut copy = SqliteConnectOptions::from_str(&format!("sqlite://{out_text}"))
        .map_err(|e| fail("opening the backup", e))?
        .read_only(true)
        .connect()
        .await
        .map_err(|e| fail("opening the backup", e))?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut copy)
        .await
        .map_err(|e| fail("checking the backup", e))?;
    if check != "ok" {
        return Err(format!("the backup failed its integrity check: {check}"));
    }
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    let summary = BackupSummary {
        schema_version: count("PRAGMA user_version")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| fail("reading the backup", e))?,
        identities: count("SELECT COUNT(*) FROM identities")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| fail("reading the backup", e))?,
        audit_entries: count("SELECT COUNT(*) FROM audit_log")
            .fetch_one(&mut copy)
            .await
            .map_err(|e| fail("reading the backup", e))?,
    };
    let _ = copy.close().await;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_a_live_store_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("credbroker.db").display());
        let store = crate::store::open(&url).await.unwrap();
        store
            .insert_identity(&crate::model::test_identity())
            .await
            .unwrap();
        let out = dir.path().join("backup.db");
        let summary = backup(dir.path(), &out).await.unwrap();
        assert_eq!(summary.identities, 1);
        assert!(summary.schema_version >= 5);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let before = std::fs::read(&out).unwrap();
        let err = backup(dir.path(), &out).await.unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), before, "left as it was");
        let err = backup(&dir.path().join("nope"), &dir.path().join("b2.db"))
            .await
            .unwrap_err();
        assert!(err.contains("no database at"), "{err}");
        assert!(!dir.path().join("b2.db").exists());
    }
}
