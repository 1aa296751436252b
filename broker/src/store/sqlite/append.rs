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
//! one round trip when it can: it knows where its own last commit left the
//! chain, and sends `BEGIN IMMEDIATE`, the INSERTs and `COMMIT` together.
//! The first entry's seq is the log's primary key, so if any other process
//! appended since, that INSERT fails on the key and nothing is written;
//! the writer rolls back and takes the careful way, two round trips:
//! `BEGIN IMMEDIATE` with the read of the chain's end (and what others
//! appended), then the INSERTs with `COMMIT` after the last of them. A
//! failed append closes the connection, which rolls back whatever it left
//! open (and releases the write lock); the writer's retry opens a new one
//! and starts the careful way.

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
    writer: Mutex<Option<Writer>>,
}

/// The connection, and where its last commit left the chain.
#[derive(Debug)]
struct Writer {
    conn: SqliteConnection,
    /// `(seq, hash)` of the chain's end after this connection's last
    /// commit; `None` until it has committed.
    end: Option<(i64, [u8; 32])>,
}

/// What an append committed: the new end and the identity heads to publish.
type Appended = (i64, [u8; 32], PendingHeads);

impl AppendConnection {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self {
            pool,
            writer: Mutex::new(None),
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
        let mut slot = self.writer.lock().await;
        let mut writer = match slot.take() {
            Some(writer) => writer,
            None => Writer {
                conn: self.pool.connect_options().connect().await?,
                end: None,
            },
        };
        let appended = match writer.end {
            Some(end) => match append_after(&mut writer.conn, end, heads, entries, chain).await {
                Ok(Some(appended)) => Ok(appended),
                Ok(None) => append_on(&mut writer.conn, heads, entries, chain).await,
                Err(e) => Err(e),
            },
            None => append_on(&mut writer.conn, heads, entries, chain).await,
        };
        let (seq, head, pending) = match appended {
            Ok(appended) => appended,
            Err(e) => {
                // Closing rolls back a transaction the failure left open
                // (so does dropping it, when this future is cancelled).
                if let Err(e) = writer.conn.close().await {
                    tracing::debug!(error = %e, "closing the audit writer's failed connection");
                }
                return Err(e);
            }
        };
        writer.end = Some((seq, head));
        *slot = Some(writer);
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

/// One append after `end`, where this connection's last commit left the
/// chain, in one round trip; `None` (rolled back, nothing written) when
/// another process appended since.
async fn append_after(
    conn: &mut SqliteConnection,
    end: (i64, [u8; 32]),
    heads: &IdentityHeads,
    entries: &[AuditEntry],
    chain: &ChainKey,
) -> Result<Option<Appended>, StoreError> {
    let (linked, appended) = link(entries, end, heads, chain);
    match insert_and_commit(conn, "BEGIN IMMEDIATE; ", &linked).await {
        Ok(()) => Ok(Some(appended)),
        // Only the first INSERT can meet an entry of another process: once
        // it ran, this transaction holds the write lock.
        Err(Failed { first: true, error }) if is_key_taken(&error) => {
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            Ok(None)
        }
        Err(Failed { error, .. }) => Err(error.into()),
    }
}

/// One append after the chain's end as the log says it is (after whatever
/// other processes appended), committed.
async fn append_on(
    conn: &mut SqliteConnection,
    heads: &IdentityHeads,
    entries: &[AuditEntry],
    chain: &ChainKey,
) -> Result<Appended, StoreError> {
    let end_row = sqlx::query(BEGIN_AND_READ_END)
        .fetch_optional(&mut *conn)
        .await?;
    let end = match end_row {
        Some(row) => (row.try_get("seq")?, hash32(row.try_get("hash")?)?),
        None => (0, GENESIS),
    };
    // Whatever another process appended is linked to before this batch.
    heads.catch_up(conn, end.0, EndSeen::UnderWriteLock).await?;
    let (linked, appended) = link(entries, end, heads, chain);
    if linked.is_empty() {
        sqlx::query("COMMIT").execute(&mut *conn).await?;
    }
    insert_and_commit(conn, "", &linked)
        .await
        .map_err(|failed| failed.error)?;
    Ok(appended)
}

/// `entries` placed after `end`, each linked to its identity's previous
/// entry, and what committing them appends.
fn link<'a>(
    entries: &'a [AuditEntry],
    (end, head): (i64, [u8; 32]),
    heads: &IdentityHeads,
    chain: &ChainKey,
) -> (Vec<audit_rows::Linked<'a>>, Appended) {
    let (mut linked, seq, head) = audit_rows::link(entries, end, head, chain);
    let (prevs, pending) = heads.link(entries, end + 1);
    for (row, prev) in linked.iter_mut().zip(prevs) {
        row.set_identity_prev(prev);
    }
    (linked, (seq, head, pending))
}

/// An INSERT that failed, and whether it was the first.
struct Failed {
    first: bool,
    error: sqlx::Error,
}

/// Sends `linked` as INSERTs, the first after the statements in `before`,
/// with `COMMIT` after the last. SQLite's thread stops at the first
/// statement that fails: a failed INSERT never reaches the COMMIT.
async fn insert_and_commit(
    conn: &mut SqliteConnection,
    before: &str,
    linked: &[audit_rows::Linked<'_>],
) -> Result<(), Failed> {
    let mut runs = audit_rows::runs(linked).peekable();
    let mut first = true;
    while let Some(run) = runs.next() {
        let before = if first { before } else { "" };
        let mut insert =
            audit_rows::insert::<Sqlite>(before, run, audit_rows::LogColumns::WithIdentityPrev);
        if runs.peek().is_none() {
            insert.push("; COMMIT");
        }
        insert
            .build()
            .execute(&mut *conn)
            .await
            .map_err(|error| Failed { first, error })?;
        first = false;
    }
    Ok(())
}

/// Whether `e` is an INSERT meeting a seq that is already in the log.
fn is_key_taken(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|e| e.kind() == sqlx::error::ErrorKind::UniqueViolation)
}
