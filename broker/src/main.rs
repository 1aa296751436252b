//! `credbroker`: parse, configure, run.

use std::process::ExitCode;

use credbroker::cli::{Command, run_admin};
use credbroker::config::Config;
use credbroker_client::logging::LogFormat;

fn main() -> ExitCode {
    match runtime() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// tokio's multi-threaded runtime without the LIFO slot. With it, a task
/// that wakes another runs that one next: every gRPC response, once its
/// audit batch committed, woke its connection's task at once, so each went
/// out on its own (headers and data, then trailers: two TLS records, two
/// `sendto`) while new requests waited for the audit writer. Without it,
/// the responses of one commit go out together and the next batch is
/// larger: at 64 calls in flight about a third less CPU per credential and
/// half the p99 (`issue_bench`). The setting is behind `tokio_unstable`
/// (`.cargo/config.toml`); a build without that cfg keeps the slot.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

async fn run() -> ExitCode {
    let cli = credbroker::cli::parse();
    let log_format = match &cli.command {
        Command::Serve { log_format, .. } => *log_format,
        _ => LogFormat::Text,
    };
    credbroker_client::logging::init(log_format);
    if matches!(cli.command, Command::Serve { .. }) {
        let fds = credbroker_client::logging::raise_fd_limit();
        tracing::debug!(?fds, "open file limit");
    }
    let result = match &cli.command {
        Command::Completions { shell } => {
            credbroker::cli::completions(*shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Serve {
            config,
            grpc_listen,
            http_listen,
            kek_file,
            ..
        } => {
            let flags = ServeFlags {
                data_dir: cli.data_dir.clone(),
                grpc_listen: *grpc_listen,
                http_listen: *http_listen,
                kek_file: kek_file.clone(),
            };
            serve(config.as_deref(), flags).await
        }
        Command::Backup { out } => {
            let data_dir = cli
                .data_dir
                .clone()
                .unwrap_or_else(|| "./credbroker-data".into());
            credbroker::cli::backup::backup(&data_dir, out)
                .await
                .map(|s| {
                    println!(
                        "backed up {} to {} (schema version {}, {} identities, {} audit entries); \
                         keep the KEK with it, stored apart",
                        data_dir.join("credbroker.db").display(),
                        out.display(),
                        s.schema_version,
                        s.identities,
                        s.audit_entries
                    )
                })
        }
        _ => run_admin(&cli).await.map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `serve` flags, which override the file and the environment.
struct ServeFlags {
    data_dir: Option<std::path::PathBuf>,
    grpc_listen: Option<std::net::SocketAddr>,
    http_listen: Option<std::net::SocketAddr>,
    kek_file: Option<std::path::PathBuf>,
}

async fn serve(config_file: Option<&std::path::Path>, flags: ServeFlags) -> Result<(), String> {
    let mut config = Config::load(config_file).map_err(|e| e.to_string())?;
    if let Some(dir) = flags.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = flags.grpc_listen {
        config.grpc_listen = addr;
    }
    if let Some(addr) = flags.http_listen {
        config.http_listen = addr;
    }
    if let Some(file) = flags.kek_file {
        config.kek_file = Some(file);
    }
    let running = credbroker::start(config).await.map_err(|e| e.to_string())?;
    running
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
