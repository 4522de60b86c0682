//! `starling import-mosquitto`: turns a mosquitto.conf (with its `include_dir` files) into an
//! equivalent starling.toml, and lists every directive it cannot carry over with the reason.
//!
//! [`conf`] reads the files as mosquitto does, [`map`] replays the directives with mosquitto's
//! semantics (current listener, `per_listener_settings`, local-only mode, its defaults) into a
//! plan, and [`emit`] writes the plan as TOML. The result is parsed and validated with
//! [`Config::parse`] before it is returned, so what is written is a config the broker starts
//! with.
//!
//! Where Starling cannot do what a listener's directives ask (a mount point, a revocation
//! list, TLS-PSK, an interface binding, a Unix socket) the listener is left out rather than
//! opened with less protection; settings that only tune (cipher lists, log formats) are
//! listed and dropped. Bridges (`connection` and the directives after it) become
//! `[[bridge]]` tables; one Starling would have to run with less protection (TLS-PSK, OCSP
//! required) or would refuse is left out, with the reason.

mod bridge;
pub mod conf;
pub mod emit;
mod finish;
pub mod map;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Config;
use conf::Loc;

/// Whether a directive was dropped or carried over approximately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// Not in the generated config.
    NotCarried,
    /// In it, with a different meaning or value.
    Approximated,
}

/// A directive not carried over exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where it is.
    pub loc: Loc,
    /// The directive as written (or a summary of it).
    pub directive: String,
    /// Dropped or approximated.
    pub kind: FindingKind,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            FindingKind::NotCarried => "not carried over",
            FindingKind::Approximated => "carried over approximately",
        };
        write!(
            f,
            "{}: `{}`: {what}: {}",
            self.loc, self.directive, self.reason
        )
    }
}

/// Why a config cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file or directory cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A directive's value is one mosquitto refuses too.
    #[error("{loc}: `{directive}`: {reason} (mosquitto refuses it too)")]
    Invalid {
        /// Where.
        loc: Loc,
        /// The directive.
        directive: String,
        /// What is wrong.
        reason: String,
    },
    /// Every listener was left out.
    #[error("no listener can be carried over (see the reasons above)")]
    NoListener,
    /// The generated config does not validate (a bug of the importer).
    #[error("the generated config is invalid: {0}")]
    Generated(String),
}

/// The result of an import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The starling.toml text.
    pub toml: String,
    /// The config it parses to.
    pub config: Config,
    /// Every directive not carried over exactly.
    pub findings: Vec<Finding>,
}

/// Imports the mosquitto config at `path` (and its `include_dir` files).
pub fn import_file(path: &Path) -> Result<Imported, ImportError> {
    let items = conf::read(path)?;
    let (plan, mut findings) = map::plan(&items, path)?;
    // In reading order: the main file's own findings (line 0) first, then by file as read,
    // then by line.
    let mut files: Vec<&Path> = vec![path];
    for item in &items {
        if let conf::Item::Directive(d) = item
            && !files.contains(&&*d.loc.file)
        {
            files.push(&d.loc.file);
        }
    }
    let rank = |loc: &Loc| {
        let file = files
            .iter()
            .position(|f| *f == &*loc.file)
            .unwrap_or(files.len());
        (file, loc.line)
    };
    findings.sort_by_key(|f| rank(&f.loc));
    let toml = emit::toml(&plan, path);
    let config = Config::parse(&toml).map_err(|e| ImportError::Generated(format!("{e:#}")))?;
    Ok(Imported {
        toml,
        config,
        findings,
    })
}

/// Arguments of `starling import-mosquitto`.
#[derive(Debug, clap::Args)]
#[command(
    about = "Write a starling.toml equivalent to a mosquitto.conf",
    after_help = "Every directive that cannot be carried over is listed on standard error with \
                  the reason.\n\nExample:\n  starling import-mosquitto /etc/mosquitto/mosquitto.conf \
                  -o /etc/starling/starling.toml"
)]
pub struct ImportArgs {
    /// The mosquitto config file.
    #[arg(value_name = "MOSQUITTO_CONF")]
    pub file: PathBuf,
    /// Where to write the starling.toml (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `starling import-mosquitto`.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let imported = import_file(&args.file)?;
    let mut stderr = std::io::stderr().lock();
    for f in &imported.findings {
        writeln!(stderr, "{f}")?;
    }
    match &args.output {
        Some(path) => {
            std::fs::write(path, &imported.toml)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(
                stderr,
                "wrote {} ({} listener(s), {} bridge(s), {} directive(s) not carried over \
                 exactly)",
                path.display(),
                imported.config.listeners.len(),
                imported.config.bridges.len(),
                imported.findings.len()
            )?;
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(imported.toml.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
