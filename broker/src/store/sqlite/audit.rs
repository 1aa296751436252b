//! The audit log tables: reading and querying the chained entries
//! (appending is `append`'s).

use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::identity_chain::{self, EndSeen, IdentityHeads};

use crate::audit::{AuditFilter, ChainedEntry};
use crate::store::rows::{self, hash32};
use crate::store::{AuditCut, CertKey, CertQuery, IssuedCert, OutstandingCredential, StoreError};

/// `identity`'s newest entry, after reading what other processes appended.
async fn head_of_identity(
    pool: &SqlitePool,
    heads: &IdentityHeads,
    identity: &str,
) -> Result<Option<i64>, StoreError> {
    let mut conn = pool.acquire().await?;
    let end = identity_chain::log_end(&mut *conn).await?;
    heads.catch_up(&mut conn, end, EndSeen::InSnapshot).await?;
    Ok(heads.head(identity))
}

async fn head_of(
    conn: impl sqlx::SqliteExecutor<'_>,
) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    row.map(|row| Ok((row.try_get("seq")?, hash32(row.try_get("hash")?)?)))
        .transpose()
}

pub(super) async fn audit_head(pool: &SqlitePool) -> Result<Option<(i64, [u8; 32])>, StoreError> {
    head_of(pool).await
}

pub(super) async fn audit_page(
    pool: &SqlitePool,
    after: i64,
    limit: i64,
) -> Result<Vec<ChainedEntry>, StoreError> {
    let rows = sqlx::query("SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(rows::audit).collect()
}

pub(super) async fn audit_cut(pool: &SqlitePool) -> Result<Option<AuditCut>, StoreError> {
    let row = sqlx::query("SELECT seq, head, at_ms, signature, export FROM audit_cut WHERE id = 1")
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(rows::audit_cut).transpose()
}

pub(super) async fn record_audit_cut(pool: &SqlitePool, cut: &AuditCut) -> Result<(), StoreError> {
    let cp = &cut.checkpoint;
    sqlx::query(
        "INSERT INTO audit_cut (id, seq, head, at_ms, signature, export) VALUES (1, ?, ?, ?, ?, ?)
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
    pool: &SqlitePool,
    through: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "DELETE FROM audit_log WHERE seq IN
             (SELECT seq FROM audit_log WHERE seq <= ? ORDER BY seq LIMIT ?)",
    )
    .bind(through)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn query_audit(
    pool: &SqlitePool,
    heads: &IdentityHeads,
    f: &AuditFilter,
) -> Result<Vec<ChainedEntry>, StoreError> {
    // A jti or serial names one or two entries through its own index; an
    // identity alone is a walk along its chain.
    let mut q = match (&f.identity, &f.jti, &f.serial) {
        (Some(identity), None, None) => {
            let Some(head) = head_of_identity(pool, heads, identity).await? else {
                return Ok(Vec::new());
            };
            // Stopping the walk at the limit is right only when every
            // entry walked is returned.
            let filtered = f.actor.is_some() || f.env.is_some();
            let timed = f.since_ms.is_some() || f.until_ms.is_some();
            let walk_limit = (!filtered && !timed).then_some(f.limit);
            identity_chain::walk_from("a.*", head, identity, walk_limit)
        }
        _ => {
            let mut q = QueryBuilder::<Sqlite>::new("SELECT a.* FROM audit_log AS a WHERE 1 = 1");
            if let Some(identity) = &f.identity {
                q.push(" AND a.identity = ").push_bind(identity.clone());
            }
            q
        }
    };
    let columns = [
        (" AND a.jti = ", &f.jti),
        (" AND a.serial = ", &f.serial),
        (" AND a.actor = ", &f.actor),
        (" AND a.env = ", &f.env),
    ];
    for (clause, value) in columns {
        if let Some(v) = value {
            q.push(clause).push_bind(v.clone());
        }
    }
    if let Some(since) = f.since_ms {
        q.push(" AND a.at_ms >= ").push_bind(since);
    }
    if let Some(until) = f.until_ms {
        q.push(" AND a.at_ms < ").push_bind(until);
    }
    q.push(" ORDER BY a.seq DESC LIMIT ").push_bind(f.limit);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(rows::audit).collect()
}

pub(super) async fn outstanding_credentials(
    pool: &SqlitePool,
    heads: &IdentityHeads,
    now: i64,
    identity: Option<&str>,
) -> Result<Vec<OutstandingCredential>, StoreError> {
    const COLUMNS: &str = "a.identity, a.jti, a.serial, a.at_ms";
    let mut q = match identity {
        Some(identity) => {
            let Some(head) = head_of_identity(pool, heads, identity).await? else {
                return Ok(Vec::new());
            };
            identity_chain::walk_from(COLUMNS, head, identity, None)
        }
        None => QueryBuilder::new(format!(
            "SELECT {COLUMNS} FROM audit_log AS a WHERE a.identity IS NOT NULL"
        )),
    };
    q.push(" AND a.decision = 'issued' AND a.expires_at > ")
        .push_bind(now);
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
    pool: &SqlitePool,
    heads: &IdentityHeads,
    query: &CertQuery<'_>,
    now: i64,
) -> Result<Vec<IssuedCert>, StoreError> {
    const COLUMNS: &str = "a.serial, a.identity, a.at_ms, a.expires_at";
    // Each through its own way in: audit_by_serial, the identity's chain,
    // audit_issued_by_expiry for an environment.
    let mut q = match query.by {
        CertKey::Serial => {
            let mut q = QueryBuilder::new(format!(
                "SELECT {COLUMNS} FROM audit_log AS a WHERE a.serial = "
            ));
            q.push_bind(query.value);
            q
        }
        CertKey::Identity => {
            let Some(head) = head_of_identity(pool, heads, query.value).await? else {
                return Ok(Vec::new());
            };
            identity_chain::walk_from(COLUMNS, head, query.value, None)
        }
        CertKey::Env => {
            let mut q = QueryBuilder::new(format!(
                "SELECT {COLUMNS} FROM audit_log AS a WHERE a.env = "
            ));
            q.push_bind(query.value);
            q
        }
    };
    q.push(
        " AND a.decision = 'issued' AND a.credential = 'x509-svid'
          AND a.serial IS NOT NULL AND a.identity IS NOT NULL AND a.at_ms < ",
    )
    .push_bind(query.until.saturating_add(1).saturating_mul(1000))
    .push(" AND a.expires_at > ")
    .push_bind(now);
    // Row by row: an environment's revocation can cover 100,000s of
    // certificates, and their rows need not all be held at once.
    let mut rows = q.build().fetch(pool);
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
