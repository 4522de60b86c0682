//! The config file (TOML): listeners, limits and timers, logging. Every key is optional; an
//! unknown key, a wrong type or an invalid value is an error naming the file and the key, and
//! the broker does not start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use starling_broker::{Features, Limits};

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the broker keeps its data.
    pub data_dir: PathBuf,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log_level: String,
    /// Listeners; `[[listener]]` tables.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Limits and timers of the broker core.
    pub limits: Limits,
    /// MQTT 5 features shaped by configuration.
    pub mqtt: Features,
    /// Where and how state is kept.
    pub storage: StorageConfig,
}

/// How durable acknowledged messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A QoS 1/2 message is acknowledged once committed to disk (group commit: one fsync for
    /// every message that arrived meanwhile).
    #[default]
    Sync,
    /// Changes are committed to disk every `commit_interval_ms`; a crash loses at most that
    /// window, acknowledged or not.
    Periodic,
    /// Nothing is written to disk; a restart loses every session and retained message.
    Memory,
}

/// The `[storage]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Durability mode.
    pub durability: Durability,
    /// Commit interval of `periodic`, milliseconds.
    pub commit_interval_ms: u64,
    /// Start even if some records are damaged, leaving them out (each is logged).
    pub recover: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            commit_interval_ms: 100,
            recover: false,
        }
    }
}

/// One listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address and port to bind, e.g. `127.0.0.1:1883` or `[::]:1883`.
    pub bind: SocketAddr,
    /// Transport: only `tcp` so far.
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "tcp".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("starling-data"),
            log_level: "info".into(),
            listeners: vec![ListenerConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
                protocol: default_protocol(),
            }],
            limits: Limits::default(),
            mqtt: Features::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.listeners.is_empty() {
            bail!("at least one [[listener]] is required");
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.protocol != "tcp" {
                bail!(
                    "listener[{i}].protocol: unsupported protocol {:?} (supported: \"tcp\")",
                    l.protocol
                );
            }
        }
        self.limits
            .validate()
            .map_err(|e| anyhow::anyhow!("limits.{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].bind.to_string(), "127.0.0.1:1883");
        assert_eq!(c.limits.max_inflight, Limits::default().max_inflight);
    }

    #[test]
    fn full_file() {
        let c = Config::parse(
            r#"
            data_dir = "/tmp/x"
            log_level = "debug"
            [[listener]]
            bind = "0.0.0.0:1884"
            [[listener]]
            bind = "[::1]:1885"
            protocol = "tcp"
            [limits]
            max_inflight = 10
            queue_full_policy = "refuse_newest"
            [mqtt]
            response_information_prefix = "replies/"
            [storage]
            durability = "periodic"
            commit_interval_ms = 50
            "#,
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.limits.max_inflight, 10);
        assert_eq!(c.mqtt.response_information_prefix, "replies/");
        assert_eq!(c.storage.durability, Durability::Periodic);
        assert_eq!(c.storage.commit_interval_ms, 50);
        let e = format!(
            "{:#}",
            Config::parse("[storage]\ndurability = \"fast\"").unwrap_err()
        );
        assert!(e.contains("durability"), "{e}");
        assert_eq!(
            c.limits.queue_full_policy,
            starling_broker::QueueFullPolicy::RefuseNewest
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = format!(
            "{:#}",
            Config::parse("[limits]\nmax_inflihgt = 3").unwrap_err()
        );
        assert!(e.contains("max_inflihgt"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[limits]\nmax_inflight = \"x\"").unwrap_err()
        );
        assert!(e.contains("max_inflight"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[limits]\nmax_inflight = 0").unwrap_err()
        );
        assert!(e.contains("limits.max_inflight"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[[listener]]\nbind = \"nope\"").unwrap_err()
        );
        assert!(e.contains("bind"), "{e}");
        let e = format!(
            "{:#}",
            Config::parse("[[listener]]\nbind = \"127.0.0.1:1\"\nprotocol = \"quic\"").unwrap_err()
        );
        assert!(e.contains("listener[0].protocol"), "{e}");
    }
}
