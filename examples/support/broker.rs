//! The broker under test, running in this process, and the runtimes that
//! stand for one server core and one client core.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use credbroker::RunningBroker;
use tempfile::TempDir;
use tokio::runtime::{Builder, Runtime};

/// Longest the broker may take to stop.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a runtime may wait for its remaining tasks when shut down.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A multi-thread runtime with one worker thread, named `name`.
///
/// One worker thread stands for one core: the broker gets one such runtime
/// and the example's client side another.
pub fn runtime(name: &str) -> Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("building the {name} runtime"))
}

/// A real broker running in this process: SQLite store in a temporary
/// directory, gRPC over TLS on `127.0.0.1:0`, on its own single-worker
/// runtime (named `broker`).
///
/// Start it with [`InProcessBroker::start`], drive it with
/// [`InProcessBroker::run_client`], and end with [`InProcessBroker::stop`].
pub struct InProcessBroker {
    // Fields drop in this order: broker, then its runtime, then its files.
    running: RunningBroker,
    runtime: Runtime,
    data_dir: TempDir,
}

impl InProcessBroker {
    /// Starts the broker in a fresh temporary data directory and reports its
    /// gRPC address on stderr.
    pub fn start() -> Result<Self> {
        let data_dir = tempfile::tempdir().context("creating a temporary data directory")?;
        let runtime = runtime("broker")?;
        let config = credbroker::Config {
            data_dir: data_dir.path().to_path_buf(),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // All load comes from one address: per-peer limits would
            // measure the limiter, not the broker.
            rate_limits: credbroker::config::RateLimitsConfig {
                attest_per_second_per_peer: 0,
                sign_per_second_per_peer: 0,
                sign_per_second_per_identity: 0,
            },
            // One identity opens every WatchRevocations stream of the
            // revocation benchmark: the per-caller bound would refuse all
            // but the first 16.
            connections: credbroker::config::ConnectionsConfig {
                revocation_streams_per_caller: 1 << 20,
                ..Default::default()
            },
            ..credbroker::Config::default()
        };
        let running = runtime
            .block_on(credbroker::start(config))
            .context("starting the broker")?;
        eprintln!("broker listening on {} (gRPC)", running.grpc_addr);
        Ok(Self {
            running,
            runtime,
            data_dir,
        })
    }

    /// Runs an example's client side to completion on `client_rt`, then
    /// shuts `client_rt` down.
    ///
    /// `client` gets the broker's [`Endpoint`] and runs as a task, so on the
    /// client runtime's worker thread rather than on this thread. `what`
    /// names that task if it panics. Shutting the client runtime down closes
    /// the client connections, which lets the broker stop at once afterwards.
    pub fn run_client<T, F, Fut>(&self, client_rt: Runtime, what: &str, client: F) -> Result<T>
    where
        F: FnOnce(Endpoint) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let grpc_addr = self.running.grpc_addr;
        let data_dir = self.data_dir.path().to_path_buf();
        let result = client_rt.block_on(async move {
            tokio::spawn(async move {
                let endpoint = Endpoint::read(grpc_addr, data_dir).await?;
                client(endpoint).await
            })
            .await
            .with_context(|| format!("the {what} task panicked"))?
        });
        client_rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
        result
    }

    /// Stops the broker (waiting at most 10 s) and its runtime, deletes its
    /// data directory, then returns `outcome`, the example's own result.
    ///
    /// An error in `outcome` comes first. Otherwise a broker that did not
    /// stop cleanly is an error, and a clean stop is reported on stderr.
    pub fn stop<T>(self, outcome: Result<T>) -> Result<T> {
        let Self {
            running,
            runtime,
            data_dir,
        } = self;
        let stopped = runtime
            .block_on(async { tokio::time::timeout(SHUTDOWN_TIMEOUT, running.shutdown()).await });
        runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
        drop(data_dir);

        let value = outcome?;
        match stopped {
            Ok(Ok(())) => {
                eprintln!("broker stopped cleanly");
                Ok(value)
            }
            Ok(Err(e)) => Err(e).context("stopping the broker"),
            Err(_) => bail!(
                "the broker did not stop within {}s",
                SHUTDOWN_TIMEOUT.as_secs()
            ),
        }
    }
}

/// What a client needs to reach the in-process broker.
#[derive(Debug)]
pub struct Endpoint {
    /// The gRPC URL, `https://127.0.0.1:<port>`.
    pub url: String,
    /// `broker-ca.pem`: the CA bundle the broker's certificate chains to.
    pub bundle: Vec<u8>,
    /// The broker's data directory, which holds the admin client certificate
    /// (see [`super::admin_client`]).
    pub(super) data_dir: PathBuf,
}

impl Endpoint {
    /// The endpoint of a broker listening on `grpc_addr` with its files in
    /// `data_dir`; reads the CA bundle from there.
    async fn read(grpc_addr: SocketAddr, data_dir: PathBuf) -> Result<Self> {
        let url = format!("https://127.0.0.1:{}", grpc_addr.port());
        let bundle = tokio::fs::read(data_dir.join("broker-ca.pem"))
            .await
            .context("reading broker-ca.pem")?;
        Ok(Self {
            url,
            bundle,
            data_dir,
        })
    }
}
