//! Test harness: starts the real `credbroker` binary on free loopback ports
//! with its own data directory, and drives it with the real CLI, agent and
//! SDK.

pub mod http;
pub mod issuer;
pub mod jwt;
pub mod postgres;
pub mod stolen;
pub mod webdriver;
pub mod x509;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use credbroker_client::Client;
use credbroker_proto::v1::workload_client::WorkloadClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A built binary of this workspace, next to the test executable's
/// directory (`target/<profile>/`), or from `$CREDBROKER_BIN_DIR`.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CREDBROKER_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            let deps = exe.parent().expect("deps dir");
            deps.parent().expect("profile dir").to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it with `cargo build --workspace` (or run `cargo test --workspace`, which builds it)",
        path.display()
    );
    path
}

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker process for one test.
pub struct TestBroker {
    dir: tempfile::TempDir,
    child: Option<Child>,
    grpc_port: u16,
    http_port: u16,
    config: PathBuf,
    /// More `serve` flags (e.g. `--log-format json`).
    serve_args: Vec<String>,
}

impl TestBroker {
    /// A broker serving `dev` with default settings.
    pub async fn start() -> Self {
        Self::start_with(&["dev"], "").await
    }

    /// A broker serving `envs`, with `extra` TOML appended to its config
    /// (e.g. a `[ttl]` table).
    pub async fn start_with(envs: &[&str], extra: &str) -> Self {
        Self::start_prepared(envs, extra, |_| {}).await
    }

    /// A broker serving `dev`, started with more `serve` flags.
    pub async fn start_with_flags(flags: &[&str]) -> Self {
        Self::start_full(&["dev"], "", |_| {}, flags).await
    }

    /// [`TestBroker::start_with`], after `prepare` has run on the data
    /// directory's path (e.g. to mount a small file system there).
    pub async fn start_prepared(
        envs: &[&str],
        extra: &str,
        prepare: impl FnOnce(&std::path::Path),
    ) -> Self {
        Self::start_full(envs, extra, prepare, &[]).await
    }

    async fn start_full(
        envs: &[&str],
        extra: &str,
        prepare: impl FnOnce(&std::path::Path),
        flags: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        prepare(&dir.path().join("data"));
        let grpc_port = free_port();
        let http_port = free_port();
        let mut toml = format!(
            "data_dir = {:?}\ngrpc_listen = \"127.0.0.1:{grpc_port}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n",
            dir.path().join("data")
        );
        toml.push_str(extra);
        toml.push('\n');
        for env in envs {
            toml.push_str(&format!("[[environments]]\nname = \"{env}\"\n"));
        }
        let config = dir.path().join("credbroker.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut broker = Self {
            dir,
            child: None,
            grpc_port,
            http_port,
            config,
            serve_args: flags.iter().map(|f| (*f).to_owned()).collect(),
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .expect("log file");
        let child = Command::new(binary("credbroker"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(&self.serve_args)
            .env_remove("CREDBROKER_DATA_DIR")
            .env("CREDBROKER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn credbroker");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http::get(self.http_port, "/readyz").await {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("broker exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "broker did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker with SIGTERM and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Kills the broker with SIGKILL (no chance to flush anything), then
    /// starts it again on the same data directory and ports.
    pub async fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.spawn().await;
    }

    /// Kills the broker with SIGKILL and leaves it dead.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker with SIGKILL, then starts a new one on the same
    /// data directory (so the same CAs) listening for gRPC on `grpc_port`:
    /// a replica that died and one that took over elsewhere.
    pub async fn crash_and_move(&mut self, grpc_port: u16) {
        self.kill();
        let toml = std::fs::read_to_string(&self.config).expect("read config");
        let toml = toml.replace(
            &format!("grpc_listen = \"127.0.0.1:{}\"", self.grpc_port),
            &format!("grpc_listen = \"127.0.0.1:{grpc_port}\""),
        );
        std::fs::write(&self.config, toml).expect("write config");
        self.grpc_port = grpc_port;
        self.spawn().await;
    }

    /// The broker's SQLite database file.
    pub fn database(&self) -> PathBuf {
        self.data_dir().join("credbroker.db")
    }

    /// Stops and starts the broker on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    /// Everything the broker logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// The broker's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory for the test.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// gRPC URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc_port)
    }

    /// HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// `broker-ca.pem`.
    pub fn bundle_path(&self) -> PathBuf {
        self.data_dir().join("broker-ca.pem")
    }

    /// Contents of `broker-ca.pem`.
    pub fn bundle_pem(&self) -> Vec<u8> {
        std::fs::read(self.bundle_path()).expect("broker-ca.pem")
    }

    /// Runs the `credbroker` CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("credbroker"))
            .args(args)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--broker", &self.url()])
            .env_remove("CREDBROKER_DATA_DIR")
            .env_remove("CREDBROKER_BROKER")
            .output()
            .expect("run credbroker CLI")
    }

    /// Runs the CLI and returns stdout, failing the test if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "credbroker {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Registers `env/name` allowing `audiences` and `scopes`.
    pub fn create_identity(&self, env: &str, name: &str, audiences: &[&str], scopes: &[&str]) {
        let mut args = vec![
            "identity",
            "create",
            "--env",
            env,
            "--name",
            name,
            "--owner",
            "team-test",
            "--purpose",
            "end-to-end test",
        ];
        for a in audiences {
            args.extend(["--audience", a]);
        }
        for s in scopes {
            args.extend(["--scope", s]);
        }
        self.cli_ok(&args);
    }

    /// A fresh single-use join token for `env/name`.
    pub fn join_token(&self, env: &str, name: &str) -> String {
        self.cli_ok(&["token", "create", "--env", env, "--name", name])
            .trim()
            .to_owned()
    }

    /// An SDK client trusting the broker's CA.
    pub async fn client(&self) -> Client {
        Client::connect(&self.url(), &self.bundle_pem())
            .await
            .expect("SDK connect")
    }

    /// A raw gRPC Workload client, optionally presenting `identity`
    /// (PEM cert chain, PEM key), for sending what the SDK would not.
    pub async fn raw_workload(
        &self,
        identity: Option<(String, String)>,
    ) -> WorkloadClient<Channel> {
        WorkloadClient::new(self.channel(identity).await.expect("connect"))
    }

    /// A TLS channel to the broker with a client certificate, from local
    /// address `local` (any of 127.0.0.0/8 on Linux): a second host, as
    /// far as the broker can tell.
    pub async fn channel_from(
        &self,
        identity: (String, String),
        local: std::net::IpAddr,
    ) -> Result<Channel, tonic::transport::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.bundle_pem()))
            .identity(Identity::from_pem(identity.0, identity.1));
        Channel::from_shared(self.url())
            .expect("url")
            .local_address(Some(local))
            .tls_config(tls)?
            .connect()
            .await
    }

    /// A TLS channel to the broker, optionally with a client certificate.
    pub async fn channel(
        &self,
        identity: Option<(String, String)>,
    ) -> Result<Channel, tonic::transport::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.bundle_pem()));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(self.url())
            .expect("url")
            .tls_config(tls)?
            .connect()
            .await
    }

    /// Starts `credbroker-agent` in continuous mode with `token` (given in
    /// a file, as the README says to, never on the command line), writing
    /// to `out_dir` and keeping a JWT for each of `audiences`. Its stderr
    /// is piped so a test can read why it stopped.
    pub fn spawn_agent(&self, token: &str, out_dir: &std::path::Path, audiences: &[&str]) -> Child {
        let token_file = self.scratch("tokens").join(format!(
            "{}.token",
            out_dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("agent")
        ));
        std::fs::write(&token_file, token).expect("write the join token file");
        let mut cmd = Command::new(binary("credbroker-agent"));
        cmd.args(["--broker", &self.url(), "--join-token-file"])
            .arg(&token_file)
            .arg("--bundle")
            .arg(self.bundle_path())
            .arg("--out-dir")
            .arg(out_dir);
        for a in audiences {
            cmd.args(["--jwt-audience", a]);
        }
        cmd.env_remove("CREDBROKER_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn credbroker-agent")
    }

    /// Revokes through the Admin API directly (no CLI process in the way,
    /// for tests that time propagation).
    pub async fn revoke(
        &self,
        target: credbroker_proto::v1::revoke_request::Target,
        reason: &str,
    ) -> credbroker_proto::v1::Revocation {
        let channel = self
            .channel(Some(self.admin_identity()))
            .await
            .expect("admin channel");
        credbroker_proto::v1::admin_client::AdminClient::new(channel)
            .revoke(credbroker_proto::v1::RevokeRequest {
                target: Some(target),
                reason: reason.to_owned(),
            })
            .await
            .expect("revoke")
            .into_inner()
    }

    /// The admin client certificate and key, PEM.
    pub fn admin_identity(&self) -> (String, String) {
        let dir = self.data_dir().join("admin");
        (
            std::fs::read_to_string(dir.join("admin.pem")).expect("admin.pem"),
            std::fs::read_to_string(dir.join("admin.key")).expect("admin.key"),
        )
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `credbroker-agent` with `args`.
pub fn agent(args: &[&str]) -> Output {
    let mut cmd = Command::new(binary("credbroker-agent"));
    cmd.args(args);
    cmd.env_remove("CREDBROKER_JOIN_TOKEN")
        .env_remove("CREDBROKER_BROKER")
        .output()
        .expect("run credbroker-agent")
}
