//! The broker under test: the real `credbroker` binary in a temporary data
//! directory, on free loopback ports, optionally with a descriptor limit,
//! and readings of its memory and descriptors from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use credbroker_client::{Client, Evidence, WorkloadClient};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::broker::{Admin, Broker, Registration};
use crate::procfs::ProcFiles;

/// Longest the broker may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Identity the soak jobs issue to.
pub const IDENTITY: &str = "soak";
/// Its JWT audience.
pub const AUDIENCE: &str = "soak";

/// The `credbroker` binary: `explicit`, else `$CREDBROKER_BIN_DIR`, else
/// next to this example's directory (`target/<profile>/`).
pub fn broker_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match (explicit, std::env::var_os("CREDBROKER_BIN_DIR")) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(dir)) => PathBuf::from(dir).join("credbroker"),
        (None, None) => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("this executable has no grandparent directory")?
            .join("credbroker"),
    };
    ensure!(
        path.is_file(),
        "{} not found; build it first (`cargo build --release -p credbroker`) or pass --broker-bin",
        path.display()
    );
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running broker process; killed when dropped.
pub struct BrokerProcess {
    child: Child,
    /// Its data directory (database, admin certificate, `broker-ca.pem`).
    pub data_dir: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The HTTP port.
    pub http_port: u16,
    /// Where its log goes.
    pub log: PathBuf,
    proc: Option<ProcFiles>,
    launch: Launch,
    _dir: TempDir,
}

/// How the process was started, to start it again the same way.
struct Launch {
    bin: PathBuf,
    config: PathBuf,
    nofile: Option<u64>,
}

impl Launch {
    fn spawn(&self, log: &Path) -> Result<Child> {
        let mut command = match self.nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env_remove("CREDBROKER_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?,
            )
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))
    }
}

impl BrokerProcess {
    /// Starts `bin` with `extra` TOML, per-peer rate limits off (everything
    /// comes from one address) and, with `nofile`, that descriptor limit
    /// (soft and hard, via `prlimit`); waits for `/readyz`.
    pub async fn start(bin: &Path, extra: &str, nofile: Option<u64>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let (grpc_port, http_port) = (free_port()?, free_port()?);
        let toml = format!(
            "data_dir = {data_dir:?}\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\n\
             http_listen = \"127.0.0.1:{http_port}\"\n{extra}\n\
             [rate_limits]\nattest_per_second_per_peer = 0\nsign_per_second_per_peer = 0\n"
        );
        let config = dir.path().join("credbroker.toml");
        std::fs::write(&config, toml)?;
        let log = dir.path().join("broker.log");
        let launch = Launch {
            bin: bin.to_path_buf(),
            config,
            nofile,
        };
        let child = launch.spawn(&log)?;
        let mut broker = Self {
            proc: ProcFiles::open(child.id()),
            child,
            data_dir,
            url: format!("https://127.0.0.1:{grpc_port}"),
            http_port,
            log,
            launch,
            _dir: dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Stops the broker as an operator would (SIGTERM: it finishes what it
    /// holds and exits), then starts it again on the same configuration and
    /// data, and waits until it is ready.
    pub async fn restart(&mut self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        let began = Instant::now();
        while self.child.try_wait()?.is_none() {
            ensure!(
                began.elapsed() < READY_TIMEOUT,
                "the broker did not stop within {READY_TIMEOUT:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = self.launch.spawn(&self.log)?;
        self.proc = ProcFiles::open(self.child.id());
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let began = Instant::now();
        while http_status(self.http_port, "/readyz", Duration::from_secs(2))
            .await
            .ok()
            != Some(200)
        {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the broker exited with {status}; log: {}",
                    self.log.display()
                );
            }
            ensure!(
                began.elapsed() < READY_TIMEOUT,
                "the broker did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, KiB.
    pub fn rss_kb(&mut self) -> Option<u64> {
        self.proc.as_mut()?.memory_kb().0
    }

    /// Open file descriptors.
    pub fn fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
                .ok()?
                .count(),
        )
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The operator's view: URL, CA and admin certificate.
    pub fn operator(&self) -> Result<Broker> {
        Broker::from_data_dir(self.url.clone(), &self.data_dir)
    }

    /// Registers [`IDENTITY`] and returns an admin connection.
    pub async fn admin(&self) -> Result<Admin> {
        let mut admin = self.operator()?.admin().await?;
        admin
            .register(&Registration {
                name: IDENTITY,
                purpose: "soak and abuse suite",
                audiences: &[AUDIENCE],
                x509_ttl: None,
            })
            .await?;
        Ok(admin)
    }

    /// An SDK client (anonymous until it attests).
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect(&self.url, &self.operator()?.bundle_pem).await?)
    }

    /// A workload attested as [`IDENTITY`], connected with its SVID.
    pub async fn session(&self, admin: &mut Admin) -> Result<WorkloadClient> {
        let client = self.client().await?;
        let token = admin.join_token(IDENTITY).await?;
        let attested = client.attest(&Evidence::JoinToken(token), &[]).await?;
        Ok(client.authenticated(&attested.svid).await?)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path` on the HTTP port, within `timeout`.
pub async fn http_status(port: u16, path: &str, timeout: Duration) -> Result<u16> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; 64];
        let n = stream.read(&mut head).await?;
        head.truncate(n);
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(timeout, get)
        .await
        .context("no answer in time")??;
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")
}
