//! The change feed and the session locks in PostgreSQL.

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};

use super::Lock;
use crate::store::{Change, ChangeKind, ChangeSignal, HeldLock, StoreError, StoreLock};

/// The `NOTIFY` channel; the payload is the schema, so brokers in other
/// schemas of the same database ignore it.
const CHANNEL: &str = "credbroker_changes";

/// Records a change inside `tx` (which holds the change lock) and queues a
/// notification, delivered when `tx` commits.
pub(super) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    kind: ChangeKind,
    key: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO changes (kind, key, at_ms) VALUES ($1, $2, $3)")
        .bind(kind.as_str())
        .bind(key)
        .bind(crate::model::unix_now_ms())
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT pg_notify($1, current_schema())")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn after(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let rows =
        sqlx::query("SELECT seq, kind, key FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(pool)
            .await?;
    rows.iter().map(crate::store::rows::change).collect()
}

pub(super) async fn latest(pool: &PgPool) -> Result<i64, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
        .fetch_one(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

pub(super) async fn purge(pool: &PgPool, before_ms: i64) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM changes WHERE at_ms < $1")
        .bind(before_ms)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

/// `LISTEN` on its own connection.
pub(super) struct Signal {
    listener: PgListener,
    schema: String,
}

impl Signal {
    pub(super) async fn listen(pool: &PgPool) -> Result<Self, StoreError> {
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(pool)
            .await?;
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Self { listener, schema })
    }
}

#[async_trait]
impl ChangeSignal for Signal {
    async fn wait(&mut self) -> Result<(), StoreError> {
        loop {
            // `try_recv` reports a lost connection as `None` (notifications
            // sent meanwhile are gone: the caller re-reads the feed), and
            // reconnects on the next call.
            match self.listener.try_recv().await? {
                Some(n) if n.payload() == self.schema => return Ok(()),
                Some(_) => continue,
                None => {
                    return Err(StoreError::Database(sqlx::Error::Protocol(
                        "the change notification connection was lost".into(),
                    )));
                }
            }
        }
    }
}

/// A session-scoped advisory lock on a connection of its own: released by
/// the database the moment that connection ends, so a broker killed with
/// SIGKILL gives its locks up at once.
pub(super) struct SessionLock {
    conn: PgConnection,
    lock: Lock,
}

impl std::fmt::Debug for SessionLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLock")
            .field("lock", &self.lock)
            .finish()
    }
}

impl SessionLock {
    /// Waits until `lock` is free and takes it.
    pub(super) async fn wait(
        options: &PgConnectOptions,
        lock: Lock,
    ) -> Result<StoreLock, StoreError> {
        let mut conn = PgConnection::connect_with(options).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT pg_advisory_lock({})",
            lock.key_sql()
        )))
        .execute(&mut conn)
        .await?;
        Ok(StoreLock::held(Box::new(Self { conn, lock })))
    }

    /// Takes `lock` if it is free.
    pub(super) async fn try_take(
        options: &PgConnectOptions,
        lock: Lock,
    ) -> Result<Option<StoreLock>, StoreError> {
        let mut conn = PgConnection::connect_with(options).await?;
        let taken: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT pg_try_advisory_lock({})",
            lock.key_sql()
        )))
        .fetch_one(&mut conn)
        .await?;
        Ok(taken.then(|| StoreLock::held(Box::new(Self { conn, lock }))))
    }
}

#[async_trait]
impl HeldLock for SessionLock {
    async fn still_held(&mut self) -> bool {
        // The lock lives exactly as long as the session: a session that
        // still answers still holds it.
        self.conn.ping().await.is_ok()
    }
}
