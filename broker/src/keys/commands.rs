//! What operators do to the schedule: list the keys, rotate now, retire a
//! key they no longer trust.

use super::KeyError;
use super::rotation::{Rotator, Snapshot};
use super::slot::{KeySet, KeyState, Slot};
use crate::store::{KeyKind, KeyRetirement};

/// A key as `keys list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Environment.
    pub env: String,
    /// `x509` or `jwt`.
    pub kind: KeyKind,
    /// `kid` or CA serial.
    pub id: String,
    /// State now.
    pub state: KeyState,
    /// Created and published (unix seconds).
    pub created_at: i64,
    /// Signs from (unix seconds).
    pub activates_at: i64,
    /// Leaves the published sets (unix seconds; `i64::MAX` while undecided).
    pub unpublish_at: i64,
    /// End of life (unix seconds).
    pub not_after: i64,
    /// Why an operator retired it.
    pub retire_reason: Option<String>,
}

/// What a retirement did.
#[derive(Debug, Clone)]
pub struct Retired {
    /// The retired key's public id.
    pub id: String,
    /// Its kind.
    pub kind: KeyKind,
    /// When it leaves the published sets.
    pub unpublish_at: i64,
    /// The key that signs instead, when the retired one was signing.
    pub replaced_by: Option<String>,
    /// When it started signing (unix seconds); what it signed was issued
    /// from then to now.
    pub activated_at: i64,
    /// When everything it signed has expired (unix seconds).
    pub signed_until: i64,
}

/// Why an operator's key command was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyCommandError {
    /// No such environment.
    #[error("environment {0} is not served here")]
    UnknownEnv(String),
    /// No published or prepared key with that id.
    #[error("no key {id} in environment {env}")]
    UnknownKey {
        /// Environment.
        env: String,
        /// The id asked for.
        id: String,
    },
    /// Already retired.
    #[error("key {0} is already retired")]
    AlreadyRetired(String),
    /// The store or key generation failed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl Rotator {
    /// Prepares and activates a new key of `kind` in `env` now; the current
    /// one becomes previous.
    pub async fn rotate_now(
        &mut self,
        env: &str,
        kind: KeyKind,
        now: i64,
    ) -> Result<String, KeyCommandError> {
        let env = self.env(env)?;
        Ok(self.create(&env, kind, now, now).await?)
    }

    /// Retires key `id` of `env`: it stops signing at once (a new key signs
    /// in its place if it was the signer) and leaves the published sets now
    /// (`immediately`) or once what it signed has expired.
    pub async fn retire(
        &mut self,
        env: &str,
        id: &str,
        reason: &str,
        immediately: bool,
        now: i64,
    ) -> Result<Retired, KeyCommandError> {
        let env = self.env(env)?;
        let (snapshot, _) = self.snapshot(now).await?;
        let keys = &snapshot[&env.name];
        let found = find(&keys.cas, id)
            .map(|s| (KeyKind::X509Ca, s))
            .or_else(|| find(&keys.jwts, id).map(|s| (KeyKind::JwtSigning, s)));
        let Some((kind, (record_id, key_id, state, activated_at))) = found else {
            return Err(KeyCommandError::UnknownKey {
                env: env.name.to_string(),
                id: id.to_owned(),
            });
        };
        if state == KeyState::Retired {
            return Err(KeyCommandError::AlreadyRetired(key_id));
        }
        let replaced_by = if state == KeyState::Active {
            Some(self.create(&env, kind, now, now).await?)
        } else {
            None
        };
        let unpublish_at = if immediately {
            now
        } else {
            now + self.keep(kind)
        };
        self.store
            .retire_key(&KeyRetirement {
                id: record_id,
                retired_at: now,
                unpublish_at,
                reason: reason.to_owned(),
            })
            .await
            .map_err(KeyError::from)?;
        if let Some(r) = self
            .records
            .get_mut(&(env.name.clone(), kind))
            .and_then(|list| list.iter_mut().find(|r| r.id == record_id))
        {
            r.retired_at = Some(now);
            r.unpublish_at = Some(unpublish_at);
            r.retire_reason = Some(reason.to_owned());
        }
        tracing::warn!(env = %env.name, kind = kind.as_str(), key = %key_id, reason, "key retired");
        Ok(Retired {
            id: key_id,
            kind,
            unpublish_at,
            replaced_by,
            activated_at,
            signed_until: now + self.keep(kind),
        })
    }

    /// Every key of `env` (or of every environment) with its state.
    pub fn list(snapshot: &Snapshot, env: Option<&str>) -> Vec<KeyInfo> {
        let mut out = Vec::new();
        for keys in snapshot.values() {
            if env.is_some_and(|e| e != keys.env.name.as_str()) {
                continue;
            }
            let env = keys.env.name.as_str();
            out.extend(listed(&keys.cas).map(|s| info(env, KeyKind::X509Ca, s)));
            out.extend(listed(&keys.jwts).map(|s| info(env, KeyKind::JwtSigning, s)));
        }
        out
    }
}

fn info<K>(env: &str, kind: KeyKind, s: &Slot<K>) -> KeyInfo {
    KeyInfo {
        env: env.to_owned(),
        kind,
        id: s.id.clone(),
        state: s.state,
        created_at: s.created_at,
        activates_at: s.activates_at,
        unpublish_at: s.unpublish_at,
        not_after: s.not_after,
        retire_reason: s.retired.as_ref().map(|(_, why)| why.clone()),
    }
}

/// The admin CAs as `keys list` shows them (environment empty).
pub(super) fn admin_infos(set: &KeySet<super::CertificateAuthority>) -> Vec<KeyInfo> {
    listed(set).map(|s| info("", KeyKind::AdminCa, s)).collect()
}

/// The keys worth listing: those published, and those an operator retired
/// (with the reason). Superseded keys that left the sets are history for
/// the audit log, not for `keys list`: a year of daily JWT keys would bury
/// the live ones.
fn listed<K>(set: &KeySet<K>) -> impl Iterator<Item = &Slot<K>> {
    set.all()
        .iter()
        .filter(|s| s.published() || s.retired.is_some())
}

/// The record id, public id, state and activation time of key `id`.
fn find<K>(set: &KeySet<K>, id: &str) -> Option<(i64, String, KeyState, i64)> {
    set.all()
        .iter()
        .find(|s| s.id == id)
        .map(|s| (s.record_id, s.id.clone(), s.state, s.activates_at))
}
