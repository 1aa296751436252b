//! The audit log in PostgreSQL: one chain across every broker.

use sqlx::{PgPool, Postgres, QueryBuilder, Row, Transaction};

use super::{Lock, finish, lock_for_transaction};
use crate::audit::{AuditEntry, AuditFilter, ChainKey, ChainedEntry, GENESIS};
use crate::store::audit_rows;
use crate::store::rows::{self, hash32};
use crate::store::{AuditCut, CertKey, CertQuery, IssuedCert, OutstandingCredential, StoreError};

/// Appends a batch after the newest row. The audit lock serialises
/// appenders across brokers for the length of one short transaction (read
/// the head, a few multi-row INSERTs), so batches from every broker form one
/// chain ordered by the database.
pub(super) async fn append_audit(
    pool: &PgPool,
    entries: &[AuditEntry],
    chain: &ChainKey,
) -> Result<(i64, [u8; 32]), StoreError> {
    let mut tx = pool.begin().await?;
    let result = append_in(&mut tx, entries, chain).await;
    finish(tx, result).await
}

async fn append_in(
    tx: &mut Transaction<'_, Postgres>,
    entries: &[AuditEntry],
    chain: &ChainKey,
) -> Result<(i64, [u8; 32]), StoreError> {
    lock_for_transaction(tx, Lock::Audit).await?;
    let (seq, head) = chain_end(&mut **tx).await?.unwrap_or((0, GENESIS));
    if entries.is_empty() {
        return Ok((seq, head));
    }
    let (linked, seq, head) = audit_rows::link(entries, seq, head, chain);
    for run in audit_rows::runs(&linked) {
        audit_rows::insert::<Postgres>("", run, audit_rows::LogColumns::Entry)
            .build()
            .execute(&mut **tx)
            .await?;
    }
    Ok((seq, head))
}

/// Where the next entry links: the newest entry, or the retention cut when
/// retention deleted every entry up to it.
async fn chain_end(conn: impl sqlx::PgExecutor<'_>) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    let row = sqlx::query(
        "SELECT seq, hash FROM (
             (SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1)
             UNION ALL (SELECT seq, head AS hash FROM audit_cut WHERE id = 1)) AS ends
         ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| Ok((row.try_get("seq")?, hash32(row.try_get("hash")?)?)))
        .transpose()
}

pub(super) async fn audit_cut(pool: &PgPool) -> Result<Option<AuditCut>, StoreError> {
    let row = sqlx::query("SELECT seq, head, at_ms, signature, export FROM audit_cut WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::audit_cut).transpose()
}

pub(super) async fn record_audit_cut(pool: &PgPool, cut: &AuditCut) -> Result<(), StoreError> {
    let cp = &cut.checkpoint;
    sqlx::query(
        "INSERT INTO audit_cut (id, seq, head, at_ms, signature, export)
         VALUES (1, $1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, head = excluded.head,
             at_ms = excluded.at_ms, signature = excluded.signature, export = excluded.export
         WHERE excluded.seq > audit_cut.seq",
    )
    .bind(cp.seq)
    .bind(cp.head.as_slice())
    .bind(cp.at_ms)
    .bind(&cp.signature)
    .bind(&cut.export)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn delete_audit_through(
    pool: &PgPool,
    through: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM audit_log WHERE seq IN
             (SELECT seq FROM audit_log WHERE seq <= $1 ORDER BY seq LIMIT $2)",
    )
    .bind(through)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

async fn head_of(conn: impl sqlx::PgExecutor<'_>) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    row.map(|row| Ok((row.try_get("seq")?, hash32(row.try_get("hash")?)?)))
        .transpose()
}

pub(super) async fn audit_head(pool: &PgPool) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    head_of(pool).await
}

pub(super) async fn audit_page(
    pool: &PgPool,
    after: i64,
    limit: i64,
) -> Result<Vec<ChainedEntry>, StoreError> {
    let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::audit).collect()
}

pub(super) async fn query_audit(
    pool: &PgPool,
    f: &AuditFilter,
) -> Result<Vec<ChainedEntry>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT * FROM audit_log WHERE 1 = 1");
    let columns = [
        (" AND identity = ", &f.identity),
        (" AND jti = ", &f.jti),
        (" AND serial = ", &f.serial),
        (" AND actor = ", &f.actor),
        (" AND env = ", &f.env),
    ];
    for (clause, value) in columns {
        if let Some(v) = value {
            q.push(clause).push_bind(v.clone());
        }
    }
    if let Some(since) = f.since_ms {
        q.push(" AND at_ms >= ").push_bind(since);
    }
    if let Some(until) = f.until_ms {
        q.push(" AND at_ms < ").push_bind(until);
    }
    q.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(rows::audit).collect()
}

pub(super) async fn outstanding_credentials(
    pool: &PgPool,
    now: i64,
    identity: Option<&str>,
) -> Result<Vec<OutstandingCredential>, StoreError> {
    let mut q = QueryBuilder::<Postgres>::new(
        "SELECT identity, jti, serial, at_ms FROM audit_log
         WHERE decision = 'issued' AND identity IS NOT NULL AND expires_at > ",
    );
    q.push_bind(now);
    if let Some(identity) = identity {
        q.push(" AND identity = ").push_bind(identity);
    }
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(OutstandingCredential {
                identity: r.try_get("identity")?,
                jti: r.try_get("jti")?,
                serial: r.try_get("serial")?,
                issued_at: r.try_get::<i64, _>("at_ms")? / 1000,
            })
        })
        .collect()
}

pub(super) async fn issued_certificates(
    pool: &PgPool,
    query: &CertQuery<'_>,
    now: i64,
) -> Result<Vec<IssuedCert>, StoreError> {
    // One fixed statement per column, so each uses its index.
    let sql = match query.by {
        CertKey::Serial => {
            "SELECT serial, identity, at_ms, expires_at FROM audit_log
             WHERE serial = $1 AND decision = 'issued' AND credential = 'x509-svid'
               AND at_ms < $2 AND expires_at > $3 AND identity IS NOT NULL"
        }
        CertKey::Identity => {
            "SELECT serial, identity, at_ms, expires_at FROM audit_log
             WHERE identity = $1 AND decision = 'issued' AND credential = 'x509-svid'
               AND at_ms < $2 AND expires_at > $3 AND serial IS NOT NULL"
        }
        CertKey::Env => {
            "SELECT serial, identity, at_ms, expires_at FROM audit_log
             WHERE env = $1 AND decision = 'issued' AND credential = 'x509-svid'
               AND at_ms < $2 AND expires_at > $3 AND serial IS NOT NULL
               AND identity IS NOT NULL"
        }
    };
    let mut rows = sqlx::query(sql)
        .bind(query.value)
        .bind(query.until.saturating_add(1).saturating_mul(1000))
        .bind(now)
        .fetch(pool);
    let mut out = Vec::new();
    while let Some(r) = tokio_stream::StreamExt::next(&mut rows).await {
        let r = r?;
        out.push(IssuedCert {
            serial: r.try_get("serial")?,
            identity: r.try_get("identity")?,
            issued_at: r.try_get::<i64, _>("at_ms")? / 1000,
            expires_at: r.try_get("expires_at")?,
        });
    }
    Ok(out)
}
