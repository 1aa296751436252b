//! Reaching a running broker the way an operator does: its gRPC URL, the CA
//! its TLS certificate chains to (`broker-ca.pem`), and the admin client
//! certificate (`admin/admin.pem`, `admin/admin.key`), the last two from the
//! data directory `credbroker serve` writes. The examples use the Admin API
//! to register their identities and create join tokens, as
//! `credbroker identity create` and `credbroker token create` would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use credbroker::keys::AdminFiles;
use credbroker_client::{BrokerTls, Brokers};
use credbroker_proto::v1::admin_client::AdminClient;
use credbroker_proto::v1::{CreateIdentityRequest, CreateJoinTokenRequest, IdentityRef};
use tonic::Code;
use tonic::transport::Channel;

/// The environment the examples' identities live in (served by default).
pub const ENV: &str = "dev";
/// Owner recorded with every identity the examples register.
pub const OWNER: &str = "examples";
/// Longest connecting to the broker or one admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Command-line arguments naming the broker, shared by the examples.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// gRPC URL of the broker.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    pub broker: String,
    /// The broker's data directory, holding `broker-ca.pem` and the admin
    /// client certificate in `admin/`.
    #[arg(long, default_value = "./credbroker-data")]
    pub data_dir: PathBuf,
}

impl BrokerArgs {
    /// Reads the files the arguments point at.
    pub fn load(&self) -> Result<Broker> {
        Broker::from_data_dir(self.broker.clone(), &self.data_dir)
    }
}

/// A broker and the files needed to talk to it as an operator.
pub struct Broker {
    /// gRPC URL, e.g. `https://127.0.0.1:7443`.
    pub url: String,
    /// `broker-ca.pem`: what workloads trust the broker's TLS certificate by.
    pub bundle_pem: Vec<u8>,
    admin_cert_pem: Vec<u8>,
    admin_key_pem: Vec<u8>,
}

impl Broker {
    /// The broker at `url` whose data directory is `data_dir`.
    pub fn from_data_dir(url: String, data_dir: &Path) -> Result<Self> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| {
                format!(
                    "reading {} (is --data-dir the broker's data directory?)",
                    path.display()
                )
            })
        };
        let admin = AdminFiles::locate(data_dir);
        Ok(Self {
            url,
            bundle_pem: read(&data_dir.join("broker-ca.pem"))?,
            admin_cert_pem: read(&admin.cert)?,
            admin_key_pem: read(&admin.key)?,
        })
    }

    /// An Admin API client authenticated with the admin client certificate,
    /// connected the way the `credbroker` CLI connects.
    pub async fn admin(&self) -> Result<Admin> {
        let tls = BrokerTls::new(&self.bundle_pem)
            .and_then(|tls| tls.with_client_pem(&self.admin_cert_pem, &self.admin_key_pem))
            .context("admin TLS configuration")?;
        let channel = Brokers::new(std::slice::from_ref(&self.url))
            .with_context(|| format!("broker URL {:?}", self.url))?
            .connect_timeout(ADMIN_TIMEOUT)
            .rpc_timeout(ADMIN_TIMEOUT)
            .connect_first(&tls)
            .await
            .with_context(|| format!("connecting to the broker at {}", self.url))?;
        Ok(Admin(AdminClient::new(channel)))
    }
}

/// An identity an example registers in [`ENV`] with owner [`OWNER`].
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    /// Name within the environment; the SPIFFE ID ends in it.
    pub name: &'a str,
    /// What the identity is for (recorded with it).
    pub purpose: &'a str,
    /// JWT audiences it may ask for.
    pub audiences: &'a [&'a str],
    /// Lifetime of its X.509-SVIDs; `None` takes the broker's default.
    pub x509_ttl: Option<Duration>,
}

/// An authenticated Admin API connection.
pub struct Admin(AdminClient<Channel>);

impl Admin {
    /// The generated Admin client, for calls without a helper here.
    pub fn grpc(&mut self) -> &mut AdminClient<Channel> {
        &mut self.0
    }

    /// Another handle on the same connection, for calls in flight at once.
    pub fn grpc_clone(&self) -> AdminClient<Channel> {
        self.0.clone()
    }

    /// Registers `identity`; one that is already registered (from an
    /// earlier run) is reused as it is, and says so.
    pub async fn register(&mut self, identity: &Registration<'_>) -> Result<()> {
        let request = CreateIdentityRequest {
            env: ENV.into(),
            name: identity.name.into(),
            owner: OWNER.into(),
            purpose: identity.purpose.into(),
            audiences: identity.audiences.iter().map(|&a| a.to_owned()).collect(),
            x509_ttl_seconds: identity
                .x509_ttl
                .map_or(0, |ttl| u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        match self.0.create_identity(request).await {
            Ok(created) => {
                let created = created.into_inner();
                println!("registered {}", created.spiffe_id);
                Ok(())
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                println!(
                    "{ENV}/{} is already registered (earlier run); reusing it as it is",
                    identity.name
                );
                Ok(())
            }
            Err(status) => Err(status).with_context(|| {
                format!("registering {ENV}/{} through the Admin API", identity.name)
            }),
        }
    }

    /// A single-use join token for `name` with the broker's default
    /// lifetime (10 minutes).
    pub async fn join_token(&mut self, name: &str) -> Result<String> {
        let request = CreateJoinTokenRequest {
            identity: Some(IdentityRef {
                env: ENV.into(),
                name: name.into(),
            }),
            ttl_seconds: 0,
            uses: 1,
        };
        let response = self
            .0
            .create_join_token(request)
            .await
            .with_context(|| format!("creating a join token for {ENV}/{name}"))?;
        Ok(response.into_inner().token)
    }
}
