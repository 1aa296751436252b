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

use super::commands::KeyCommandError;
use super::environment::EnvironmentKeys;
use super::slot::{KeySet, KeyState};
use super::{
    CertificateAuthority, JwtSigningKey, Kek, KeyError, KeysConfig, UpstreamCa, seal_label,
};
use crate::config::{Environment, TtlConfig};
use crate::model::EnvName;
use crate::store::{KeyKind, KeyRecord, Store};

/// Kept published past the longest credential a key can have signed, for
/// relying parties' clock skew (the SDK verifier tolerates 30 s).
const LEEWAY_SECONDS: i64 = 30;

/// The kinds of key that rotate, per environment.
pub const ROTATING: [KeyKind; 2] = [KeyKind::X509Ca, KeyKind::JwtSigning];

/// The published keys of every environment at one moment.
pub type Snapshot = BTreeMap<EnvName, Arc<EnvironmentKeys>>;

/// Every environment's rotating key records, and the admin CA's.
type Records = (HashMap<(EnvName, KeyKind), Vec<KeyRecord>>, Vec<KeyRecord>);

async fn read_records(store: &dyn Store, envs: &[Environment]) -> Result<Records, KeyError> {
    let mut records = HashMap::new();
    for env in envs {
        for kind in ROTATING {
            let list = store.list_keys(env.name.as_str(), kind).await?;
            records.insert((env.name.clone(), kind), list);
        }
    }
    let admin_records = store
        .list_keys("", KeyKind::AdminCa)
        .await?
        .into_iter()
        .map(super::admin_ca::bounded_by_certificate)
        .collect();
    Ok((records, admin_records))
}

/// Owns the schedule: decides, generates, stores, publishes.
#[derive(Debug)]
pub struct Rotator {
    pub(super) store: Arc<dyn Store>,
    pub(super) kek: Arc<Kek>,
    pub(super) config: KeysConfig,
    keep_x509: i64,
    keep_jwt: i64,
    envs: Vec<Environment>,
    pub(super) records: HashMap<(EnvName, KeyKind), Vec<KeyRecord>>,
    cas: HashMap<i64, (Arc<CertificateAuthority>, String)>,
    /// Per environment, the upstream root its CAs are intermediates under.
    upstreams: HashMap<EnvName, Arc<UpstreamCa>>,
    jwts: HashMap<i64, (Arc<JwtSigningKey>, String)>,
    fingerprints: HashMap<EnvName, Vec<(i64, KeyState)>>,
    sequences: HashMap<EnvName, i64>,
    /// The broker-wide admin CA's records (see [`super::admin_ca`]).
    pub(super) admin_records: Vec<KeyRecord>,
    pub(super) admin_fingerprint: Vec<(i64, KeyState)>,
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
        upstreams: HashMap<EnvName, Arc<UpstreamCa>>,
    ) -> Result<Self, KeyError> {
        let (records, admin_records) = read_records(store.as_ref(), &envs).await?;
        Ok(Self {
            store,
            kek,
            config: config.clone(),
            keep_x509: ttl.x509_ceiling.as_secs() as i64 + LEEWAY_SECONDS,
            keep_jwt: ttl.jwt_ceiling.as_secs() as i64 + LEEWAY_SECONDS,
            envs,
            records,
            cas: HashMap::new(),
            upstreams,
            jwts: HashMap::new(),
            fingerprints: HashMap::new(),
            sequences: HashMap::new(),
            admin_records,
            admin_fingerprint: Vec::new(),
        })
    }

    /// Re-reads every key record from the store: brokers sharing it see
    /// the keys the leader created or an operator retired elsewhere. Loaded
    /// keys stay cached by row id.
    pub async fn reload(&mut self) -> Result<(), KeyError> {
        let (records, admin_records) = read_records(self.store.as_ref(), &self.envs).await?;
        self.records = records;
        self.admin_records = admin_records;
        Ok(())
    }

    pub(super) fn keep(&self, kind: KeyKind) -> i64 {
        match kind {
            KeyKind::X509Ca => self.keep_x509,
            _ => self.keep_jwt,
        }
    }

    pub(super) fn env(&self, name: &str) -> Result<Environment, KeyCommandError> {
        self.envs
            .iter()
            .find(|e| e.name.as_str() == name)
            .cloned()
            .ok_or_else(|| KeyCommandError::UnknownEnv(name.to_owned()))
    }

    /// Creates what the schedule calls for at `now`: a first key where
    /// none can sign, a successor for a key past half its life.
    pub async fn schedule(&mut self, now: i64) -> Result<(), KeyError> {
        let hint = self.config.refresh_hint().as_secs() as i64;
        for env in self.envs.clone() {
            for kind in ROTATING {
                let records = &self.records[&(env.name.clone(), kind)];
                let due = next_key_due(
                    records,
                    now,
                    lifetime(&self.config, kind),
                    self.keep(kind),
                    hint,
                )?;
                if let Some(activates) = due {
                    tracing::info!(env = %env.name, kind = kind.as_str(), activates_at = activates, "creating the next key");
                    self.create(&env, kind, now, activates).await?;
                }
            }
        }
        self.schedule_admin(now).await
    }

    /// Generates, seals and stores a key that signs from `activates_at`.
    pub(super) async fn create(
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
                    self.upstreams.get(&env.name).map(Arc::as_ref),
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
            key_id: Some(id.clone()),
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

    pub(super) fn load_ca(
        &mut self,
        r: &KeyRecord,
    ) -> Result<(Arc<CertificateAuthority>, String), KeyError> {
        if let Some(hit) = self.cas.get(&r.id) {
            return Ok(hit.clone());
        }
        let label = seal_label(&r.env, r.kind);
        let cert = r
            .cert_der
            .clone()
            .ok_or_else(|| KeyError::BadCertificate(format!("{label} has no certificate")))?;
        // Broker-wide CAs (env "") have no upstream root.
        let root = EnvName::new(&r.env)
            .ok()
            .and_then(|env| self.upstreams.get(&env))
            .map(|u| u.cert_der().clone());
        let ca =
            CertificateAuthority::from_parts(cert.into(), &self.kek.open(&label, &r.sealed_key)?)?
                .under(root);
        let id = ca.id().to_owned();
        let loaded = (Arc::new(ca), id);
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
                |r| r.key_id.clone().unwrap_or_default(),
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
}

/// When the schedule wants a new key of a line (`records`, each living
/// `life` seconds) to start signing, if it wants one now: at once when none
/// can sign; when the active key is past half its life and has no
/// successor, at five sixths of its life — or, when late (the broker was
/// down), a refresh interval (`hint`) from now so relying parties learn it
/// first, but never past the active key's end.
pub(super) fn next_key_due(
    records: &[KeyRecord],
    now: i64,
    life: i64,
    keep: i64,
    hint: i64,
) -> Result<Option<i64>, KeyError> {
    let set = KeySet::<()>::build::<KeyError>(
        records,
        now,
        keep,
        |_| Ok((Arc::new(()), String::new())),
        |_| String::new(),
    )?;
    let Some((active, _)) = set.active() else {
        return Ok(Some(now));
    };
    let has_successor = set.all().iter().any(|s| {
        s.activates_at > active.activates_at && s.retired.is_none() && s.state != KeyState::Retired
    });
    if has_successor || now < active.activates_at + life / 2 {
        return Ok(None);
    }
    let mut activates = active.activates_at + life * 5 / 6;
    if activates < now + hint {
        activates = (now + hint)
            .min(active.not_after.saturating_sub(1))
            .max(now);
    }
    Ok(Some(activates))
}

/// A CA's id (its serial) read from its certificate without its key.
pub(super) fn ca_id_of(r: &KeyRecord) -> String {
    if let Some(id) = &r.key_id {
        return id.clone();
    }
    r.cert_der
        .as_deref()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .and_then(|(_, c)| super::ca::subject_key_id(&c))
        .unwrap_or_default()
}
