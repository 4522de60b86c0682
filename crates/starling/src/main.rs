//! `starling`: the MQTT broker binary. Parses the command line and config, sets up logging,
//! and runs the server until SIGINT or SIGTERM (SIGHUP reloads password files, ACL files and
//! certificates). `starling passwd` manages password files, `starling apikey` the HTTP API's
//! keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use starling::config::Config;
use starling::server;

/// Starling, an MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    /// Manage a password file (mosquitto_passwd's flags: -c, -b, -D).
    Passwd(starling::passwd::PasswdArgs),
    /// Manage the HTTP API's keys (create, list, delete).
    Apikey(starling::http::apikey::ApiKeyArgs),
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// TOML config file; without one, the broker listens on 127.0.0.1:1883 with default
    /// limits.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address of the first listener, overriding the config file (e.g. 0.0.0.0:1883).
    #[arg(short, long, value_name = "ADDR:PORT")]
    bind: Option<SocketAddr>,
    /// Address of the HTTP listener (metrics, health, admin API, dashboard), overriding the
    /// config file (default 127.0.0.1:18080).
    #[arg(long, value_name = "ADDR:PORT")]
    http_bind: Option<SocketAddr>,
    /// Data directory, overriding the config file (default ./starling-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start even if the store has damaged records, leaving them out (each is logged).
    #[arg(long)]
    recover: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Passwd(args)) => return starling::passwd::run(args),
        Some(Command::Apikey(args)) => return starling::http::apikey::run(args),
        None => ServeArgs::default(),
    };
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(bind) = args.bind
        && let Some(first) = config.listeners.first_mut()
    {
        first.bind = bind;
    }
    if let Some(bind) = args.http_bind {
        config.http.bind = bind;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if args.recover {
        config.storage.recover = true;
    }
    starling::logging::init(&config.log_level, config.log_format)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::run(config, shutdown_signal()))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
