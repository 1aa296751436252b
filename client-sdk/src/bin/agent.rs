//! `credbroker-agent`: attest, write credentials to files, keep them fresh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use credbroker_client::Evidence;
use credbroker_client::agent::{AgentConfig, OutputDir, run, run_once};
use credbroker_client::uds::{AllowedPeers, SocketOptions};
use tracing_subscriber::EnvFilter;

/// Sidecar that obtains short-lived credentials from credbroker and keeps
/// them fresh on disk.
#[derive(Debug, Parser)]
#[command(name = "credbroker-agent", version, about)]
struct Args {
    /// Broker gRPC URL.
    #[arg(
        long,
        env = "CREDBROKER_BROKER",
        default_value = "https://127.0.0.1:7443"
    )]
    broker: String,
    /// PEM file with the CA that signed the broker's TLS certificate
    /// (the broker's DATA_DIR/broker-ca.pem).
    #[arg(long)]
    bundle: PathBuf,
    /// Join token from `credbroker token create`.
    #[arg(long, env = "CREDBROKER_JOIN_TOKEN", hide_env_values = true)]
    join_token: String,
    /// Directory for svid.pem, svid_key.pem, bundle.pem and jwt/.
    #[arg(long)]
    out_dir: PathBuf,
    /// Keep a JWT for this audience in jwt/<audience>.token (repeatable).
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
    /// Write the credentials once and exit.
    #[arg(long)]
    once: bool,
    /// Serve the SPIFFE Workload API on this Unix socket.
    #[arg(long, conflicts_with = "once")]
    workload_api_socket: Option<PathBuf>,
    /// Permission bits of the Workload API socket, in octal.
    #[arg(long, value_parser = parse_mode, default_value = "0600", requires = "workload_api_socket")]
    socket_mode: u32,
    /// Group owning the Workload API socket (name or gid), e.g. with
    /// --socket-mode 0660 to let that group's members connect.
    #[arg(long, requires = "workload_api_socket")]
    socket_group: Option<String>,
    /// Serve Workload API calls only from this uid (repeatable; with
    /// --allow-gid, a caller matching either is served).
    #[arg(long = "allow-uid", requires = "workload_api_socket")]
    allow_uids: Vec<u32>,
    /// Serve Workload API calls only from this effective gid (repeatable).
    #[arg(long = "allow-gid", requires = "workload_api_socket")]
    allow_gids: Vec<u32>,
    /// Serve GET /healthz on this address (e.g. 127.0.0.1:7090).
    #[arg(long, conflicts_with = "once")]
    health_addr: Option<std::net::SocketAddr>,
    /// Shell command to run after each rotation (e.g. "kill -HUP $(cat app.pid)").
    #[arg(long, conflicts_with = "once")]
    on_rotate: Option<String>,
}

/// An octal mode such as 0600, 660 or 0o660, at most 0777.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        Ok(_) => Err(format!("{s} has bits beyond 0777")),
        Err(_) => Err(format!("{s} is not an octal mode like 0600")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CREDBROKER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let bundle_pem = match std::fs::read(&args.bundle) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read --bundle {}: {e}", args.bundle.display());
            return ExitCode::FAILURE;
        }
    };
    let config = AgentConfig {
        broker: args.broker,
        bundle_pem,
        evidence: Evidence::JoinToken(args.join_token),
        out_dir: OutputDir::new(args.out_dir),
        jwt_audiences: args.jwt_audiences,
        workload_api_socket: args.workload_api_socket,
        socket_options: SocketOptions {
            mode: args.socket_mode,
            group: args.socket_group,
        },
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
        run(&config).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
