//! The sidecar agent: attest, write credentials to files, keep them fresh.

mod files;
mod health;
pub mod metrics;

use std::sync::Arc;

pub use files::{OutputDir, audience_file_name, write_atomic};

use crate::client::Client;
use crate::error::ClientError;
use crate::evidence::Evidence;
use crate::node::{NodeAgent, NodeConfig};
use crate::request::JwtRequest;
use crate::source::{CredentialSource, Credentials, RefreshPolicy, SourceConfig, SourceState};
use crate::svid::{JwtSvid, TrustBundle, X509Svid};
use crate::uds::{AllowedPeers, SocketOptions};
use crate::workload_api::WorkloadApi;

/// What the agent needs to run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Broker URL, or several replicas separated by commas (used in
    /// order, failing over as [`Brokers`](crate::Brokers) describes).
    pub broker: String,
    /// PEM bundle trusted for the broker's TLS certificate.
    pub bundle_pem: Vec<u8>,
    /// Attestation evidence.
    pub evidence: Evidence,
    /// Where to write.
    pub out_dir: OutputDir,
    /// One JWT is kept per audience.
    pub jwt_audiences: Vec<String>,
    /// Serve the SPIFFE Workload API on this Unix socket.
    pub workload_api_socket: Option<std::path::PathBuf>,
    /// Mode and group of that socket.
    pub socket_options: SocketOptions,
    /// Callers admitted on that socket (everyone who can open it if empty).
    pub allowed_peers: AllowedPeers,
    /// Serve `GET /healthz` (200 with valid credentials, 503 without) here.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Shell command run (`sh -c`) after each new X.509-SVID is written.
    pub on_rotate: Option<String>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A broker call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing output failed.
    #[error("cannot write credentials: {0}")]
    Io(#[from] std::io::Error),
    /// The Workload API socket could not be created or stopped serving.
    #[error("Workload API socket: {0}")]
    Socket(std::io::Error),
    /// The `--health-addr` endpoint could not be bound.
    #[error("cannot serve --health-addr {addr}: {source}")]
    Health {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// No valid credentials can be had any more (revoked, or expired with
    /// evidence that cannot be reused); the files were removed.
    #[error("{0}; credentials removed")]
    Unavailable(String),
}

/// Credentials currently held.
struct Held {
    svid: X509Svid,
    bundle: TrustBundle,
    jwts: Vec<JwtSvid>,
}

fn jwt_requests(audiences: &[String]) -> Vec<JwtRequest> {
    audiences.iter().map(JwtRequest::audience).collect()
}

async fn attest(config: &AgentConfig) -> Result<(Client, Held), AgentError> {
    let client = Client::connect(&config.broker, &config.bundle_pem).await?;
    let attested = client
        .attest(&config.evidence, &jwt_requests(&config.jwt_audiences))
        .await?;
    tracing::info!(
        spiffe_id = %attested.svid.spiffe_id,
        serial = %attested.svid.serial,
        jwts = attested.jwts.len(),
        "attested"
    );
    Ok((
        client,
        Held {
            svid: attested.svid,
            bundle: attested.bundle,
            jwts: attested.jwts,
        },
    ))
}

fn write(config: &AgentConfig, held: &Held) -> std::io::Result<()> {
    config.out_dir.write_svid(&held.svid, &held.bundle)?;
    for jwt in &held.jwts {
        config.out_dir.write_jwt(jwt)?;
    }
    Ok(())
}

/// Attests, writes every file once and returns.
pub async fn run_once(config: &AgentConfig) -> Result<(), AgentError> {
    let (_, held) = attest(config).await?;
    write(config, &held)?;
    Ok(())
}

/// Keeps the files fresh with a [`CredentialSource`] until it gives up:
/// every new SVID or JWT is written as soon as the source publishes it
/// (renewed at about half its lifetime, retried with backoff during
/// outages, re-fetched when revoked). When the source has no valid
/// credentials — expired during an outage, or revoked — the files are
/// removed rather than left to be used; if the source cannot recover
/// (revoked SVID, spent evidence) the agent exits with the reason.
pub async fn run(config: &AgentConfig) -> Result<(), AgentError> {
    run_until(config, std::future::pending()).await
}

/// [`run`], until `shutdown` completes (SIGTERM): then the Workload API
/// socket is removed and `Ok` returned. The credential files stay: they
/// are valid until they expire, and the next start replaces them.
pub async fn run_until(
    config: &AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let source = CredentialSource::start(SourceConfig {
        broker: config.broker.clone(),
        bundle_pem: config.bundle_pem.clone(),
        evidence: config.evidence.clone(),
        jwt_audiences: config.jwt_audiences.clone(),
        policy: RefreshPolicy::default(),
    });
    // Bound here, so a bad path (say, a file that is not a socket) stops
    // the agent with its name before anything is served.
    let listener = match &config.workload_api_socket {
        Some(path) => {
            Some(crate::uds::bind(path, &config.socket_options).map_err(AgentError::Socket)?)
        }
        None => None,
    };
    if let Some(addr) = config.health_addr {
        serve_health(addr, source.watch()).await?;
    }
    // Boxed so that on shutdown it can be dropped, which closes the
    // listener and removes the socket file, before saying so.
    let mut work = Box::pin(async {
        let api = match listener {
            None => None,
            Some(listener) => {
                // The Workload API needs the broker too: if it is away,
                // wait (the source logs each retry) rather than exit.
                let client = match Client::connect(&config.broker, &config.bundle_pem).await {
                    Ok(client) => client,
                    Err(e) => {
                        tracing::warn!(
                            "the Workload API waits for the broker ({e}); the socket answers once it is back"
                        );
                        first_credentials(&source).await?;
                        Client::connect(&config.broker, &config.bundle_pem).await?
                    }
                };
                let api =
                    WorkloadApi::new(&source, client).allow_peers(config.allowed_peers.clone());
                Some(api.serve_listener(listener, std::future::pending()))
            }
        };
        let files = keep_files(config, &source);
        match api {
            None => files.await,
            Some(api) => tokio::select! {
                result = files => result,
                // The socket server only returns on failure: without it the
                // agent is not doing its job, so stop rather than linger.
                stopped = api => Err(AgentError::Socket(match stopped {
                    Ok(()) => std::io::Error::other("the Workload API server stopped"),
                    Err(e) => e,
                })),
            },
        }
    });
    tokio::select! {
        result = &mut work => result,
        () = shutdown => {
            drop(work);
            match &config.workload_api_socket {
                Some(socket) => tracing::info!(socket = %socket.display(), "stopping on signal; removed the Workload API socket"),
                None => tracing::info!("stopping on signal"),
            }
            Ok(())
        }
    }
}

/// Waits until the source holds credentials, or fails with why it gave up.
async fn first_credentials(source: &CredentialSource) -> Result<(), AgentError> {
    let mut state = source.watch();
    loop {
        match &*state.borrow_and_update() {
            SourceState::Ready(_) => return Ok(()),
            SourceState::Unavailable {
                reason,
                retrying: false,
            } => return Err(AgentError::Unavailable(reason.clone())),
            _ => {}
        }
        if state.changed().await.is_err() {
            return Err(AgentError::Unavailable(
                "the credential source stopped".into(),
            ));
        }
    }
}

/// Binds the health endpoint and says where, so an operator (or a probe
/// configured with port 0) knows what to ask.
async fn serve_health(
    addr: std::net::SocketAddr,
    state: tokio::sync::watch::Receiver<SourceState>,
) -> Result<(), AgentError> {
    let health = |source| AgentError::Health { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(health)?;
    let bound = listener.local_addr().map_err(health)?;
    tracing::info!(addr = %bound, "serving GET /healthz on http://{bound}/healthz");
    tokio::spawn(health::serve(listener, state));
    Ok(())
}

/// Writes every change the source publishes until it gives up.
async fn keep_files(config: &AgentConfig, source: &CredentialSource) -> Result<(), AgentError> {
    let mut state = source.watch();
    let mut written: Option<Arc<Credentials>> = None;
    loop {
        let current = state.borrow_and_update().clone();
        match current {
            SourceState::Starting => {}
            SourceState::Ready(creds) => {
                let rotated = written
                    .as_ref()
                    .is_some_and(|w| w.svid.serial != creds.svid.serial);
                write_changes(config, written.as_deref(), &creds)?;
                written = Some(creds);
                if rotated && let Some(command) = &config.on_rotate {
                    run_hook(command).await;
                }
            }
            SourceState::Unavailable { reason, retrying } => {
                if written.take().is_some() {
                    config.out_dir.remove_credentials()?;
                    tracing::error!(%reason, "no valid credentials; removed the files");
                }
                if !retrying {
                    return Err(AgentError::Unavailable(reason));
                }
            }
        }
        if state.changed().await.is_err() {
            return Err(AgentError::Unavailable(
                "the credential source stopped".into(),
            ));
        }
    }
}

/// Node mode: attests the host to its node identity, then serves the
/// SPIFFE Workload API on `socket` to every local workload registered with
/// this node as parent, until the node's credentials cannot be had any more
/// (revoked, or expired with evidence that cannot be reused).
pub async fn run_node(
    config: NodeConfig,
    socket: &std::path::Path,
    socket_options: &SocketOptions,
    health_addr: Option<std::net::SocketAddr>,
) -> Result<(), AgentError> {
    run_node_until(
        config,
        socket,
        socket_options,
        health_addr,
        std::future::pending(),
    )
    .await
}

/// [`run_node`], until `shutdown` completes (SIGTERM): then the server
/// stops, the socket is removed and `Ok` returned.
pub async fn run_node_until(
    config: NodeConfig,
    socket: &std::path::Path,
    socket_options: &SocketOptions,
    health_addr: Option<std::net::SocketAddr>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    // Bound first, so a bad path stops the agent before it attests.
    let listener = crate::uds::bind(socket, socket_options).map_err(AgentError::Socket)?;
    let mut shutdown = std::pin::pin!(shutdown);
    // Attesting waits for an unreachable broker: a signal meanwhile still
    // stops the agent cleanly (the listener, dropped, removes the socket).
    let agent = tokio::select! {
        agent = NodeAgent::start(config) => agent?,
        () = &mut shutdown => {
            drop(listener);
            tracing::info!(socket = %socket.display(), "stopping on signal; removed the Workload API socket");
            return Ok(());
        }
    };
    if let Some(addr) = health_addr {
        serve_health(addr, agent.node_source().watch()).await?;
    }
    let mut state = agent.node_source().watch();
    let gone = async move {
        loop {
            if let SourceState::Unavailable {
                reason,
                retrying: false,
            } = &*state.borrow_and_update()
            {
                return reason.clone();
            }
            if state.changed().await.is_err() {
                return "the node's credential source stopped".to_owned();
            }
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = agent.serve(listener, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(serve);
    tokio::select! {
        served = &mut serve => served.map_err(AgentError::Socket),
        reason = gone => {
            let _ = stop_tx.send(());
            let _ = serve.await;
            Err(AgentError::Unavailable(reason))
        }
        () = &mut shutdown => {
            let _ = stop_tx.send(());
            let _ = serve.await;
            tracing::info!(socket = %socket.display(), "stopping on signal; removed the Workload API socket");
            Ok(())
        }
    }
}

/// Runs the rotation hook; its failure is logged, never fatal.
async fn run_hook(command: &str) {
    match tokio::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .await
    {
        Ok(status) if status.success() => tracing::info!(command, "rotation hook ran"),
        Ok(status) => tracing::warn!(command, %status, "rotation hook failed"),
        Err(e) => tracing::warn!(command, error = %e, "rotation hook could not start"),
    }
}

/// Writes what differs between `before` and `now`, and removes JWT files
/// of audiences that were withdrawn.
fn write_changes(
    config: &AgentConfig,
    before: Option<&Credentials>,
    now: &Credentials,
) -> std::io::Result<()> {
    if before.is_none_or(|b| b.svid.serial != now.svid.serial) {
        config.out_dir.write_svid(&now.svid, &now.bundle)?;
        tracing::info!(serial = %now.svid.serial, expires_in = ?now.svid.remaining(), "wrote X.509-SVID");
    }
    for jwt in now.jwts.values() {
        let unchanged = before
            .and_then(|b| b.jwts.values().find(|j| j.jti == jwt.jti))
            .is_some();
        if !unchanged {
            config.out_dir.write_jwt(jwt)?;
            tracing::info!(jti = %jwt.jti, audiences = ?jwt.audiences, "wrote JWT");
        }
    }
    if let Some(before) = before {
        for (audience, jwt) in &before.jwts {
            if !now.jwts.contains_key(audience) {
                config.out_dir.remove_jwt(jwt)?;
            }
        }
    }
    Ok(())
}
