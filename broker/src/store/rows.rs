//! Rows to records, once for every backend.
//!
//! Both schemas store the same columns with the same meaning (TEXT,
//! 64-bit integers, bytes; JSON lists as TEXT), so one decoder per record
//! serves SQLite and PostgreSQL alike. [`Columns`] is the little a decoder
//! needs from a row; each backend's row type implements it.

use std::time::Duration;

use super::{
    AuditCut, Change, ChangeKind, JoinTokenRecord, KeyKind, KeyRecord, OperatorRecord, StoreError,
};
use crate::audit::checkpoint::{Checkpoint, CheckpointKind};
use crate::audit::{AuditEntry, ChainedEntry};
use crate::model::{
    Audience, EnvName, Identity, IdentityKey, IdentityName, NameSet, Scope, Selector, SpiffeId,
};
use crate::policy::Cidr;
use crate::policy::roles::Role;
use crate::revocation::{Revocation, Target};

/// Typed column reads, by column name.
pub(super) trait Columns {
    /// A non-null text column.
    fn text(&self, column: &str) -> Result<String, StoreError>;
    /// A nullable text column.
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    /// A non-null integer column.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// A nullable integer column.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// A non-null bytes column.
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    /// A nullable bytes column.
    fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
            fn opt_bytes(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError> {
                Ok(sqlx::Row::try_get(self, column)?)
            }
        }
    };
}

impl_columns!(sqlx::sqlite::SqliteRow);
impl_columns!(sqlx::postgres::PgRow);

/// A stored value that does not decode.
pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// JSON text of a list column.
pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "[]".to_owned())
}

/// The string forms of `items`, for a JSON list column.
pub(super) fn strings<'a>(
    items: impl IntoIterator<Item = &'a (impl AsRef<str> + 'a)>,
) -> Vec<&'a str> {
    items.into_iter().map(AsRef::as_ref).collect()
}

/// The string forms of CIDRs, for a JSON list column.
pub(super) fn cidr_strings(cidrs: &[Cidr]) -> Vec<String> {
    cidrs.iter().map(ToString::to_string).collect()
}

fn json_list<T: serde::de::DeserializeOwned>(
    row: &impl Columns,
    column: &str,
) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(&row.text(column)?).map_err(corrupt)
}

/// An `identities` row.
pub(super) fn identity(row: &impl Columns) -> Result<Identity, StoreError> {
    let audiences: Vec<String> = json_list(row, "audiences")?;
    let scopes: Vec<String> = json_list(row, "scopes")?;
    let selectors: Vec<Selector> = json_list(row, "selectors")?;
    let allow_cidrs: Vec<String> = json_list(row, "allow_cidrs")?;
    Ok(Identity {
        key: IdentityKey {
            env: EnvName::new(&row.text("env")?).map_err(corrupt)?,
            name: IdentityName::new(&row.text("name")?).map_err(corrupt)?,
        },
        spiffe_id: SpiffeId::parse(&row.text("spiffe_id")?).map_err(corrupt)?,
        owner: row.text("owner")?,
        purpose: row.text("purpose")?,
        selectors,
        allow_cidrs: allow_cidrs
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?,
        parent: row
            .opt_text("parent")?
            .map(|p| IdentityKey::parse(&p))
            .transpose()
            .map_err(corrupt)?,
        audiences: audiences
            .iter()
            .map(|a| Audience::new(a))
            .collect::<Result<NameSet<_>, _>>()
            .map_err(corrupt)?,
        scopes: scopes
            .iter()
            .map(|s| Scope::new(s))
            .collect::<Result<NameSet<_>, _>>()
            .map_err(corrupt)?,
        jwt_ttl: Duration::from_secs(row.int("jwt_ttl_seconds")?.max(0) as u64),
        x509_ttl: Duration::from_secs(row.int("x509_ttl_seconds")?.max(0) as u64),
        expires_at: row.opt_int("expires_at")?,
        enabled: row.int("enabled")? != 0,
        require_binding: row.int("require_binding")? != 0,
        on_anomaly: crate::model::OnAnomaly::parse(&row.text("on_anomaly")?).map_err(corrupt)?,
        retired_at: row.opt_int("retired_at")?,
        created_at: row.int("created_at")?,
        updated_at: row.int("updated_at")?,
        last_issued_at: row.opt_int("last_issued_at")?,
        last_seen_at: row.opt_int("last_seen_at")?,
    })
}

/// The columns [`key`] reads, for `SELECT`.
pub(super) const KEY_COLUMNS: &str = "id, env, created_at, activates_at, not_after, retired_at,
     unpublish_at, retire_reason, key_id, cert_der, sealed_key";

/// A `key_material` row of `kind`.
pub(super) fn key(row: &impl Columns, kind: KeyKind) -> Result<KeyRecord, StoreError> {
    let created_at = row.int("created_at")?;
    Ok(KeyRecord {
        id: row.int("id")?,
        env: row.text("env")?,
        kind,
        created_at,
        // Rows from before rotation: active since creation, never expiring.
        activates_at: row.opt_int("activates_at")?.unwrap_or(created_at),
        not_after: row.opt_int("not_after")?.unwrap_or(i64::MAX),
        retired_at: row.opt_int("retired_at")?,
        unpublish_at: row.opt_int("unpublish_at")?,
        retire_reason: row.opt_text("retire_reason")?,
        key_id: row.opt_text("key_id")?,
        cert_der: row.opt_bytes("cert_der")?,
        sealed_key: row.bytes("sealed_key")?,
    })
}

/// A 32-byte hash column.
pub(super) fn hash32(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt("audit hash is not 32 bytes"))
}

/// The `audit_cut` row: where retention cut the log, and its export.
pub(super) fn audit_cut(row: &impl Columns) -> Result<AuditCut, StoreError> {
    Ok(AuditCut {
        checkpoint: Checkpoint {
            kind: CheckpointKind::Cut,
            seq: row.int("seq")?,
            head: hash32(row.bytes("head")?)?,
            at_ms: row.int("at_ms")?,
            signature: row.bytes("signature")?,
        },
        export: row.text("export")?,
    })
}

/// An `audit_log` row.
pub(super) fn audit(row: &impl Columns) -> Result<ChainedEntry, StoreError> {
    Ok(ChainedEntry {
        seq: row.int("seq")?,
        entry: AuditEntry {
            at_ms: row.int("at_ms")?,
            action: row.text("action")?,
            decision: row.text("decision")?,
            actor: row.opt_text("actor")?,
            peer: row.opt_text("peer")?,
            identity: row.opt_text("identity")?,
            env: row.opt_text("env")?,
            credential: row.opt_text("credential")?,
            jti: row.opt_text("jti")?,
            serial: row.opt_text("serial")?,
            expires_at: row.opt_int("expires_at")?,
            reason: row.opt_text("reason")?,
            detail: row.opt_text("detail")?,
            evidence: row.opt_text("evidence")?,
        },
        prev_hash: hash32(row.bytes("prev_hash")?)?,
        hash: hash32(row.bytes("hash")?)?,
    })
}

/// A `revocations` row.
pub(super) fn revocation(row: &impl Columns) -> Result<Revocation, StoreError> {
    Ok(Revocation {
        seq: row.int("seq")?,
        target: Target::parse(&row.text("kind")?, &row.text("value")?).map_err(corrupt)?,
        reason: row.text("reason")?,
        operator: row.text("operator")?,
        revoked_at: row.int("revoked_at")?,
        covers_until: row.int("covers_until")?,
        identities: json_list(row, "identities")?,
    })
}

/// An `operators` row.
pub(super) fn operator(row: &impl Columns) -> Result<OperatorRecord, StoreError> {
    Ok(OperatorRecord {
        serial: row.text("serial")?,
        name: row.text("name")?,
        role: Role::parse(&row.text("role")?).map_err(corrupt)?,
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        created_by: row.text("created_by")?,
        revoked_at: row.opt_int("revoked_at")?,
        revoked_by: row.opt_text("revoked_by")?,
        revoke_reason: row.opt_text("revoke_reason")?,
    })
}

/// A `join_tokens` row found by its hash.
pub(super) fn join_token(
    row: &impl Columns,
    hash: [u8; 32],
) -> Result<JoinTokenRecord, StoreError> {
    Ok(JoinTokenRecord {
        hash,
        identity: IdentityKey {
            env: EnvName::new(&row.text("env")?).map_err(corrupt)?,
            name: IdentityName::new(&row.text("name")?).map_err(corrupt)?,
        },
        created_at: row.int("created_at")?,
        expires_at: row.int("expires_at")?,
        uses_left: row.int("uses_left")?.clamp(0, i64::from(u32::MAX)) as u32,
    })
}

/// A `changes` row.
pub(super) fn change(row: &impl Columns) -> Result<Change, StoreError> {
    let kind = row.text("kind")?;
    Ok(Change {
        seq: row.int("seq")?,
        kind: ChangeKind::parse(&kind)
            .ok_or_else(|| corrupt(format!("unknown change kind {kind:?}")))?,
        key: row.text("key")?,
    })
}
