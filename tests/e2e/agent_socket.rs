//! The agent's Workload API socket: who may open it, and what it never
//! replaces. Also the helper the Python client tests start agents with.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use credbroker_e2e::{TestBroker, binary};

/// A continuous-mode agent serving the Workload API on `socket`.
pub struct SocketAgent {
    child: Child,
    /// Its stderr.
    pub log: PathBuf,
}

impl SocketAgent {
    /// Starts a sidecar agent for `env/name` (which must exist) with
    /// `extra` flags, and waits for its socket.
    pub async fn start(
        broker: &TestBroker,
        env: &str,
        name: &str,
        socket: &Path,
        extra: &[&str],
    ) -> Self {
        let agent = Self::spawn(broker, env, name, socket, extra);
        agent.wait_for(socket).await;
        agent
    }

    /// Starts a node agent (`--node`) for the node identity `env/name`, and
    /// waits for its socket.
    pub async fn start_node(
        broker: &TestBroker,
        env: &str,
        name: &str,
        socket: &Path,
        extra: &[&str],
    ) -> Self {
        let mut args = vec!["--node"];
        args.extend(extra);
        let agent = Self::spawn_with(broker, env, name, socket, &args);
        agent.wait_for(socket).await;
        agent
    }

    /// Starts a sidecar agent without waiting for anything.
    pub fn spawn(
        broker: &TestBroker,
        env: &str,
        name: &str,
        socket: &Path,
        extra: &[&str],
    ) -> Self {
        let scratch = Self::scratch(broker, socket);
        let mut args = vec!["--jwt-audience", "billing", "--out-dir"];
        let out = scratch.join("out");
        args.push(out.to_str().expect("utf-8 path"));
        args.extend(extra);
        Self::spawn_with(broker, env, name, socket, &args)
    }

    fn scratch(broker: &TestBroker, socket: &Path) -> PathBuf {
        broker.scratch(&format!("agent-{}", socket.display()).replace('/', "_"))
    }

    fn spawn_with(
        broker: &TestBroker,
        env: &str,
        name: &str,
        socket: &Path,
        args: &[&str],
    ) -> Self {
        let log = Self::scratch(broker, socket).join("agent.log");
        let child = Command::new(binary("credbroker-agent"))
            .args(["--broker", &broker.url()])
            .args(["--join-token", &broker.join_token(env, name)])
            .arg("--bundle")
            .arg(broker.bundle_path())
            .arg("--workload-api-socket")
            .arg(socket)
            .args(args)
            .env("CREDBROKER_LOG", "info,credbroker_client::uds=debug")
            .env_remove("CREDBROKER_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("spawn credbroker-agent");
        Self { child, log }
    }

    async fn wait_for(&self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "agent socket never appeared: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 15 s for the agent to exit on its own.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("agent status") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SocketAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

/// A group from /etc/group other than the agent's own (root), by name.
fn some_group() -> (String, u32) {
    let groups = std::fs::read_to_string("/etc/group").expect("/etc/group");
    groups
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.first()?.to_string(), f.get(2)?.parse().ok()?))
        })
        .find(|(_, gid)| *gid != 0)
        .expect("a non-root group in /etc/group")
}

#[tokio::test]
async fn socket_is_owner_only_by_default_and_flags_open_it_to_a_group() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let base = broker.scratch("sockets");

    // Default: 0600, in a directory the agent creates 0755.
    let socket = base.join("run/credbroker/agent.sock");
    let agent = SocketAgent::start(&broker, "dev", "api", &socket, &[]).await;
    assert_eq!(mode(&socket), 0o600, "default socket mode");
    assert_eq!(mode(&base.join("run")), 0o755);
    assert_eq!(mode(&base.join("run/credbroker")), 0o755);
    drop(agent);

    // --socket-mode 0660 --socket-group NAME.
    let (group, gid) = some_group();
    let socket = base.join("group.sock");
    let _agent = SocketAgent::start(
        &broker,
        "dev",
        "api",
        &socket,
        &["--socket-mode", "0660", "--socket-group", &group],
    )
    .await;
    assert_eq!(mode(&socket), 0o660);
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        gid,
        "group {group}"
    );
}

#[tokio::test]
async fn a_file_at_the_socket_path_is_left_alone_and_the_agent_exits_naming_it() {
    let broker = TestBroker::start().await;
    broker.create_identity("dev", "api", &["billing"], &[]);
    let path = broker.scratch("sockets").join("agent.sock");
    std::fs::write(&path, "not a socket: someone's data").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut agent = SocketAgent::spawn(&broker, "dev", "api", &path, &[]);
    let status = agent.wait_exit();
    assert!(!status.success(), "agent must not run without its socket");
    let log = agent.log_text();
    assert!(log.contains(&path.display().to_string()), "{log}");
    assert!(log.contains("regular file"), "{log}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "not a socket: someone's data"
    );
    assert_eq!(mode(&path), 0o640);
}
