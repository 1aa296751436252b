//! The broker's shared state: configuration, keys, identities and the
//! attestors, built once at start-up and shared by every service.

use std::sync::Arc;

use crate::api::peer::CallerCache;
use crate::attest::AttestorRegistry;
use crate::audit::checkpoint::CheckpointFile;
use crate::audit::{AuditLog, AuditSeal, ChainKey};
use crate::config::{Config, Environment};
use crate::data_dir::{DataDirLock, LockError};
use crate::keys::{Kek, KeyError, KeyRing};
use crate::metrics::Metrics;
use crate::model::unix_now;
use crate::policy::{IdentityRegistry, TtlLimits};
use crate::replica::Leadership;
use crate::revocation::RevocationList;
use crate::revocation::crl::CrlCache;
use crate::store::{self, KeyKind, Store, StoreError};

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Keys could not be loaded or created.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Files or sockets.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another broker runs on the data directory.
    #[error(transparent)]
    Locked(#[from] LockError),
    /// The store holds sealed keys but no KEK is configured or found.
    #[error(
        "no key-encryption key: the store {store} holds keys sealed under one, but neither kek_file \
         (CREDBROKER_KEK_FILE) is set nor {generated} exists; set kek_file or CREDBROKER_KEK_FILE to \
         the KEK this broker was first started with (nothing was changed)"
    )]
    MissingKek {
        /// The store URL.
        store: String,
        /// Where a generated KEK would have been.
        generated: std::path::PathBuf,
    },
    /// A stored key does not open with the KEK in use.
    #[error(
        "{source}; the KEK in use is {kek}: set kek_file or CREDBROKER_KEK_FILE to the one this \
         store was created with"
    )]
    WrongKek {
        /// The KEK file used.
        kek: std::path::PathBuf,
        /// What failed.
        source: KeyError,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Everything the services share.
#[derive(Debug)]
pub struct Broker {
    /// The configuration it started with.
    pub config: Config,
    /// Validated environments.
    pub envs: Vec<Environment>,
    /// TTL bounds.
    pub limits: TtlLimits,
    /// Keys and CAs, as published now.
    pub keys: Arc<KeyRing>,
    /// Identities.
    pub registry: IdentityRegistry,
    /// Every attestor: join tokens plus the configured `[[attestors]]`.
    pub attestors: AttestorRegistry,
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Client certificates already verified.
    pub callers: CallerCache,
    /// The durable audit log.
    pub audit: AuditLog,
    /// Live revocations.
    pub revocations: RevocationList,
    /// CRLs per environment.
    pub crls: CrlCache,
    /// Prometheus metrics (`/metrics`).
    pub metrics: Arc<Metrics>,
    /// Whether this broker leads those sharing its store.
    pub leadership: Leadership,
    /// The change feed's position before the caches were loaded: following
    /// it from here misses nothing (see [`crate::replica::follow`]).
    pub feed_start: i64,
    /// Web inventory login links and sessions.
    pub ui: crate::ui::UiSessions,
    /// Anomaly detection and recent findings.
    pub anomalies: crate::anomaly::Anomalies,
    /// Held while this broker runs on an embedded (SQLite) store.
    _data_dir_lock: Option<DataDirLock>,
}

impl Broker {
    /// Opens the store, loads or creates keys and loads identities.
    pub async fn open(config: Config) -> Result<Arc<Self>, StartError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::Io {
            what: format!("creating data directory {}", config.data_dir.display()),
            source,
        })?;
        // An embedded store belongs to one broker; PostgreSQL serves many.
        let data_dir_lock = if config.store_url().starts_with("sqlite:") {
            Some(DataDirLock::acquire(&config.data_dir)?)
        } else {
            None
        };
        let store = store::open(&config.store_url()).await?;
        let generated = config.data_dir.join("kek");
        // A KEK is generated only for a store that has no keys yet: after a
        // restart without the configured kek_file, a fresh KEK could open
        // nothing, and would linger as a decoy next to the data.
        if config.kek_file.is_none()
            && !generated.exists()
            && store.latest_key("", KeyKind::TlsCa).await?.is_some()
        {
            return Err(StartError::MissingKek {
                store: config.store_url(),
                generated,
            });
        }
        // Before any cache is loaded: a change committed by another broker
        // while loading is then applied again, never missed.
        let feed_start = store.latest_change().await?;
        // Brokers starting together on an empty store create keys one at a
        // time: the second finds the first's.
        let bootstrap = store.bootstrap_lock().await?;
        let kek = Arc::new(Kek::load_or_generate(
            config.kek_file.as_deref(),
            &config.data_dir,
        )?);
        let keys = KeyRing::load_or_create(&config, Arc::clone(&store), Arc::clone(&kek))
            .await
            .map_err(|e| match e {
                KeyError::Unseal(_) => StartError::WrongKek {
                    kek: config.kek_file.clone().unwrap_or(generated),
                    source: e,
                },
                e => e.into(),
            })?;
        drop(bootstrap);
        let registry = IdentityRegistry::load(Arc::clone(&store)).await?;
        let envs = config.environments()?;
        let metrics = Arc::new(Metrics::new(
            &envs.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
        ));
        let audit = AuditLog::start(
            Arc::clone(&store),
            Arc::clone(&metrics),
            AuditSeal {
                chain: ChainKey::new(kek.audit_chain_key()),
                signer: Arc::clone(keys.audit_signer()),
                checkpoints: CheckpointFile::new(config.audit_checkpoint_file()),
            },
        )
        .await?;
        let attestors = AttestorRegistry::build(&config.attestors, Arc::clone(&store)).await?;
        let revocations = RevocationList::default();
        revocations.load(store.live_revocations(unix_now()).await?);
        revocations.saw_seq(store.latest_revocation_seq().await?);
        let callers = CallerCache::default();
        callers.operators.load(store.list_operators().await?);
        let anomalies = crate::anomaly::Anomalies::new(&config.anomalies);
        Ok(Arc::new(Self {
            envs,
            limits: TtlLimits::from(&config.ttl),
            keys: Arc::new(keys),
            registry,
            attestors,
            store,
            config,
            callers,
            audit,
            revocations,
            crls: CrlCache::default(),
            metrics,
            leadership: Leadership::default(),
            feed_start,
            ui: crate::ui::UiSessions::default(),
            anomalies,
            _data_dir_lock: data_dir_lock,
        }))
    }

    /// The OIDC issuer URL of `env`: `{public_url}/{env}`.
    pub fn issuer(&self, env: &str) -> String {
        format!("{}/{env}", self.config.public_url())
    }
}
