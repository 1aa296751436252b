//! The admin CA rotates like the environments' CAs: a successor is
//! published at half its life and signs from five sixths, the previous one
//! stays trusted until every operator certificate it signed has expired.
//! Operator certificates and the bootstrap admin certificate are signed by
//! the active one; any published one authenticates.

use std::sync::Arc;

use super::rotation::{Rotator, ca_id_of, next_key_due};
use super::slot::KeySet;
use super::{CertificateAuthority, KeyError, seal_label};
use crate::store::{KeyKind, KeyRecord};

/// How long a superseded admin CA stays trusted: the longest an operator
/// certificate may live (`operator create --ttl`, at most 90 days), plus
/// leeway.
pub(super) const ADMIN_KEEP_SECONDS: i64 = 90 * 24 * 60 * 60 + 30;

/// The common name of every admin CA.
const ADMIN_CA_NAME: &str = "credbroker admin CA";

impl Rotator {
    pub(super) fn admin_lifetime(&self) -> i64 {
        self.config.admin_ca_lifetime.as_secs() as i64
    }

    /// Creates the admin CA the schedule calls for at `now`, if any.
    pub(super) async fn schedule_admin(&mut self, now: i64) -> Result<(), KeyError> {
        let hint = self.config.refresh_hint().as_secs() as i64;
        let due = next_key_due(
            &self.admin_records,
            now,
            self.admin_lifetime(),
            ADMIN_KEEP_SECONDS,
            hint,
        )?;
        if let Some(activates) = due {
            tracing::info!(activates_at = activates, "creating the next admin CA");
            self.create_admin(now, activates).await?;
        }
        Ok(())
    }

    /// Generates, seals and stores an admin CA that signs from
    /// `activates_at`; returns its id.
    pub(super) async fn create_admin(
        &mut self,
        now: i64,
        activates_at: i64,
    ) -> Result<String, KeyError> {
        let not_after = activates_at + self.admin_lifetime();
        let (ca, pkcs8) =
            CertificateAuthority::generate_until(ADMIN_CA_NAME, None, not_after, None)?;
        let mut record = KeyRecord {
            id: 0,
            env: String::new(),
            kind: KeyKind::AdminCa,
            created_at: now,
            activates_at,
            not_after,
            retired_at: None,
            unpublish_at: None,
            retire_reason: None,
            key_id: Some(ca.id().to_owned()),
            cert_der: Some(ca.cert_der().to_vec()),
            sealed_key: self.kek.seal(&seal_label("", KeyKind::AdminCa), &pkcs8)?,
        };
        record.id = self.store.insert_key(&record).await?;
        let id = ca.id().to_owned();
        tracing::info!(key = %id, activates_at, not_after, "generated admin CA");
        self.admin_records.push(record);
        Ok(id)
    }

    /// The admin CAs at `now`, and whether the published set or the signer
    /// changed since the last call.
    pub(super) fn admin_set(
        &mut self,
        now: i64,
    ) -> Result<(KeySet<CertificateAuthority>, bool), KeyError> {
        let records = self.admin_records.clone();
        let set = KeySet::build(
            &records,
            now,
            ADMIN_KEEP_SECONDS,
            |r| self.load_ca(r),
            ca_id_of,
        )?;
        let fingerprint = set.fingerprint();
        let changed = self.admin_fingerprint != fingerprint;
        self.admin_fingerprint = fingerprint;
        Ok((set, changed))
    }
}

/// A stored CA record's `not_after`, bounded by its certificate's own
/// (records written before rotation existed carry none).
pub(super) fn bounded_by_certificate(mut record: KeyRecord) -> KeyRecord {
    if let Some(end) = record
        .cert_der
        .as_deref()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map(|(_, c)| c.validity().not_after.timestamp())
    {
        record.not_after = record.not_after.min(end);
    }
    record
}

/// Whether any published admin CA signed `cert`.
pub fn signed_by_any(
    set: &KeySet<CertificateAuthority>,
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> bool {
    set.published().any(|(_, ca)| ca.signed(cert))
}

/// The admin CA that signs now.
pub fn signer(set: &KeySet<CertificateAuthority>) -> Result<Arc<CertificateAuthority>, KeyError> {
    set.active()
        .map(|(_, ca)| Arc::clone(ca))
        .ok_or_else(|| KeyError::NoUsableKey("no usable admin CA right now".into()))
}

/// When the active admin CA reaches half its life (its successor is due),
/// if that is still ahead.
pub(super) fn half_life_point(set: &KeySet<CertificateAuthority>, life: i64, now: i64) -> i64 {
    set.active()
        .map(|(s, _)| s.activates_at + life / 2)
        .filter(|&t| t > now)
        .unwrap_or(i64::MAX)
}
