//! The `ycord` binary: parse the configuration, set up logging, serve until SIGTERM or SIGINT.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use ycord::config::{Action, LogFormat};
use ycord::{Cli, Server};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut config = match Cli::parse().into_action() {
        Action::Serve(config) => config,
        // On a blocking thread: a store may wait for its own I/O (PostgreSQL's runtime).
        Action::Admin(command) => {
            return tokio::task::spawn_blocking(move || admin(command))
                .await
                .unwrap_or(std::process::ExitCode::FAILURE);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    if let Err(error) = config.apply_exapp_environment(|name| std::env::var(name).ok()) {
        tracing::error!(%error, "cannot start");
        return std::process::ExitCode::FAILURE;
    }
    let server = match Server::start(config.clone()).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    match (server.local_addr(), &config.listen_unix) {
        (Some(addr), _) => tracing::info!(
            listen = %addr,
            data_dir = %config.data_dir.display(),
            exapp = config.exapp.enabled(),
            "ycord serving: clients connect to ws://{addr}{}<room>",
            config.normalized_base_path()
        ),
        (None, socket) => tracing::info!(
            listen = ?socket,
            data_dir = %config.data_dir.display(),
            exapp = config.exapp.enabled(),
            "ycord serving on a unix socket"
        ),
    }
    shutdown_signal().await;
    tracing::info!("shutting down: closing sockets, compacting and flushing rooms");
    server.shutdown();
    match server.wait().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "shutdown failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

fn admin(command: ycord::config::Command) -> std::process::ExitCode {
    let stdout = std::io::stdout();
    match ycord::admin::run(command, &mut stdout.lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ycord: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
