//! Key material: per-environment CAs and JWT signing keys, the broker's own
//! TLS identity and the admin CA, all sealed under the KEK in the store.
//!
//! [`KeyRing::load_or_create`] runs once at start-up: the first start
//! generates everything, every later start loads the same keys (same CA, same
//! `kid`).

mod ca;
mod jwt_key;
mod kek;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use thiserror::Error;

pub use ca::{CertificateAuthority, pem_encode, random_serial};
pub use jwt_key::JwtSigningKey;
pub use kek::{Kek, write_private_file};
pub use tls::{AdminFiles, ServerTls};

use crate::config::{Config, Environment};
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
    /// Writing a file under the data directory failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One environment's signing material.
#[derive(Debug)]
pub struct EnvironmentKeys {
    /// Name and trust domain.
    pub env: Environment,
    /// X.509-SVID CA.
    pub ca: CertificateAuthority,
    /// JWT-SVID signing key.
    pub jwt: JwtSigningKey,
}

/// Every key the broker uses.
#[derive(Debug)]
pub struct KeyRing {
    envs: BTreeMap<EnvName, Arc<EnvironmentKeys>>,
    admin_ca: CertificateAuthority,
    server_tls: ServerTls,
    audit_signer: Arc<JwtSigningKey>,
}

impl KeyRing {
    /// Loads all keys from `store`, generating (and storing) what is missing,
    /// then issues the broker's TLS certificate and writes `broker-ca.pem` and
    /// the admin credentials under the data directory.
    pub async fn load_or_create(
        config: &Config,
        store: &dyn Store,
        kek: &Kek,
    ) -> Result<Self, KeyError> {
        let mut envs = BTreeMap::new();
        for env in config
            .environments()
            .map_err(|e| KeyError::BadKey(e.to_string()))?
        {
            let ca = load_or_create_ca(
                store,
                kek,
                env.name.as_str(),
                KeyKind::X509Ca,
                &format!("credbroker {} SPIFFE CA", env.name),
                Some(&format!("spiffe://{}", env.trust_domain)),
                config,
            )
            .await?;
            let jwt = load_or_create_jwt_key(store, kek, env.name.as_str()).await?;
            tracing::info!(env = %env.name, trust_domain = %env.trust_domain, kid = jwt.kid(), "environment keys ready");
            envs.insert(env.name.clone(), Arc::new(EnvironmentKeys { env, ca, jwt }));
        }
        let tls_ca = load_or_create_ca(
            store,
            kek,
            "",
            KeyKind::TlsCa,
            "credbroker broker TLS CA",
            None,
            config,
        )
        .await?;
        let admin_ca = load_or_create_ca(
            store,
            kek,
            "",
            KeyKind::AdminCa,
            "credbroker admin CA",
            None,
            config,
        )
        .await?;
        let audit_signer =
            Arc::new(load_or_create_signing_key(store, kek, "", KeyKind::AuditSigning).await?);
        let server_tls = ServerTls::issue(&tls_ca, &config.tls_names)?;
        tls::write_broker_ca(&config.data_dir, &tls_ca)?;
        AdminFiles::ensure(&config.data_dir, &admin_ca)?;
        Ok(Self {
            envs,
            admin_ca,
            server_tls,
            audit_signer,
        })
    }

    /// The key signing the audit log's checkpoints.
    pub fn audit_signer(&self) -> &Arc<JwtSigningKey> {
        &self.audit_signer
    }

    /// The keys of `env`, if it is served.
    pub fn env(&self, env: &EnvName) -> Option<&Arc<EnvironmentKeys>> {
        self.envs.get(env)
    }

    /// The environment whose trust domain is `td`.
    pub fn env_for_trust_domain(&self, td: &TrustDomain) -> Option<&Arc<EnvironmentKeys>> {
        self.envs.values().find(|k| &k.env.trust_domain == td)
    }

    /// All environments.
    pub fn envs(&self) -> impl Iterator<Item = &Arc<EnvironmentKeys>> {
        self.envs.values()
    }

    /// The admin CA.
    pub fn admin_ca(&self) -> &CertificateAuthority {
        &self.admin_ca
    }

    /// The broker's TLS certificate and key.
    pub fn server_tls(&self) -> &ServerTls {
        &self.server_tls
    }

    /// Every CA whose certificates the gRPC listener accepts as client
    /// certificates: each environment's CA and the admin CA.
    pub fn client_ca_certs(&self) -> Vec<CertificateDer<'static>> {
        self.envs
            .values()
            .map(|k| k.ca.cert_der().clone())
            .chain(std::iter::once(self.admin_ca.cert_der().clone()))
            .collect()
    }
}

fn seal_label(env: &str, kind: KeyKind) -> String {
    format!("credbroker/{env}/{}", kind.as_str())
}

async fn load_or_create_ca(
    store: &dyn Store,
    kek: &Kek,
    env: &str,
    kind: KeyKind,
    common_name: &str,
    uri_san: Option<&str>,
    config: &Config,
) -> Result<CertificateAuthority, KeyError> {
    let label = seal_label(env, kind);
    if let Some(record) = store.latest_key(env, kind).await? {
        let cert = record
            .cert_der
            .ok_or_else(|| KeyError::BadCertificate(format!("{label} has no certificate")))?;
        let pkcs8 = kek.open(&label, &record.sealed_key)?;
        return CertificateAuthority::from_parts(CertificateDer::from(cert), &pkcs8);
    }
    let (ca, pkcs8) = CertificateAuthority::generate(common_name, uri_san, config.ttl.ca)?;
    store
        .insert_key(&KeyRecord {
            env: env.to_owned(),
            kind,
            created_at: unix_now(),
            cert_der: Some(ca.cert_der().to_vec()),
            sealed_key: kek.seal(&label, &pkcs8)?,
        })
        .await?;
    tracing::info!(key = %label, "generated CA");
    Ok(ca)
}

async fn load_or_create_jwt_key(
    store: &dyn Store,
    kek: &Kek,
    env: &str,
) -> Result<JwtSigningKey, KeyError> {
    load_or_create_signing_key(store, kek, env, KeyKind::JwtSigning).await
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
    store
        .insert_key(&KeyRecord {
            env: env.to_owned(),
            kind,
            created_at: unix_now(),
            cert_der: None,
            sealed_key: kek.seal(&label, &pkcs8)?,
        })
        .await?;
    tracing::info!(key = %label, kid = key.kid(), "generated signing key");
    Ok(key)
}
