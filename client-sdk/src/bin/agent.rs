//! `credbroker-agent`: attest, write credentials to files, keep them fresh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use credbroker_client::Evidence;
use credbroker_client::agent::{
    AgentConfig, AgentError, OutputDir, run_node_until, run_once, run_until,
};
use credbroker_client::node::NodeConfig;
use credbroker_client::uds::{AllowedPeers, SocketOptions};

/// credbroker-agent: gets this workload's short-lived SPIFFE credentials
/// from a credbroker broker and keeps them fresh.
///
/// It attests once with one piece of evidence (a join token from
/// `credbroker token create`, passed by --join-token-file or
/// CREDBROKER_JOIN_TOKEN, or platform evidence), writes svid.pem,
/// svid_key.pem (0600), bundle.pem and jwt/<audience>.token under --out-dir,
/// renews them at about half their lifetime, and can serve the SPIFFE
/// Workload API on a Unix socket. With --node it attests the host instead
/// and serves every workload registered with `--parent ENV/NODE`.
#[derive(Debug, Parser)]
#[command(
    name = "credbroker-agent",
    version,
    after_help = "\
Examples:
  credbroker-agent --bundle credbroker-data/broker-ca.pem --join-token-file join.token \\
      --out-dir svid --jwt-audience billing --once
  CREDBROKER_JOIN_TOKEN=\"$(cat join.token)\" credbroker-agent --bundle broker-ca.pem \\
      --out-dir /run/svid --workload-api-socket /run/credbroker/agent.sock

  credbroker-agent --broker https://broker-a:7443,https://broker-b:7443 --bundle broker-ca.pem …

Environment: CREDBROKER_BROKER (--broker, comma-separated), CREDBROKER_JOIN_TOKEN (the join token),
CREDBROKER_LOG (log filter, default info). SIGTERM stops it and removes the socket."
)]
#[command(group(clap::ArgGroup::new("evidence").required(true).multiple(false).args(
    ["join_token", "join_token_file", "k8s_token", "oidc_token", "github_actions_audience", "aws_iid"]
)))]
struct Args {
    /// Broker gRPC URL. Replicas: repeat the flag or separate URLs with
    /// commas; the agent uses the first that works and fails over to the
    /// next when it becomes unreachable, keeping its credentials meanwhile.
    #[arg(
        long,
        env = "CREDBROKER_BROKER",
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        default_value = "https://127.0.0.1:7443"
    )]
    broker: Vec<String>,
    /// PEM file with the CA that signed the broker's TLS certificate
    /// (the broker's DATA_DIR/broker-ca.pem).
    #[arg(long)]
    bundle: PathBuf,
    /// Join token from `credbroker token create`. Prefer
    /// --join-token-file or CREDBROKER_JOIN_TOKEN: a command line is
    /// visible to every user of the host.
    #[arg(long, env = "CREDBROKER_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// File holding the join token (read once at start; delete it after).
    #[arg(long, value_name = "FILE")]
    join_token_file: Option<PathBuf>,
    /// Kubernetes projected service-account token file (re-read at every
    /// attestation; the kubelet rotates it).
    #[arg(long, value_name = "FILE")]
    k8s_token: Option<PathBuf>,
    /// File holding an OIDC ID token (re-read at every attestation).
    #[arg(long, value_name = "FILE")]
    oidc_token: Option<PathBuf>,
    /// In a GitHub Actions job: request an OIDC token with this audience
    /// from the runner (needs `permissions: id-token: write`).
    #[arg(long, value_name = "AUD")]
    github_actions_audience: Option<String>,
    /// On EC2: present the instance identity document (IMDSv2).
    #[arg(long)]
    aws_iid: bool,
    /// Instance metadata service address (for --aws-iid).
    #[arg(long, default_value = credbroker_client::DEFAULT_IMDS_URL, requires = "aws_iid")]
    aws_imds_url: String,
    /// Directory for svid.pem, svid_key.pem, bundle.pem and jwt/
    /// (required unless --node).
    #[arg(long, required_unless_present = "node")]
    out_dir: Option<PathBuf>,
    /// Node mode: attest this host to a node identity and serve, on
    /// --workload-api-socket, every local workload registered with
    /// `--parent ENV/NODE`, attested by its uid, gid, user, path, sha256.
    #[arg(
        long,
        requires = "workload_api_socket",
        conflicts_with_all = ["once", "out_dir", "jwt_audiences", "on_rotate"]
    )]
    node: bool,
    /// Permission bits of the Workload API socket (octal).
    #[arg(long, default_value = "0600", value_parser = parse_mode, requires = "workload_api_socket")]
    socket_mode: u32,
    /// Group owning the Workload API socket (name or gid), e.g. with
    /// --socket-mode 0660 to let that group's members connect.
    #[arg(long, requires = "workload_api_socket")]
    socket_group: Option<String>,
    /// Serve Workload API calls only from this uid (repeatable; with
    /// --allow-gid, a caller matching either is served). Not with --node,
    /// which attests every caller.
    #[arg(
        long = "allow-uid",
        requires = "workload_api_socket",
        conflicts_with = "node"
    )]
    allow_uids: Vec<u32>,
    /// Serve Workload API calls only from this effective gid (repeatable).
    #[arg(
        long = "allow-gid",
        requires = "workload_api_socket",
        conflicts_with = "node"
    )]
    allow_gids: Vec<u32>,
    /// Node mode: workload SVIDs held at most (least recently used are
    /// dropped and minted again when asked for).
    #[arg(long, default_value_t = credbroker_client::node::DEFAULT_MAX_SVIDS, requires = "node")]
    svid_cache_size: usize,
    /// Keep a JWT for this audience in jwt/<audience>.token (repeatable).
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
    /// Write the credentials once and exit.
    #[arg(long)]
    once: bool,
    /// Serve the SPIFFE Workload API on this Unix socket.
    #[arg(long, conflicts_with = "once")]
    workload_api_socket: Option<PathBuf>,
    /// Serve GET /healthz and GET /metrics (Prometheus) on this address
    /// (e.g. 127.0.0.1:7090).
    #[arg(long, conflicts_with = "once")]
    health_addr: Option<std::net::SocketAddr>,
    /// Shell command to run after each rotation (e.g. "kill -HUP $(cat app.pid)").
    #[arg(long, conflicts_with = "once")]
    on_rotate: Option<String>,
    /// Log lines as text, or as one JSON object per line.
    #[arg(long, value_enum, env = "CREDBROKER_LOG_FORMAT", default_value_t)]
    log_format: credbroker_client::logging::LogFormat,
}

/// The one evidence source the group allows.
fn evidence(args: &Args) -> Result<Evidence, String> {
    Ok(if let Some(path) = &args.join_token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --join-token-file {}: {e}", path.display()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("--join-token-file {} is empty", path.display()));
        }
        Evidence::JoinToken(token.to_owned())
    } else if let Some(path) = &args.k8s_token {
        Evidence::KubernetesTokenFile(path.clone())
    } else if let Some(path) = &args.oidc_token {
        Evidence::OidcTokenFile(path.clone())
    } else if let Some(audience) = &args.github_actions_audience {
        Evidence::GithubActions {
            audience: audience.clone(),
        }
    } else if args.aws_iid {
        Evidence::AwsIid {
            imds_url: args.aws_imds_url.clone(),
        }
    } else {
        Evidence::JoinToken(args.join_token.clone().unwrap_or_default())
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    credbroker_client::logging::init(args.log_format);
    let fds = credbroker_client::logging::raise_fd_limit();
    tracing::debug!(?fds, "open file limit");
    let bundle_pem = match std::fs::read(&args.bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read --bundle {}: {e}", args.bundle.display());
            return ExitCode::FAILURE;
        }
    };
    // Checked here so a bad list stops the agent before it waits on it.
    let broker = match credbroker_client::Brokers::new(&args.broker) {
        Ok(brokers) => brokers.to_string(),
        Err(e) => {
            eprintln!("error: --broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let evidence = match evidence(&args) {
        Ok(evidence) => evidence,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let socket_options = SocketOptions {
        mode: args.socket_mode,
        group: args.socket_group,
    };
    if args.node {
        let socket = args
            .workload_api_socket
            .expect("clap requires --workload-api-socket with --node");
        let config = NodeConfig::new(broker, bundle_pem, evidence).max_svids(args.svid_cache_size);
        return exit(
            run_node_until(
                config,
                &socket,
                &socket_options,
                args.health_addr,
                shutdown_signal(),
            )
            .await,
        );
    }
    let Some(out_dir) = args.out_dir else {
        eprintln!("error: --out-dir is required");
        return ExitCode::FAILURE;
    };
    let config = AgentConfig {
        broker,
        bundle_pem,
        evidence,
        out_dir: OutputDir::new(out_dir),
        jwt_audiences: args.jwt_audiences,
        workload_api_socket: args.workload_api_socket,
        socket_options,
        allowed_peers: AllowedPeers {
            uids: args.allow_uids,
            gids: args.allow_gids,
        },
        health_addr: args.health_addr,
        on_rotate: args.on_rotate,
    };
    let result = if args.once {
        run_once(&config).await
    } else {
        run_until(&config, shutdown_signal()).await
    };
    exit(result)
}

/// Completes on SIGTERM or Ctrl-C, saying which.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops the agent cleanly");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0600"))
}

fn exit(result: Result<(), AgentError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
