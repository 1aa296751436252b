//! Key material: per-environment CAs and JWT signing keys that rotate on a
//! schedule, the broker's own TLS identity, the admin CA and the audit
//! signing key, all sealed under the KEK in the store.
//!
//! [`KeyRing::load_or_create`] runs once at start-up: the first start
//! generates everything, every later start loads the same keys and resumes
//! the rotation schedule. The environments' keys are published through a
//! `watch` ([`KeyRing::snapshot`], [`KeyRing::subscribe`]): every reader
//! takes the current snapshot per request, so a rotation reaches every
//! endpoint at once and nothing holds a key captured at start.

mod admin_ca;
mod ca;
mod commands;
mod config;
mod environment;
mod jwt_key;
mod kek;
pub mod rotation;
pub mod slot;
mod tls;
mod upstream;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls_pki_types::CertificateDer;
use thiserror::Error;
use tokio::sync::{Mutex, watch};

pub use ca::{
    CertificateAuthority, authority_key_id, new_serial, pem_encode, serial_of, subject_key_id,
};
pub use commands::{KeyCommandError, KeyInfo, Retired};
pub use config::KeysConfig;
pub use environment::EnvironmentKeys;
pub use jwt_key::JwtSigningKey;
pub use kek::{Kek, write_private_file};
pub use rotation::{Rotator, Snapshot};
pub use slot::KeyState;
pub use tls::{AdminFiles, ServerTls};
pub use upstream::UpstreamCa;

use crate::config::Config;
use crate::model::{EnvName, TrustDomain, unix_now};
use crate::store::{KeyKind, KeyRecord, Store, StoreError};

/// A key-handling failure.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The KEK file is missing or malformed.
    #[error("key-encryption key {path}: {why}")]
    Kek {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A sealed key could not be decrypted (wrong KEK or tampered data).
    #[error("cannot decrypt stored key {0}: wrong key-encryption key or tampered data")]
    Unseal(String),
    /// Encryption failed.
    #[error("cannot encrypt key material")]
    Seal,
    /// The system random generator failed.
    #[error("system random number generator failed")]
    Random,
    /// A stored or generated key is unusable.
    #[error("invalid key: {0}")]
    BadKey(String),
    /// A stored certificate is unusable.
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    /// rcgen refused to build a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No key can sign right now (none active, or past its life).
    #[error("{0}")]
    NoUsableKey(String),
    /// Writing a file under the data directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Every key the broker uses.
#[derive(Debug)]
pub struct KeyRing {
    current: watch::Sender<Arc<Snapshot>>,
    generation: AtomicU64,
    rotator: Mutex<Rotator>,
    admin: RwLock<Arc<slot::KeySet<CertificateAuthority>>>,
    tls_ca: CertificateAuthority,
    tls_names: Vec<String>,
    data_dir: PathBuf,
    server_tls: RwLock<Arc<ServerTls>>,
    audit_signer: Arc<JwtSigningKey>,
}

impl KeyRing {
    /// Loads all keys from `store`, generating (and storing) what is missing
    /// and what the rotation schedule calls for, then issues the broker's
    /// TLS certificate and writes `broker-ca.pem` and the admin credentials
    /// under the data directory.
    pub async fn load_or_create(
        config: &Config,
        store: Arc<dyn Store>,
        kek: Arc<Kek>,
    ) -> Result<Self, KeyError> {
        let envs = config
            .environments()
            .map_err(|e| KeyError::BadKey(e.to_string()))?;
        let now = unix_now();
        let mut upstreams = std::collections::HashMap::new();
        for env in &config.environments {
            if let (Some(cert), Some(key)) = (&env.upstream_ca_cert, &env.upstream_ca_key) {
                let name = EnvName::new(&env.name).map_err(|e| KeyError::BadKey(e.to_string()))?;
                let root = UpstreamCa::load(cert, key, now)?;
                tracing::info!(env = %name, root = %cert.display(), "environment CAs are intermediates under an upstream root");
                upstreams.insert(name, Arc::new(root));
            }
        }
        let mut rotator = Rotator::load(
            Arc::clone(&store),
            Arc::clone(&kek),
            &config.keys,
            &config.ttl,
            envs,
            upstreams,
        )
        .await?;
        rotator.schedule(now).await?;
        let (snapshot, _) = rotator.snapshot(now).await?;
        let (admin, _) = rotator.admin_set(now)?;
        for keys in snapshot.values() {
            let kid = keys
                .jwts
                .active()
                .map(|(s, _)| s.id.clone())
                .unwrap_or_default();
            tracing::info!(env = %keys.env.name, trust_domain = %keys.env.trust_domain, kid, sequence = keys.sequence, "environment keys ready");
        }
        let store = store.as_ref();
        let long = std::time::Duration::from_secs(5 * 365 * 24 * 60 * 60);
        let tls_ca = load_or_create_ca(
            store,
            &kek,
            KeyKind::TlsCa,
            "credbroker broker TLS CA",
            long,
        )
        .await?;
        let audit_signer =
            Arc::new(load_or_create_signing_key(store, &kek, "", KeyKind::AuditSigning).await?);
        let server_tls = ServerTls::issue(&tls_ca, &config.tls_names)?;
        tls::write_broker_ca(&config.data_dir, &tls_ca)?;
        AdminFiles::ensure(&config.data_dir, &*admin_ca::signer(&admin)?)?;
        Ok(Self {
            current: watch::Sender::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
            rotator: Mutex::new(rotator),
            admin: RwLock::new(Arc::new(admin)),
            tls_ca,
            tls_names: config.tls_names.clone(),
            data_dir: config.data_dir.clone(),
            server_tls: RwLock::new(Arc::new(server_tls)),
            audit_signer,
        })
    }

    /// Runs the schedule at `now`: re-reads the stored keys, prepares new
    /// ones as due when this broker `leads` (one broker creates keys for
    /// all that share a store, under the bootstrap lock so a broker
    /// starting meanwhile cannot create the same key), activates and
    /// retires keys by their stored times, publishes a changed snapshot,
    /// renews the broker's TLS certificate past half its life. Returns
    /// when to run it next.
    pub async fn tick(&self, now: i64, leads: bool) -> Result<i64, KeyError> {
        let mut rotator = self.rotator.lock().await;
        if leads {
            let _creating = rotator.store.bootstrap_lock().await?;
            rotator.reload().await?;
            rotator.schedule(now).await?;
        } else {
            rotator.reload().await?;
        }
        let (snapshot, changed) = rotator.snapshot(now).await?;
        let (admin, admin_changed) = rotator.admin_set(now)?;
        let next = rotator.next_wakeup(&snapshot, now).min(
            admin
                .next_change(now)
                .unwrap_or(i64::MAX)
                .min(admin_ca::half_life_point(
                    &admin,
                    rotator.admin_lifetime(),
                    now,
                )),
        );
        if admin_changed {
            self.publish_admin(admin);
        }
        if changed {
            self.publish(snapshot);
        }
        self.renew_server_tls(now)?;
        // The bootstrap admin certificate is short-lived (and follows the
        // admin CA): keep a valid one in the data directory.
        AdminFiles::ensure(&self.data_dir, &*self.admin_ca()?)?;
        Ok(next)
    }

    fn publish(&self, snapshot: Snapshot) {
        for keys in snapshot.values() {
            tracing::info!(env = %keys.env.name, sequence = keys.sequence, cas = keys.cas.published().count(), jwt_keys = keys.jwts.published().count(), "published key sets changed");
        }
        self.generation.fetch_add(1, Ordering::Release);
        self.current.send_replace(Arc::new(snapshot));
    }

    fn publish_admin(&self, admin: slot::KeySet<CertificateAuthority>) {
        tracing::info!(published = admin.published().count(), "admin CAs changed");
        if let Ok(mut slot) = self.admin.write() {
            *slot = Arc::new(admin);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn renew_server_tls(&self, now: i64) -> Result<(), KeyError> {
        let due = self
            .server_tls
            .read()
            .map(|t| t.renew_at() <= now)
            .unwrap_or(false);
        if due {
            let fresh = ServerTls::issue(&self.tls_ca, &self.tls_names)?;
            tracing::info!(
                not_after = fresh.not_after(),
                "renewed the broker's TLS certificate"
            );
            if let Ok(mut slot) = self.server_tls.write() {
                *slot = Arc::new(fresh);
            }
        }
        Ok(())
    }

    /// Prepares and activates a new key of `kind` (both kinds when `None`)
    /// in `env` now. Returns the new keys' ids.
    pub async fn rotate(
        &self,
        env: &str,
        kind: Option<KeyKind>,
        now: i64,
    ) -> Result<Vec<(KeyKind, String)>, KeyCommandError> {
        let mut rotator = self.rotator.lock().await;
        // Any broker sharing the store may be asked: create after what the
        // leader (or another operator) created, one broker at a time.
        let _creating = rotator
            .store
            .bootstrap_lock()
            .await
            .map_err(KeyError::from)?;
        rotator.reload().await?;
        if kind == Some(KeyKind::AdminCa) {
            let id = rotator.create_admin(now, now).await?;
            let (admin, _) = rotator.admin_set(now)?;
            self.publish_admin(admin);
            // The bootstrap admin certificate moves to the new CA at once.
            AdminFiles::ensure(&self.data_dir, &*self.admin_ca()?)?;
            return Ok(vec![(KeyKind::AdminCa, id)]);
        }
        let mut made = Vec::new();
        for k in rotation::ROTATING {
            if kind.is_none_or(|want| want == k) {
                made.push((k, rotator.rotate_now(env, k, now).await?));
            }
        }
        let (snapshot, _) = rotator.snapshot(now).await?;
        self.publish(snapshot);
        Ok(made)
    }

    /// Retires key `id` of `env` (see [`Rotator::retire`]) and publishes
    /// the result.
    pub async fn retire(
        &self,
        env: &str,
        id: &str,
        reason: &str,
        immediately: bool,
        now: i64,
    ) -> Result<Retired, KeyCommandError> {
        let mut rotator = self.rotator.lock().await;
        rotator.reload().await?;
        let retired = rotator.retire(env, id, reason, immediately, now).await?;
        let (snapshot, _) = rotator.snapshot(now).await?;
        self.publish(snapshot);
        Ok(retired)
    }

    /// Every rotating key of `env` (all environments and the admin CAs
    /// when `None`).
    pub fn list(&self, env: Option<&str>) -> Vec<KeyInfo> {
        let mut keys = Rotator::list(&self.snapshot(), env);
        if env.is_none() {
            keys.extend(commands::admin_infos(&self.admin_set()));
        }
        keys
    }

    /// The published keys of every environment, now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.borrow())
    }

    /// Follows every change of the published keys.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.current.subscribe()
    }

    /// Raised on every published change; cheap to compare.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key signing the audit log's checkpoints.
    pub fn audit_signer(&self) -> &Arc<JwtSigningKey> {
        &self.audit_signer
    }

    /// The current keys of `env`, if it is served.
    pub fn env(&self, env: &EnvName) -> Option<Arc<EnvironmentKeys>> {
        self.current.borrow().get(env).cloned()
    }

    /// The environment whose trust domain is `td`.
    pub fn env_for_trust_domain(&self, td: &TrustDomain) -> Option<Arc<EnvironmentKeys>> {
        self.current
            .borrow()
            .values()
            .find(|k| &k.env.trust_domain == td)
            .cloned()
    }

    /// All environments' current keys.
    pub fn envs(&self) -> Vec<Arc<EnvironmentKeys>> {
        self.current.borrow().values().cloned().collect()
    }

    /// The admin CA that signs now (operator and bootstrap admin
    /// certificates).
    pub fn admin_ca(&self) -> Result<Arc<CertificateAuthority>, KeyError> {
        admin_ca::signer(&self.admin_set())
    }

    /// Whether a published admin CA signed `cert`.
    pub fn admin_signed(&self, cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
        admin_ca::signed_by_any(&self.admin_set(), cert)
    }

    /// The admin CAs with their states.
    pub fn admin_set(&self) -> Arc<slot::KeySet<CertificateAuthority>> {
        self.admin
            .read()
            .map(|a| Arc::clone(&a))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// The broker's current TLS certificate and key.
    pub fn server_tls(&self) -> Arc<ServerTls> {
        self.server_tls
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// Every CA whose certificates the gRPC listener accepts as client
    /// certificates now: each environment's published CAs and the admin CA.
    pub fn client_ca_certs(&self) -> Vec<CertificateDer<'static>> {
        let snapshot = self.snapshot();
        snapshot
            .values()
            .flat_map(|k| {
                k.cas
                    .published()
                    .map(|(_, ca)| ca.cert_der().clone())
                    .collect::<Vec<_>>()
            })
            .chain(
                self.admin_set()
                    .published()
                    .map(|(_, ca)| ca.cert_der().clone())
                    .collect::<Vec<_>>(),
            )
            .collect()
    }
}

pub(crate) fn seal_label(env: &str, kind: KeyKind) -> String {
    format!("credbroker/{env}/{}", kind.as_str())
}

/// A broker-wide CA (not rotating yet): the newest stored, else a new one.
async fn load_or_create_ca(
    store: &dyn Store,
    kek: &Kek,
    kind: KeyKind,
    common_name: &str,
    ttl: std::time::Duration,
) -> Result<CertificateAuthority, KeyError> {
    let label = seal_label("", kind);
    if let Some(record) = store.latest_key("", kind).await? {
        let cert = record
            .cert_der
            .ok_or_else(|| KeyError::BadCertificate(format!("{label} has no certificate")))?;
        let pkcs8 = kek.open(&label, &record.sealed_key)?;
        return CertificateAuthority::from_parts(CertificateDer::from(cert), &pkcs8);
    }
    let (ca, pkcs8) = CertificateAuthority::generate(common_name, None, ttl)?;
    let now = unix_now();
    store
        .insert_key(&KeyRecord {
            id: 0,
            env: String::new(),
            kind,
            created_at: now,
            activates_at: now,
            not_after: ca.not_after(),
            retired_at: None,
            unpublish_at: None,
            retire_reason: None,
            key_id: None,
            cert_der: Some(ca.cert_der().to_vec()),
            sealed_key: kek.seal(&label, &pkcs8)?,
        })
        .await?;
    tracing::info!(key = %label, "generated CA");
    Ok(ca)
}

/// An ES256 key of `kind`, sealed under the KEK in the store.
async fn load_or_create_signing_key(
    store: &dyn Store,
    kek: &Kek,
    env: &str,
    kind: KeyKind,
) -> Result<JwtSigningKey, KeyError> {
    let label = seal_label(env, kind);
    if let Some(record) = store.latest_key(env, kind).await? {
        return JwtSigningKey::from_pkcs8(&kek.open(&label, &record.sealed_key)?);
    }
    let (key, pkcs8) = JwtSigningKey::generate()?;
    let now = unix_now();
    store
        .insert_key(&KeyRecord {
            id: 0,
            env: env.to_owned(),
            kind,
            created_at: now,
            activates_at: now,
            not_after: i64::MAX,
            retired_at: None,
            unpublish_at: None,
            retire_reason: None,
            key_id: None,
            cert_der: None,
            sealed_key: kek.seal(&label, &pkcs8)?,
        })
        .await?;
    tracing::info!(key = %label, kid = key.kid(), "generated signing key");
    Ok(key)
}
