//! The rotation schedule of every environment's CA and JWT signing key,
//! kept by one loop: prepare a successor at half a key's life (published at
//! once, signing later), activate it at five sixths, keep the old key
//! published until what it signed has expired, and publish each change as
//! a new snapshot with a higher `spiffe_sequence`.
//!
//! The schedule lives in the store (each key's `activates_at` and
//! `not_after`), so a restart resumes it exactly; states are derived from
//! it (see [`super::slot`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::environment::EnvironmentKeys;
use super::slot::{KeySet, KeyState};
use super::{CertificateAuthority, JwtSigningKey, Kek, KeyError, KeysConfig, seal_label};
use crate::config::{Environment, TtlConfig};
use crate::model::EnvName;
use crate::store::{KeyKind, KeyRecord, KeyRetirement, Store};

/// Kept published past the longest credential a key can have signed, for
/// relying parties' clock skew (the SDK verifier tolerates 30 s).
const LEEWAY_SECONDS: i64 = 30;

/// The kinds of key that rotate, per environment.
pub const ROTATING: [KeyKind; 2] = [KeyKind::X509Ca, KeyKind::JwtSigning];

/// The published keys of every environment at one moment.
pub type Snapshot = BTreeMap<EnvName, Arc<EnvironmentKeys>>;

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

/// Owns the schedule: decides, generates, stores, publishes.
#[derive(Debug)]
pub struct Rotator {
    store: Arc<dyn Store>,
    kek: Arc<Kek>,
    config: KeysConfig,
    keep_x509: i64,
    keep_jwt: i64,
    envs: Vec<Environment>,
    records: HashMap<(EnvName, KeyKind), Vec<KeyRecord>>,
    cas: HashMap<i64, (Arc<CertificateAuthority>, String)>,
    jwts: HashMap<i64, (Arc<JwtSigningKey>, String)>,
    fingerprints: HashMap<EnvName, Vec<(i64, KeyState)>>,
    sequences: HashMap<EnvName, i64>,
}

fn lifetime(config: &KeysConfig, kind: KeyKind) -> i64 {
    let d = match kind {
        KeyKind::X509Ca => config.ca_lifetime,
        _ => config.jwt_key_lifetime,
    };
    d.as_secs() as i64
}

impl Rotator {
    /// Loads every environment's key records.
    pub async fn load(
        store: Arc<dyn Store>,
        kek: Arc<Kek>,
        config: &KeysConfig,
        ttl: &TtlConfig,
        envs: Vec<Environment>,
    ) -> Result<Self, KeyError> {
        let mut records = HashMap::new();
        for env in &envs {
            for kind in ROTATING {
                let list = store.list_keys(env.name.as_str(), kind).await?;
                records.insert((env.name.clone(), kind), list);
            }
        }
        Ok(Self {
            store,
            kek,
            config: config.clone(),
            keep_x509: ttl.x509_ceiling.as_secs() as i64 + LEEWAY_SECONDS,
            keep_jwt: ttl.jwt_ceiling.as_secs() as i64 + LEEWAY_SECONDS,
            envs,
            records,
            cas: HashMap::new(),
            jwts: HashMap::new(),
            fingerprints: HashMap::new(),
            sequences: HashMap::new(),
        })
    }

    fn keep(&self, kind: KeyKind) -> i64 {
        match kind {
            KeyKind::X509Ca => self.keep_x509,
            _ => self.keep_jwt,
        }
    }

    fn env(&self, name: &str) -> Result<Environment, KeyCommandError> {
        self.envs
            .iter()
            .find(|e| e.name.as_str() == name)
            .cloned()
            .ok_or_else(|| KeyCommandError::UnknownEnv(name.to_owned()))
    }

    /// Creates what the schedule calls for at `now`: a first key where
    /// none can sign, a successor for a key past half its life.
    pub async fn schedule(&mut self, now: i64) -> Result<(), KeyError> {
        for env in self.envs.clone() {
            for kind in ROTATING {
                let life = lifetime(&self.config, kind);
                let keep = self.keep(kind);
                let records = &self.records[&(env.name.clone(), kind)];
                let set = KeySet::<()>::build::<KeyError>(
                    records,
                    now,
                    keep,
                    |_| Ok((Arc::new(()), String::new())),
                    |_| String::new(),
                )?;
                let Some((active, _)) = set.active() else {
                    tracing::info!(env = %env.name, kind = kind.as_str(), "no usable key: creating one that signs now");
                    self.create(&env, kind, now, now).await?;
                    continue;
                };
                let has_successor = set.all().iter().any(|s| {
                    s.activates_at > active.activates_at
                        && s.retired.is_none()
                        && s.state != KeyState::Retired
                });
                if has_successor || now < active.activates_at + life / 2 {
                    continue;
                }
                // Activate at five sixths of the active key's life; when late
                // (the broker was down), give relying parties a refresh
                // interval to learn the new key, but never past the active
                // key's end.
                let hint = self.config.refresh_hint().as_secs() as i64;
                let mut activates = active.activates_at + life * 5 / 6;
                if activates < now + hint {
                    activates = (now + hint)
                        .min(active.not_after.saturating_sub(1))
                        .max(now);
                }
                tracing::info!(env = %env.name, kind = kind.as_str(), activates_at = activates, "preparing the next key");
                self.create(&env, kind, now, activates).await?;
            }
        }
        Ok(())
    }

    /// Generates, seals and stores a key that signs from `activates_at`.
    async fn create(
        &mut self,
        env: &Environment,
        kind: KeyKind,
        now: i64,
        activates_at: i64,
    ) -> Result<String, KeyError> {
        let not_after = activates_at + lifetime(&self.config, kind);
        let label = seal_label(env.name.as_str(), kind);
        let (cert_der, pkcs8, id) = match kind {
            KeyKind::X509Ca => {
                let (ca, pkcs8) = CertificateAuthority::generate_until(
                    &format!("credbroker {} SPIFFE CA", env.name),
                    Some(&format!("spiffe://{}", env.trust_domain)),
                    not_after,
                )?;
                let id = ca.id().to_owned();
                (Some(ca.cert_der().to_vec()), pkcs8, id)
            }
            _ => {
                let (key, pkcs8) = JwtSigningKey::generate()?;
                (None, pkcs8, key.kid().to_owned())
            }
        };
        let mut record = KeyRecord {
            id: 0,
            env: env.name.to_string(),
            kind,
            created_at: now,
            activates_at,
            not_after,
            retired_at: None,
            unpublish_at: None,
            retire_reason: None,
            cert_der,
            sealed_key: self.kek.seal(&label, &pkcs8)?,
        };
        record.id = self.store.insert_key(&record).await?;
        tracing::info!(env = %env.name, kind = kind.as_str(), key = %id, activates_at, not_after, "generated key");
        self.records
            .entry((env.name.clone(), kind))
            .or_default()
            .push(record);
        Ok(id)
    }

    fn load_ca(&mut self, r: &KeyRecord) -> Result<(Arc<CertificateAuthority>, String), KeyError> {
        if let Some(hit) = self.cas.get(&r.id) {
            return Ok(hit.clone());
        }
        let label = seal_label(&r.env, r.kind);
        let cert = r
            .cert_der
            .clone()
            .ok_or_else(|| KeyError::BadCertificate(format!("{label} has no certificate")))?;
        let ca =
            CertificateAuthority::from_parts(cert.into(), &self.kek.open(&label, &r.sealed_key)?)?;
        let loaded = (Arc::new(ca), String::new());
        let id = loaded.0.id().to_owned();
        let loaded = (loaded.0, id);
        self.cas.insert(r.id, loaded.clone());
        Ok(loaded)
    }

    fn load_jwt(&mut self, r: &KeyRecord) -> Result<(Arc<JwtSigningKey>, String), KeyError> {
        if let Some(hit) = self.jwts.get(&r.id) {
            return Ok(hit.clone());
        }
        let label = seal_label(&r.env, r.kind);
        let key = JwtSigningKey::from_pkcs8(&self.kek.open(&label, &r.sealed_key)?)?;
        let id = key.kid().to_owned();
        let loaded = (Arc::new(key), id);
        self.jwts.insert(r.id, loaded.clone());
        Ok(loaded)
    }

    /// Every environment's published keys at `now`; raises the sequence of
    /// each environment whose set or signer changed. Returns the snapshot
    /// and whether anything changed since the last one.
    pub async fn snapshot(&mut self, now: i64) -> Result<(Snapshot, bool), KeyError> {
        let mut out = BTreeMap::new();
        let mut changed = false;
        for env in self.envs.clone() {
            let ca_records = self.records[&(env.name.clone(), KeyKind::X509Ca)].clone();
            let jwt_records = self.records[&(env.name.clone(), KeyKind::JwtSigning)].clone();
            let cas = KeySet::build(
                &ca_records,
                now,
                self.keep_x509,
                |r| self.load_ca(r),
                ca_id_of,
            )?;
            let jwts = KeySet::build(
                &jwt_records,
                now,
                self.keep_jwt,
                |r| self.load_jwt(r),
                |_| String::from("(unpublished)"),
            )?;
            let mut fingerprint = cas.fingerprint();
            fingerprint.extend(jwts.fingerprint());
            if self.fingerprints.get(&env.name) != Some(&fingerprint) {
                let described: Vec<String> = fingerprint
                    .iter()
                    .map(|(id, state)| format!("{id}:{}", state.as_str()))
                    .collect();
                let seq = self
                    .store
                    .key_sequence(env.name.as_str(), &described.join(","))
                    .await?;
                self.sequences.insert(env.name.clone(), seq);
                self.fingerprints.insert(env.name.clone(), fingerprint);
                changed = true;
            }
            // Keys that left every set need not stay in memory.
            let published: Vec<i64> = cas
                .published()
                .map(|(s, _)| s.record_id)
                .chain(jwts.published().map(|(s, _)| s.record_id))
                .collect();
            self.cas.retain(|id, _| published.contains(id));
            self.jwts.retain(|id, _| published.contains(id));
            out.insert(
                env.name.clone(),
                Arc::new(EnvironmentKeys {
                    env: env.clone(),
                    cas,
                    jwts,
                    sequence: self.sequences[&env.name],
                    refresh_hint: self.config.refresh_hint(),
                }),
            );
        }
        Ok((out, changed))
    }

    /// The next time something changes by itself, no later than `now + 1`
    /// hour (so a changed clock is noticed).
    pub fn next_wakeup(&self, snapshot: &Snapshot, now: i64) -> i64 {
        let mut next = now + 3600;
        for keys in snapshot.values() {
            for t in [keys.cas.next_change(now), keys.jwts.next_change(now)]
                .into_iter()
                .flatten()
            {
                next = next.min(t);
            }
            // Half-life points, where the next key is prepared.
            for (kind, active) in [
                (
                    KeyKind::X509Ca,
                    keys.cas.active().map(|(s, _)| s.activates_at),
                ),
                (
                    KeyKind::JwtSigning,
                    keys.jwts.active().map(|(s, _)| s.activates_at),
                ),
            ] {
                if let Some(a) = active {
                    let half = a + lifetime(&self.config, kind) / 2;
                    if half > now {
                        next = next.min(half);
                    }
                }
            }
        }
        next.max(now + 1)
    }

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
        let found = ROTATING.iter().find_map(|&kind| {
            let set_slots = match kind {
                KeyKind::X509Ca => keys
                    .cas
                    .all()
                    .iter()
                    .map(|s| (s.record_id, s.id.clone(), s.state, s.activates_at))
                    .collect::<Vec<_>>(),
                _ => keys
                    .jwts
                    .all()
                    .iter()
                    .map(|s| (s.record_id, s.id.clone(), s.state, s.activates_at))
                    .collect(),
            };
            set_slots
                .into_iter()
                .find(|(_, sid, _, _)| sid == id)
                .map(|found| (kind, found))
        });
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
            out.extend(keys.cas.all().iter().map(|s| info(env, KeyKind::X509Ca, s)));
            out.extend(
                keys.jwts
                    .all()
                    .iter()
                    .map(|s| info(env, KeyKind::JwtSigning, s)),
            );
        }
        out
    }

    /// How long keys live.
    pub fn config(&self) -> &KeysConfig {
        &self.config
    }
}

fn info<K>(env: &str, kind: KeyKind, s: &super::slot::Slot<K>) -> KeyInfo {
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

/// A CA's id (its serial) read from its certificate without its key.
fn ca_id_of(r: &KeyRecord) -> String {
    r.cert_der
        .as_deref()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .and_then(|(_, c)| super::ca::subject_key_id(&c))
        .unwrap_or_default()
}

/// How long until `at` (unix seconds) from `now`.
pub fn until(at: i64, now: i64) -> Duration {
    Duration::from_secs(at.saturating_sub(now).max(0) as u64)
}
