//! Logging: text or JSON lines on standard error, with a filter that can be changed while
//! the broker runs (`PUT /api/v1/log-level`). The binary sets it up once with [`init`]; a
//! process that did not (an embedding, a test) has no level to change.

use std::sync::{Mutex, OnceLock};

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The filter in force, as it was given.
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Why the level was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// This process did not set logging up with [`init`].
    #[error("logging is not managed by this process")]
    Unmanaged,
    /// Not a level or filter directive.
    #[error("{0}")]
    Invalid(String),
}

/// Sets up logging: `level` (or `RUST_LOG`, which wins) as the filter, lines as `format`.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter_text = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_string());
    let filter = EnvFilter::try_new(&filter_text)
        .with_context(|| format!("invalid log_level {filter_text:?}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .context("cannot set up logging")?;
    let _ = CONTROL.set(Control {
        handle,
        current: Mutex::new(filter_text),
    });
    Ok(())
}

/// The filter in force; `None` if this process did not set logging up.
pub fn level() -> Option<String> {
    let c = CONTROL.get()?;
    Some(c.current.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Levels a directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a filter strictly: comma-separated `LEVEL` or `TARGET=LEVEL` (a tracing filter
/// accepts almost anything, and reads a typo as a target to trace).
fn check_directives(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("empty".into());
    }
    for d in filter.split(',').map(str::trim) {
        let (target, level) = match d.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("{level:?} is not one of {}", LEVELS.join(", ")));
        }
        if let Some(t) = target
            && (t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'))
        {
            return Err(format!("{t:?} is not a module path"));
        }
    }
    Ok(())
}

/// Replaces the filter: comma-separated `LEVEL` or `TARGET=LEVEL` (`debug`,
/// `info,starling=trace`, ...).
pub fn set_level(level: &str) -> Result<(), LevelError> {
    check_directives(level).map_err(LevelError::Invalid)?;
    let c = CONTROL.get().ok_or(LevelError::Unmanaged)?;
    let filter = EnvFilter::try_new(level).map_err(|e| LevelError::Invalid(e.to_string()))?;
    c.handle
        .reload(filter)
        .map_err(|e| LevelError::Invalid(e.to_string()))?;
    *c.current.lock().unwrap_or_else(|p| p.into_inner()) = level.to_string();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_levels_and_module_paths_are_accepted() {
        for ok in [
            "debug",
            "INFO",
            "info,starling=trace",
            "starling_broker::connection=debug",
        ] {
            assert!(check_directives(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "loud",
            "no such level!",
            "starling=loud",
            "=debug",
            "a b=info",
        ] {
            assert!(check_directives(bad).is_err(), "{bad}");
        }
    }
}
