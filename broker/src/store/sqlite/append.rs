//! Appending to the audit log, through a connection of its own.
//!
//! Every issuance waits for its batch's commit, so this is the hot path of
//! the store. Two things made it costly through the pool:
//!
//! - the pool hands its connections out in turn, and a connection whose
//!   database another connection wrote to discards its page cache: each
//!   append read the log's newest pages back from the file (12 `pread`s per
//!   credential at one call in flight);
//! - each statement is a round trip to the connection's SQLite thread
//!   (two thread wake-ups), and an append took six: the pool's release
//!   check, BEGIN, the chain's end, the INSERT, COMMIT.
//!
//! So the single audit writer appends through one connection it keeps, in
//! two round trips: `BEGIN IMMEDIATE` with the read of the chain's end, then
//! the INSERTs with `COMMIT` after the last of them. A failed append closes
//! the connection, which rolls back whatever it left open (and releases the
//! write lock); the writer's retry opens a new one.

use std::sync::Arc;

use sqlx::{ConnectOptions, Connection, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use super::identity_chain::{EndSeen, IdentityHeads, PendingHeads};
use crate::audit::{AuditEntry, ChainKey, GENESIS};
use crate::store::StoreError;
use crate::store::audit_rows;
use crate::store::rows::hash32;

/// Takes the write lock, then reads where the next entry links: the newest
/// entry, or the retention cut when retention deleted every entry up to
/// it. IMMEDIATE takes the lock before the read, so the end cannot move
/// between reading it and appending after it.
const BEGIN_AND_READ_END: &str = "BEGIN IMMEDIATE;
     SELECT seq, hash FROM (
         SELECT seq, hash FROM (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1)
         UNION ALL SELECT seq, head AS hash FROM audit_cut WHERE id = 1)
     ORDER BY seq DESC LIMIT 1";

/// The audit writer's own connection to the database (opened on first use,
/// with the pool's options).
#[derive(Debug)]
pub(super) struct AppendConnection {
    pool: SqlitePool,
    conn: Mutex<Option<SqliteConnection>>,
}

impl AppendConnection {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            conn: Mutex::new(None),
        }
    }

    /// Appends `entries` after the chain's end, in one transaction, and
    /// returns the new end. One append runs at a time.
    pub(super) async fn append(
        &self,
        heads: &Arc<IdentityHeads>,
        entries: &[AuditEntry],
        chain: &ChainKey,
    ) -> Result<(i64, [u8; 32]), StoreError> {
        let mut slot = self.conn.lock().await;
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.pool.connect_options().connect().await?,
        };
        let (seq, head, pending) = match append_on(&mut conn, heads, entries, chain).await {
            Ok(appended) => appended,
            Err(e) => {
                // Closing rolls back a transaction the failure left open
                // (so does dropping it, when this future is cancelled).
                if let Err(e) = conn.close().await {
                    tracing::debug!(error = %e, "closing the audit writer's failed connection");
                }
                return Err(e);
            }
        };
        *slot = Some(conn);
        // Published before the caller hears of the commit: a query that
        // starts after that (a revocation looking for this identity's
        // certificates) finds these entries.
        if heads.publish(pending) {
            let (heads, pool) = (Arc::clone(heads), self.pool.clone());
            tokio::spawn(async move {
                if let Err(e) = heads.persist(&pool).await {
                    tracing::warn!(error = %e, "could not persist the audit log's identity heads");
                }
            });
        }
        Ok((seq, head))
    }
}

/// One append, committed: the new end and the identity heads to publish.
async fn append_on(
    conn: &mut SqliteConnection,
    heads: &IdentityHeads,
    entries: &[AuditEntry],
    chain: &ChainKey,
) -> Result<(i64, [u8; 32], PendingHeads), StoreError> {
    let end_row = sqlx::query(BEGIN_AND_READ_END)
        .fetch_optional(&mut *conn)
        .await?;
    let (end, head) = match end_row {
        Some(row) => (row.try_get("seq")?, hash32(row.try_get("hash")?)?),
        None => (0, GENESIS),
    };
    // Whatever another process appended is linked to before this batch.
    heads.catch_up(conn, end, EndSeen::UnderWriteLock).await?;
    let (mut linked, seq, head) = audit_rows::link(entries, end, head, chain);
    let (prevs, pending) = heads.link(entries, end + 1);
    for (row, prev) in linked.iter_mut().zip(prevs) {
        row.set_identity_prev(prev);
    }
    if linked.is_empty() {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    let mut runs = audit_rows::runs(&linked).peekable();
    while let Some(run) = runs.next() {
        let mut insert =
            audit_rows::insert::<Sqlite>(run, audit_rows::LogColumns::WithIdentityPrev);
        if runs.peek().is_none() {
            // SQLite's thread stops at the first statement that fails: a
            // failed INSERT never reaches this COMMIT.
            insert.push("; COMMIT");
        }
        insert.build().execute(&mut *conn).await?;
    }
    Ok((seq, head, pending))
}
