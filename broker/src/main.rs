//! `credbroker`: parse, configure, run.

use std::process::ExitCode;

use clap::Parser;
use credbroker::cli::{Cli, Command, run_admin};
use credbroker::config::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CREDBROKER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match &cli.command {
        Command::Serve { config } => serve(config.as_deref(), cli.data_dir.clone()).await,
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

async fn serve(
    config_file: Option<&std::path::Path>,
    data_dir: Option<std::path::PathBuf>,
) -> Result<(), String> {
    let mut config = Config::load(config_file).map_err(|e| e.to_string())?;
    if let Some(dir) = data_dir {
        config.data_dir = dir;
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
