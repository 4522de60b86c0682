//! `starling`: the MQTT broker binary. Parses the command line and config, sets up logging,
//! and runs the server until SIGINT or SIGTERM (SIGHUP reloads password files, ACL files and
//! certificates). `starling passwd` manages password files, `starling apikey` the HTTP API's
//! keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};

use starling::config::Config;
use starling::server;

/// Starling, an MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Debug, Parser)]
#[command(version = starling::version::LONG_VERSION, about, long_about = None)]
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
    /// Publish a message (mosquitto_pub's flags, output and exit codes).
    #[command(disable_help_flag = true)]
    Pub(starling::cli::pubc::PubArgs),
    /// Subscribe and print messages (mosquitto_sub's flags, output and exit codes).
    #[command(disable_help_flag = true)]
    Sub(starling::cli::subc::SubArgs),
    /// Publish a request and print the response (mosquitto_rr's flags, MQTT 5).
    #[command(disable_help_flag = true)]
    Rr(starling::cli::rr::RrArgs),
    /// The admin API from the terminal: clients, sessions, subscriptions, retained messages,
    /// bans, listeners, stats, config, reload.
    Ctl(starling::cli::ctl::CtlArgs),
    /// Ask a running broker's HTTP listener whether it is alive (exit 0 on a 2xx answer).
    Health(starling::health::HealthArgs),
    /// Check a config file (with the STARLING_* environment overrides) without starting.
    CheckConfig(starling::config::env::CheckConfigArgs),
    /// Write a starling.toml equivalent to a mosquitto.conf; list what cannot be carried over.
    ImportMosquitto(starling::import::ImportArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one page per command into a directory.
    Man {
        /// Write starling.1 and starling-COMMAND.1 here instead of printing starling.1.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
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
    let cli = parse_cli();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        Some(Command::Pub(args)) => std::process::exit(starling::cli::pubc::run(args)),
        Some(Command::Sub(args)) => std::process::exit(starling::cli::subc::run(args)),
        Some(Command::Rr(args)) => std::process::exit(starling::cli::rr::run(args)),
        Some(Command::Ctl(args)) => std::process::exit(starling::cli::ctl::run(args)),
        Some(Command::Passwd(args)) => return starling::passwd::run(args),
        Some(Command::Apikey(args)) => return starling::http::apikey::run(args),
        Some(Command::Health(args)) => return starling::health::run(args),
        Some(Command::CheckConfig(args)) => return starling::config::env::check_config(&args),
        Some(Command::ImportMosquitto(args)) => return starling::import::run(&args),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "starling",
                &mut std::io::stdout(),
            );
            return Ok(());
        }
        Some(Command::Man { dir }) => return man(dir),
        None => ServeArgs::default(),
    };
    // The file (or the defaults), then the STARLING_* environment, then the flags below.
    let overrides = starling::config::env::Overrides::from_env()?;
    let mut config = Config::load_with_env(args.config.as_deref(), &overrides)?;
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
    let result = runtime.block_on(async {
        // Registered before the store is opened: a SIGTERM during startup is not fatal; the
        // graceful shutdown begins as soon as the broker has started.
        let signals = starling::signals::Signals::install();
        server::run(config, starling::signals::shutdown_signal(signals)).await
    });
    // Blocking work still running (a stuck disk) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// `starling man`: the manual page on standard output, or every command's page in `dir`.
fn man(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write the manual pages in {}", dir.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("cannot write the manual page")
        }
    }
}

/// Parses the command line. A usage error in `pub`, `sub` or `rr` exits with status 1, as
/// mosquitto's tools do (clap's own status for usage errors is 2).
fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let client = std::env::args()
                .nth(1)
                .is_some_and(|c| matches!(c.as_str(), "pub" | "sub" | "rr"));
            if client && e.use_stderr() {
                let _ = e.print();
                std::process::exit(1);
            }
            e.exit()
        }
    }
}
